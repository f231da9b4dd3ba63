//! Test harness: network namespaces, processes inside them, HTTP clients and config
//! directories, shared by the integration tests in `tests/` and by `cargo xtask demo`.
//!
//! Every wait and loop here is bounded in count and time.

pub mod access_log;
pub mod bins;
pub mod config;
pub mod daemon;
pub mod fake_apiserver;
pub mod features;
pub mod fixture;
pub mod http;
pub mod kernel;
pub mod kube;
pub mod l7;
pub mod mariadb;
pub mod proc;
pub mod root;
pub mod tcp;
pub mod tls;
pub mod topology;

pub use bins::{ingressd_bin, testapp_bin};
pub use config::{COUNTER_HOST, ConfigDir, SeedConfig};
pub use daemon::{ADMIN_ADDR, STATUS_ADDR, explain, ingressd_cli, node, node_url};
pub use fixture::{SeedGateway, sock};
pub use http::{CurlResult, HttpResponse};
pub use kernel::{KernelMode, kernel_mode};
pub use proc::{Proc, run_bounded, run_ok};
pub use root::require_root;
pub use topology::{Ns, Topology};
