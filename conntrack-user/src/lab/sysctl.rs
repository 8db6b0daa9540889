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
    /// Sets `nf_conntrack_max` to `max` and, when given, `nf_conntrack_buckets` to `buckets`,
    /// after saving both (in memory and in the state file).
    pub fn set(max: u64, buckets: Option<u64>) -> Result<Self, LabError> {
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
        if let Some(b) = buckets {
            write(BUCKETS, &b.to_string())?;
        }
        write(MAX, &max.to_string())?;
        Ok(me)
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
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(PREFIX)?
                .strip_suffix(".sysctl")?
                .parse()
                .ok()
        })
        .collect()
}

/// Restores the sysctls of labs that are gone (their PID is no longer a ct-trace); returns
/// what it restored, as `path=value`.
pub fn restore_stale(alive: impl Fn(u32) -> bool) -> Vec<String> {
    let mut restored = Vec::new();
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else {
        return restored;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(".sysctl"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            // Only the two files this module writes.
            if let Some((path, value)) = line.split_once(' ') {
                if [MAX, BUCKETS].contains(&path) && std::fs::write(path, value).is_ok() {
                    restored.push(format!("{path}={value}"));
                }
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
    restored
}
