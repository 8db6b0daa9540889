//! The one thing a lab may change outside its namespaces, and only with
//! `--allow-host-sysctl`: conntrack's table limit and hash size, which are global
//! (`nf_conntrack_max` is writable only from the initial namespace, and it bounds every
//! namespace's table; `nf_conntrack_buckets` sizes the one hash all namespaces share; see
//! `nf_conntrack_standalone.c`). Each value is restored when its guard drops (end, error,
//! SIGINT/SIGTERM unwind). For SIGKILL, the original values are first written to
//! `/run/ct-trace/lab/ctt-lab-PID.sysctl` (the lab's root-only directory); the next lab run or
//! `ct-trace lab cleanup` restores those of labs that are gone, reading only root's regular
//! files there, never through a link, and writing only the two sysctls this module changes.

use std::io;

use super::{topology::PREFIX, LabError};
use crate::private::PrivateDir;

const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const BUCKETS: &str = "/proc/sys/net/netfilter/nf_conntrack_buckets";

/// The global sysctls a `table-full` lab shrinks, restored on drop.
pub struct TableLimit {
    saved: Vec<(&'static str, String)>,
    dir: PrivateDir,
    state: String,
}

fn state_file(pid: u32) -> String {
    format!("{PREFIX}{pid}.sysctl")
}

/// The PID in a state file's name (`ctt-lab-PID.sysctl`).
fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(".sysctl")?
        .parse()
        .ok()
}

/// The state files in `dir`, with their PIDs.
fn state_files(dir: &PrivateDir) -> Vec<(String, u32)> {
    dir.names()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let pid = owner(&n)?;
            Some((n, pid))
        })
        .collect()
}

fn read(path: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

fn write(path: &str, value: &str) -> Result<(), LabError> {
    std::fs::write(path, value).map_err(|e| {
        LabError::Workload(format!(
            "writing {value} to {path}: {e} (from the initial network namespace, as root)"
        ))
    })
}

impl TableLimit {
    /// Sets `nf_conntrack_max` to `max` and `nf_conntrack_buckets` to `buckets`, after saving
    /// both (in memory and in the state file).
    pub fn set(max: u64, buckets: u64) -> Result<Self, LabError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |e: io::Error| LabError::Workload(format!("{what}: {e}"))
        };
        let saved = vec![
            (MAX, read(MAX).map_err(io(MAX))?),
            (BUCKETS, read(BUCKETS).map_err(io(BUCKETS))?),
        ];
        let dir = super::lab_dir()?;
        let state = state_file(std::process::id());
        let text: String = saved.iter().map(|(p, v)| format!("{p} {v}\n")).collect();
        dir.write(&state, text.as_bytes())?;
        let me = Self { saved, dir, state };
        write(BUCKETS, &buckets.to_string())?;
        write(MAX, &max.to_string())?;
        Ok(me)
    }

    /// `nf_conntrack_max` as it was before.
    pub fn max_before(&self) -> u64 {
        self.saved
            .iter()
            .find(|(p, _)| *p == MAX)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for TableLimit {
    fn drop(&mut self) {
        // The limit first: restoring the hash size rehashes every entry.
        for (path, value) in &self.saved {
            if let Err(e) = std::fs::write(path, value) {
                log::warn!("lab: could not restore {path} to {value}: {e}");
            }
        }
        let _ = self.dir.remove(&self.state);
    }
}

/// The PIDs of labs whose state file is in `dir`: labs that changed the global sysctls (live or
/// gone).
pub fn owners(dir: &PrivateDir) -> Vec<u32> {
    state_files(dir).into_iter().map(|(_, pid)| pid).collect()
}

/// Restores the sysctls of labs that are `gone`; returns what it restored, as `path=value`.
pub fn restore_stale(dir: &PrivateDir, gone: impl Fn(u32) -> bool) -> Vec<String> {
    let mut restored = Vec::new();
    for (name, pid) in state_files(dir) {
        if !gone(pid) {
            continue;
        }
        match dir.read(&name) {
            Ok(text) => {
                for line in text.lines() {
                    // Only the two files this module writes.
                    if let Some((sysctl, value)) = line.split_once(' ') {
                        if [MAX, BUCKETS].contains(&sysctl) && std::fs::write(sysctl, value).is_ok()
                        {
                            restored.push(format!("{sysctl}={value}"));
                        }
                    }
                }
            }
            Err(e) => log::warn!("lab: not restoring from {}", e.one_line()),
        }
        let _ = dir.remove(&name);
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_state_is_read_only_from_own_regular_files_and_removed() {
        let scratch = PrivateDir::fresh(&std::env::temp_dir(), "ctt-unit-").unwrap();
        let dir = PrivateDir::under(scratch.path(), &["lab"]).unwrap();
        // Lines for other files than the two sysctls are never written anywhere.
        let victim = scratch.join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let line = format!("{} 1\n", victim.display());
        dir.write(&state_file(4_000_001), line.as_bytes()).unwrap();
        // A link in place of a state file is not read through. (Were it, the limit would be
        // written as it is: a regression shows as something restored, and changes nothing.)
        let elsewhere = scratch.join("elsewhere");
        let same = read(MAX).map_or(line.clone(), |now| format!("{MAX} {now}\n"));
        std::fs::write(&elsewhere, same).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(&state_file(4_000_002))).unwrap();
        dir.write("unrelated", b"").unwrap();
        let mut pids = owners(&dir);
        pids.sort();
        assert_eq!(pids, [4_000_001, 4_000_002]);
        assert!(restore_stale(&dir, |pid| pid == 4_000_003).is_empty());
        assert_eq!(owners(&dir).len(), 2, "labs not gone are kept");
        assert!(restore_stale(&dir, |_| true).is_empty());
        assert!(owners(&dir).is_empty());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(elsewhere.exists());
        assert_eq!(dir.names().unwrap(), ["unrelated"]);
        std::fs::remove_dir_all(scratch.path()).unwrap();
    }
}
