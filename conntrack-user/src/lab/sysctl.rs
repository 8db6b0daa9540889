//! The one thing a lab may change outside its namespaces, and only with
//! `--allow-host-sysctl`: conntrack's table limit and hash size, which are global
//! (`nf_conntrack_max` is writable only from the initial namespace, and it bounds every
//! namespace's table; `nf_conntrack_buckets` sizes the one hash all namespaces share; see
//! `nf_conntrack_standalone.c`). Each value is restored when its guard drops (end, error,
//! SIGINT/SIGTERM unwind). For SIGKILL, the original values are first written to
//! `/run/ctt-lab-PID.sysctl`; the next lab run or `ct-trace lab cleanup` restores those of labs
//! that are gone.

use std::{io, path::PathBuf};

use super::{topology::PREFIX, LabError};

const STATE_DIR: &str = "/run";
const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const BUCKETS: &str = "/proc/sys/net/netfilter/nf_conntrack_buckets";

/// The global sysctls a `table-full` lab shrinks, restored on drop.
pub struct TableLimit {
    saved: Vec<(&'static str, String)>,
    state: PathBuf,
}

fn state_file(pid: u32) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("{PREFIX}{pid}.sysctl"))
}

/// The PID in a state file's name (`ctt-lab-PID.sysctl`).
fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(".sysctl")?
        .parse()
        .ok()
}

/// The state files here, with their PIDs.
fn state_files() -> Vec<(PathBuf, u32)> {
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| Some((e.path(), owner(e.file_name().to_str()?)?)))
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
        let state = state_file(std::process::id());
        let text: String = saved.iter().map(|(p, v)| format!("{p} {v}\n")).collect();
        std::fs::write(&state, text).map_err(io(&state.display().to_string()))?;
        let me = Self { saved, state };
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
        let _ = std::fs::remove_file(&self.state);
    }
}

/// The PIDs of labs whose state file is here: labs that changed the global sysctls (live or
/// gone).
pub fn owners() -> Vec<u32> {
    state_files().into_iter().map(|(_, pid)| pid).collect()
}

/// Restores the sysctls of labs that are gone (their PID is no longer a ct-trace); returns
/// what it restored, as `path=value`.
pub fn restore_stale(alive: impl Fn(u32) -> bool) -> Vec<String> {
    let mut restored = Vec::new();
    for (path, pid) in state_files() {
        if alive(pid) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            // Only the two files this module writes.
            if let Some((sysctl, value)) = line.split_once(' ') {
                if [MAX, BUCKETS].contains(&sysctl) && std::fs::write(sysctl, value).is_ok() {
                    restored.push(format!("{sysctl}={value}"));
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    restored
}
