//! What ct-trace's BPF programs cost the node, as the kernel itself measures it
//! (`BPF_OBJ_GET_INFO_BY_FD`, `struct bpf_prog_info`): runs and nanoseconds spent in each
//! program, and the runs the kernel skipped.
//!
//! The kernel counts runs and time only while `kernel.bpf_stats_enabled` is 1 (5.1+, commit
//! 492ecee892c2): counting costs every BPF program on the node two clock reads a run, so
//! ct-trace never switches it on by itself; without it runs and time are unknown (`null`), not 0.
//! Skipped runs (`recursion_misses`, 5.12+, commit 9ed9e9ba2337) are always counted.

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};

use serde::Serialize;

/// The switch of the kernel's run-time statistics.
pub const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One program's counters as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub runs: u64,
    pub run_time_ns: u64,
    /// `None` before 5.12: the kernel's `bpf_prog_info` ends before the field.
    pub recursion_misses: Option<u64>,
}

/// The kernel's counters of a loaded program; `None` when the call fails.
pub fn prog_stats(prog: BorrowedFd<'_>) -> Option<ProgStats> {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
    // SAFETY: all-zero is a valid bpf_prog_info and bpf_attr.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // Writing plain integers into the `info` member of the union.
    attr.info.bpf_fd = prog.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&mut info as *mut bpf_prog_info) as u64;
    // SAFETY: attr points at a live bpf_prog_info of the size it states.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret != 0 {
        return None;
    }
    // The kernel writes back how much of the structure it knows.
    // SAFETY: reading the integer the kernel wrote into the union.
    let filled = unsafe { attr.info.info_len } as usize;
    let has = |end: usize| filled >= end;
    Some(ProgStats {
        runs: info.run_cnt,
        run_time_ns: info.run_time_ns,
        recursion_misses: has(std::mem::offset_of!(bpf_prog_info, recursion_misses) + 8)
            .then_some(info.recursion_misses),
    })
}

/// Whether the kernel is counting runs and time now; `None` when the switch cannot be read.
pub fn stats_enabled() -> Option<bool> {
    std::fs::read_to_string(STATS_SYSCTL)
        .ok()
        .map(|s| s.trim() != "0")
}

/// One program's cost, as the summary (`programs`) and the metrics show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgramCost {
    pub program: &'static str,
    /// Where it is attached (`kretprobe/nf_conntrack_in`; `netfilter` for its hooks).
    pub attach: String,
    /// Runs since it was loaded; `null` while `kernel.bpf_stats_enabled` is 0.
    pub runs: Option<u64>,
    /// Nanoseconds spent in it; `null` as `runs`.
    pub run_ns: Option<u64>,
    /// Runs the kernel skipped (another BPF program was running on the CPU); `null` before 5.12.
    pub missed_runs: Option<u64>,
}

impl ProgramCost {
    /// Nanoseconds a run, when runs were counted.
    pub fn ns_per_run(&self) -> Option<f64> {
        match (self.runs, self.run_ns) {
            (Some(r), Some(ns)) if r > 0 => Some(ns as f64 / r as f64),
            _ => None,
        }
    }
}

/// The attached programs, each with a file descriptor of its own, so that their cost can be
/// read at any time (a scrape, the exit) whoever owns the programs.
#[derive(Default)]
pub struct ProgramSet {
    programs: Vec<(&'static str, String, OwnedFd)>,
}

impl ProgramSet {
    /// `fds`: a descriptor of every loaded program by name; `points`: (program, attach point) of
    /// every attachment. A program attached at several points (the netfilter hooks) is one
    /// program to the kernel: its attach label is what the points share.
    pub fn new(fds: &[(&'static str, BorrowedFd<'_>)], points: &[(&'static str, String)]) -> Self {
        let mut programs = Vec::new();
        for (name, fd) in fds {
            let at: Vec<&str> = points
                .iter()
                .filter(|(p, _)| p == name)
                .map(|(_, a)| a.as_str())
                .collect();
            let Some(first) = at.first() else { continue };
            let attach = if at.len() == 1 {
                first.to_string()
            } else {
                first.split(' ').next().unwrap_or(first).to_string()
            };
            match fd.try_clone_to_owned() {
                Ok(fd) => programs.push((*name, attach, fd)),
                Err(e) => log::debug!("cannot keep a descriptor of {name}: {e}"),
            }
        }
        Self { programs }
    }

    /// Every program's cost now.
    pub fn costs(&self) -> Vec<ProgramCost> {
        let counting = stats_enabled().unwrap_or(false);
        self.programs
            .iter()
            .map(|(program, attach, fd)| {
                let s = prog_stats(fd.as_fd());
                ProgramCost {
                    program,
                    attach: attach.clone(),
                    runs: s.filter(|_| counting).map(|s| s.runs),
                    run_ns: s.filter(|_| counting).map(|s| s.run_time_ns),
                    missed_runs: s.and_then(|s| s.recursion_misses),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::ProgramCost;

    #[test]
    fn a_run_costs_its_time_over_its_runs() {
        let mut c = ProgramCost {
            program: "ctt_nf_verdict",
            attach: "netfilter".into(),
            runs: Some(4),
            run_ns: Some(200),
            missed_runs: Some(0),
        };
        assert_eq!(c.ns_per_run(), Some(50.0));
        c.runs = Some(0);
        assert_eq!(c.ns_per_run(), None);
        c.runs = None;
        assert_eq!(c.ns_per_run(), None);
    }
}
