//! Kernel stage: the eBPF programs, built for `bpfel-unknown-none` and embedded
//! into the `ingressd` binary. Entry points stay thin; logic lives in modules
//! by concern.
//!
//! - `tc_ingress` and `xdp_ingress` (in-kernel TCP forwarding, one logic
//!   in `forward`, generic over `hook::Hook`): `parse` -> `conntrack` ->
//!   `lb` (frontend, Maglev) -> `fib` -> `nat` (SNAT, rewrite; `csum`) ->
//!   redirect, counted in `stats`.
//! - `sk_lookup_steer` (nodePort steering of L7 ports): `steer`.
//! - `xdp_port_counter` (per-port counters): `port_counter`.
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod fib;
mod forward;
mod hook;
mod lb;
mod nat;
mod parse;
mod port_counter;
mod stats;
mod steer;
mod tc_ingress;
mod xdp_ingress;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is
    // never executed; it exists because `no_std` binaries need a handler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
