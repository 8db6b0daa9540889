//! The kernel's own conntrack counters for the current network namespace, which ct-trace's
//! counts must equal: `/proc/net/stat/nf_conntrack` (parsed by `conntrack_common::kstat`, which
//! the tests and the bench use too), or, on kernels built without `CONFIG_NF_CONNTRACK_PROCFS`
//! (Ubuntu's), the same counters through ctnetlink; and the namespaces ct-trace names.

use std::{
    collections::HashMap,
    fs, io,
    sync::atomic::{AtomicU8, Ordering},
};

pub use conntrack_common::kstat::PATH;

/// Where the kernel's counters were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `/proc/net/stat/nf_conntrack`.
    Procfs,
    /// `IPCTNL_MSG_CT_GET_STATS_CPU`, where the procfs file does not exist.
    Ctnetlink,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Procfs => PATH,
            Self::Ctnetlink => "ctnetlink (no /proc/net/stat/nf_conntrack here, as on kernels built without CONFIG_NF_CONNTRACK_PROCFS)",
        }
    }
}

/// The source of the last successful [`read`]: 0 none yet, 1 procfs, 2 ctnetlink.
static LAST: AtomicU8 = AtomicU8::new(0);

/// Where the last successful [`read`] found the counters, if any succeeded.
pub fn source() -> Option<Source> {
    match LAST.load(Ordering::Relaxed) {
        1 => Some(Source::Procfs),
        2 => Some(Source::Ctnetlink),
        _ => None,
    }
}

/// Every counter of the current netns, summed over the CPUs: from procfs, or from ctnetlink
/// when the procfs file does not exist. A procfs file that exists but cannot be read or parsed
/// is an error, not a reason to look elsewhere.
pub fn read() -> io::Result<HashMap<String, u64>> {
    let (counters, source) = match fs::read_to_string(PATH) {
        Ok(text) => (
            conntrack_common::kstat::parse(&text)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            Source::Procfs,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (
            crate::node::netlink::stats::counters().map_err(|n| {
                io::Error::new(n.kind(), format!("{PATH}: {e}; ctnetlink statistics: {n}"))
            })?,
            Source::Ctnetlink,
        ),
        Err(e) => return Err(e),
    };
    LAST.store(
        match source {
            Source::Procfs => 1,
            Source::Ctnetlink => 2,
        },
        Ordering::Relaxed,
    );
    Ok(counters)
}

/// The `invalid` counter of the current netns.
pub fn invalid() -> io::Result<u64> {
    read().map(|m| m.get("invalid").copied().unwrap_or(0))
}

/// Inode of a process's network namespace (what `ip netns identify` and events call `netns`).
pub fn netns_inode(pid: &str) -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(format!("/proc/{pid}/ns/net"))?.ino() as u32)
}

/// How many times the kernel skipped a BPF program instead of running it
/// (`bpf_prog_info.recursion_misses`, Linux 5.12+): a kprobe or tracepoint program is not run
/// when another BPF program is already running on the CPU (e.g. a softirq that interrupted one),
/// so each miss may be an event that never happened for ct-trace. `None` when unknown: the
/// call failed, or the kernel's `bpf_prog_info` ends before the field (before 5.12, commit
/// 9ed9e9ba2337: it writes back how much it filled in).
pub fn recursion_misses(prog: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    crate::kernel::progstats::prog_stats(prog)?.recursion_misses
}

/// Runs the kernel skipped, by program (BPF recursion protection), where any; `None` when the
/// kernel does not count them (before 5.12).
pub fn missed_runs(ebpf: &aya::Ebpf) -> Option<std::collections::BTreeMap<String, u64>> {
    use std::os::fd::AsFd as _;
    let mut known = true;
    let runs = ebpf
        .programs()
        .filter_map(|(name, p)| {
            let fd = p.fd().ok()?;
            let n = recursion_misses(fd.as_fd());
            known &= n.is_some();
            let n = n?;
            (n > 0).then(|| (name.to_string(), n))
        })
        .collect();
    known.then_some(runs)
}

/// Where `ip netns` (and CNI plugins) name network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The name under [`NETNS_DIR`] of the namespace with this inode, if it has one.
pub fn netns_name(inode: u32) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(NETNS_DIR)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| fs::metadata(p).is_ok_and(|m| m.ino() as u32 == inode))
}

/// Whether a network namespace with this inode exists where one can be found: a process in it
/// (`/proc/PID/ns/net`) or a name for it (`/run/netns`, Docker's `/run/docker/netns`). A
/// namespace that is in neither (held only by an open file descriptor) is not found.
pub fn netns_exists(inode: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let is_it = |p: &std::path::Path| fs::metadata(p).is_ok_and(|m| m.ino() as u32 == inode);
    let named = [NETNS_DIR, "/run/docker/netns"].iter().any(|d| {
        fs::read_dir(d)
            .map(|rd| rd.filter_map(|e| e.ok()).any(|e| is_it(&e.path())))
            .unwrap_or(false)
    });
    named
        || fs::read_dir("/proc").is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .as_encoded_bytes()
                        .iter()
                        .all(u8::is_ascii_digit)
                })
                .any(|e| is_it(&e.path().join("ns/net")))
        })
}

/// Whether a namespace name still names the namespace with this inode (false once `ip netns
/// del` removed it).
pub fn netns_still_named(path: &std::path::Path, inode: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).is_ok_and(|m| m.ino() as u32 == inode)
}
