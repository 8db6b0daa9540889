//! What the running kernel and process offer, checked before anything is loaded.

use std::fs;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("missing {missing}: run it as root (sudo ct-trace) or grant them (setcap cap_bpf,cap_perfmon,cap_net_admin+ep)")]
    Capabilities { missing: String },
    #[error("--netns {0}: no network namespace has this inode (no process is in it and no name in /run/netns gives it; `ls -l /proc/PID/ns/net` shows a process's)")]
    NoSuchNetns(u32),
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// CAP_BPF + CAP_PERFMON (tracing programs, reading kernel memory) and CAP_NET_ADMIN
/// (netfilter links). CAP_SYS_ADMIN stands in for the first two on every kernel.
pub fn check_caps(eff: u64) -> Result<(), PreflightError> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = vec![];
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Capabilities {
            missing: missing.join(", "),
        })
    }
}

/// `(major, minor)` of the running kernel, from uname.
pub fn kernel_version() -> (u32, u32) {
    parse_version(&kernel_release())
}

/// The running kernel's release string (uname -r), empty if uname fails.
pub fn kernel_release() -> String {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct we own.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: release is NUL-terminated by the kernel.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub fn parse_version(rel: &str) -> (u32, u32) {
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Whether the kernel was built with kprobes (their PMU type file exists).
pub fn has_kprobes() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

/// Conntrack's netfilter hook functions (net/netfilter/nf_conntrack_proto.c), whose presence
/// in a hook's entries tells that conntrack runs there.
pub const CONNTRACK_HOOK_FNS: [&str; 4] = [
    "ipv4_conntrack_in",
    "ipv4_conntrack_local",
    "ipv6_conntrack_in",
    "ipv6_conntrack_local",
];

/// Addresses of [`CONNTRACK_HOOK_FNS`] in `/proc/kallsyms` text (zero for each one not found,
/// e.g. nf_conntrack not loaded yet, or addresses hidden by `kptr_restrict`).
pub fn conntrack_hook_fns() -> [u64; 4] {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|t| kallsyms_lookup(&t, &CONNTRACK_HOOK_FNS))
        .unwrap_or_default()
}

/// `addr type name [module]` lines: the addresses of `names`, in order.
pub fn kallsyms_lookup(text: &str, names: &[&str; 4]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(_), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Some(i) = names.iter().position(|n| *n == name) {
            out[i] = u64::from_str_radix(addr, 16).unwrap_or(0);
        }
    }
    out
}

/// Peak and current resident memory of this process in KiB (`VmHWM`, `VmRSS`), for `-v`.
pub fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn kallsyms_lines_give_addresses() {
        let t = "ffffffff81f3c5a0 t ipv4_conntrack_in\nffffffffc0a01000 t ipv6_conntrack_local\t[nf_conntrack]\nffffffff81000000 T _stext\n";
        assert_eq!(
            super::kallsyms_lookup(t, &super::CONNTRACK_HOOK_FNS),
            [0xffffffff81f3c5a0, 0, 0, 0xffffffffc0a01000]
        );
    }

    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        let e = check_caps(0).unwrap_err().to_string();
        assert!(
            e.starts_with("missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN: run it as root"),
            "{e}"
        );
        assert!(check_caps((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_ok());
        assert!(check_caps((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)).is_ok());
        assert_eq!(
            check_caps((1 << CAP_BPF) | (1 << CAP_PERFMON))
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("missing CAP_NET_ADMIN")
        );
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("6.18.44-fc-v657"), (6, 18));
        assert_eq!(parse_version("6.1.0-28-amd64"), (6, 1));
        assert_eq!(parse_version("garbage"), (0, 0));
    }
}
