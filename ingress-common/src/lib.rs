//! The kernel ABI: everything the eBPF programs and userspace must agree on.
//!
//! This crate is `no_std` and holds only plain data: map names, capacities, the
//! `#[repr(C)]` layouts of map keys and values, and the numeric reason codes the
//! programs count. Every layout has a size assertion; changing one is an ABI
//! change for pinned maps and must bump [`ABI_VERSION`].
#![no_std]

pub mod counter;
pub mod lb;
pub mod steer;

/// Version of the layouts in this crate. Pinned maps written by a daemon with
/// another ABI version are not adopted.
pub const ABI_VERSION: u32 = 1;
