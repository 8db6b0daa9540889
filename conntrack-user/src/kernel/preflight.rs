//! What the running kernel and process offer, checked before anything is loaded.

use std::fs;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("missing {missing}: run it as root (sudo ct-trace) or grant them (setcap cap_bpf,cap_perfmon,cap_net_admin+ep)")]
    Capabilities { missing: String },
    #[error("--netns {0}: no network namespace has this inode (no process is in it and no name in /run/netns gives it; `ls -l /proc/PID/ns/net` shows a process's)")]
    NoSuchNetns(u32),
    #[error("this kernel is Linux {}.{}; ct-trace needs {}.{} or later (the BPF ring buffer every event goes through)", .kernel.0, .kernel.1, .floor.0, .floor.1)]
    KernelTooOld {
        kernel: (u32, u32),
        floor: (u32, u32),
    },
    #[error("cannot raise RLIMIT_MEMLOCK (before Linux 5.11 BPF maps and programs are charged to it): run it as root or grant CAP_SYS_RESOURCE")]
    Memlock(#[source] std::io::Error),
}

/// Refuses a kernel below the plan's floor.
pub fn check_kernel(version: (u32, u32)) -> Result<(), PreflightError> {
    let floor = conntrack_common::plan::FLOOR;
    if version < floor {
        return Err(PreflightError::KernelTooOld {
            kernel: version,
            floor,
        });
    }
    Ok(())
}

/// Before Linux 5.11 the kernel charges BPF memory to RLIMIT_MEMLOCK (memcg accounting came
/// with commits 80ee81e0403c and 3ac1f01b43b6), whose usual default (64 KiB or 8 MiB) is far
/// below what the ring buffer and the maps take: lift it, or say in one line why it cannot be.
pub fn raise_memlock(version: (u32, u32)) -> Result<(), PreflightError> {
    if version >= (5, 11) {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit for setrlimit(2).
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        return Err(PreflightError::Memlock(std::io::Error::last_os_error()));
    }
    Ok(())
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

/// `/proc/kallsyms`, read once (it is read twice per start otherwise, and producing its
/// 150,000 lines is the kernel's slowest part of start-up in an emulated VM). Empty when
/// unreadable: every lookup then finds nothing.
pub fn kallsyms() -> String {
    std::fs::read_to_string("/proc/kallsyms").unwrap_or_default()
}

/// Addresses of [`CONNTRACK_HOOK_FNS`] in `/proc/kallsyms` text (zero for each one not found,
/// e.g. nf_conntrack not loaded yet, or addresses hidden by `kptr_restrict`).
pub fn conntrack_hook_fns(kallsyms: &str) -> [u64; 4] {
    kallsyms_lookup(kallsyms, &CONNTRACK_HOOK_FNS)
}

/// `[start, end)` of a kernel function in `/proc/kallsyms` (its address to the next symbol's);
/// `None` when it is not there or addresses are hidden (`kptr_restrict`).
pub fn kallsyms_range(text: &str, name: &str) -> Option<[u64; 2]> {
    fn addr(line: &str) -> Option<(u64, &str)> {
        let mut f = line.split_whitespace();
        Some((u64::from_str_radix(f.next()?, 16).ok()?, f.nth(1)?))
    }
    let start = text
        .lines()
        .filter_map(addr)
        .find(|(_, n)| *n == name)
        .map(|(a, _)| a)
        .filter(|a| *a != 0)?;
    let end = text
        .lines()
        .filter_map(addr)
        .map(|(a, _)| a)
        .filter(|a| *a > start)
        .min()?;
    Some([start, end])
}

/// Where `nf_hook_slow()` is (see [`kallsyms_range`]): a packet freed from there was dropped
/// by netfilter, which is how a kernel whose `kfree_skb` passes no reason tells a drop.
pub fn nf_hook_slow(kallsyms: &str) -> Option<[u64; 2]> {
    kallsyms_range(kallsyms, "nf_hook_slow")
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

/// Logs (debug) the memory at a point of the start-up: `-v` shows what each phase costs.
pub fn log_memory(when: &str) {
    log::debug!("memory {when} (peak, now KiB): {:?}", memory_kib());
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
    fn a_function_ends_where_the_next_symbol_starts() {
        let t = "ffffffff81a00000 T nf_hook_slow\nffffffff81a000f0 T nf_hook_slow_list\nffffffff81000000 T _stext\nffffffffc0a01000 t ipv6_conntrack_local\t[nf_conntrack]\n";
        assert_eq!(
            super::kallsyms_range(t, "nf_hook_slow"),
            Some([0xffffffff81a00000, 0xffffffff81a000f0])
        );
        assert_eq!(super::kallsyms_range(t, "missing"), None);
        // Hidden addresses (kptr_restrict) are all zero.
        assert_eq!(
            super::kallsyms_range("0000000000000000 T nf_hook_slow\n", "nf_hook_slow"),
            None
        );
    }

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
