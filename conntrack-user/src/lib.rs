//! ct-trace: observe conntrack INVALID verdicts and the TCP resets they cause.
//!
//! Modules by concept: `preflight` (what the kernel and process offer), `btf` (offsets and enum
//! names from the running kernel), `load` (the attach plan), `netfilter` (the loader aya lacks),
//! `events` (decoding), `reason` (conntrack's log line and entry), `attribution` (joining verdicts, fates, resets), `report` (output),
//! `netlink` (ctnetlink and hook dumps), `kstat` (the kernel's counters), `lost` and `destroy`
//! (table pressure and lost entries), `doctor`, `app`.

pub mod app;
pub mod attribution;
pub mod btf;
pub mod cli;
pub mod destroy;
pub mod doctor;
pub mod enrich;
pub mod events;
pub mod kstat;
pub mod load;
pub mod lost;
pub mod netfilter;
pub mod netlink;
pub mod preflight;
pub mod reason;
pub mod report;
pub mod table;
pub mod verifier;

/// The compiled eBPF object.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conntrack-ebpf"));
