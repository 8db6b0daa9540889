//! ct-trace: observe conntrack INVALID verdicts, lost entries and the TCP resets they cause.
//!
//! Folders by concept: `kernel/` (what the kernel offers, the attach plan, loading),
//! `pipeline/` (decode, correlate, enrich: records to reports), `event/` (the reports
//! themselves, typed: each kind, the packet they share, tallies, times, flags, reasons),
//! `output/` (rendering them only: text, JSON, pcapng, metrics, the summary, `top`'s screen;
//! `event/` never imports it), `node/` (ctnetlink, the kernel's counters, the doctor, `top`),
//! and below them all `private/` (the private directories and files every file ct-trace creates
//! goes in, used by every layer that writes one).
//! `app` only wires them together; `cli` is the command line.

pub mod app;
pub mod cli;
pub mod event;
pub mod kernel;
// `ct-trace lab`: only in builds with the `lab` feature (the default; the DaemonSet's image
// has none).
#[cfg(feature = "lab")]
pub mod lab;
pub mod node;
pub mod output;
pub mod pipeline;
pub mod private;

/// The compiled eBPF object.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conntrack-ebpf"));
