//! TLS at the gateway: names users write (`names`, pure), key material
//! (`certs`) and the live per-server rustls configs with rotation (`store`).
//! The handshake itself is on the data path, in `proxy::tls`.

pub mod certs;
pub mod names;
pub mod store;
