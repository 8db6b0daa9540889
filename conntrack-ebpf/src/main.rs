//! ct-trace's eBPF programs. One module per kernel subsystem; every map lives in `maps`.
//!
//! Kernel structure offsets are never compiled in: userspace reads them from the running kernel's
//! BTF and writes them into the read-only globals in `config` before loading (Rust eBPF has no
//! CO-RE field relocations).
#![no_std]
#![no_main]

mod config;
mod conntrack;
mod fate;
mod filter;
mod maps;
mod netfilter;
mod pressure;
mod skb;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
