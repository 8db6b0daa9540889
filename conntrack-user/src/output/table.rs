//! Table pressure over a run: the kernel's own `drop` / `early_drop` / `insert_failed` deltas
//! for the namespace and the exit line of the tallies (`event::TableTally`). Also keeps the
//! programs' copy of `nf_conntrack_max` current.

use std::collections::HashMap;

use aya::maps::{Array, MapData};

use crate::event::TableTally;

/// The delta of one kernel counter between two readings.
pub fn delta(
    before: Option<&HashMap<String, u64>>,
    after: Option<&HashMap<String, u64>>,
    name: &str,
) -> Option<u64> {
    let a = before?.get(name)?;
    let b = after?.get(name)?;
    Some(b.saturating_sub(*a))
}

pub fn read_max() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The namespace's entry count (`nf_conntrack_count`), for events whose program could not
/// read it (Linux 5.19+ keeps it where BPF cannot find it).
pub fn read_count() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The programs' copy of `nf_conntrack_max` (map `CT_MAX`).
pub struct CtMax {
    map: Option<Array<MapData, u32>>,
    pub last: Option<u32>,
}

impl CtMax {
    pub fn new(map: Option<Array<MapData, u32>>) -> Self {
        let mut m = Self { map, last: None };
        m.refresh();
        m
    }

    /// Reads the sysctl and writes it into the map when it changed.
    pub fn refresh(&mut self) -> Option<u32> {
        let now = read_max();
        if now != self.last {
            if let (Some(map), Some(v)) = (self.map.as_mut(), now) {
                if let Err(e) = map.set(0, v, 0) {
                    log::warn!("cannot tell the programs nf_conntrack_max: {e}");
                }
            }
            self.last = now;
        }
        now
    }
}

/// The exit line about table pressure (only when something happened).
pub fn summary_line(netns: u32, t: &TableTally) -> Option<String> {
    let quiet = t.table_full.counted == 0
        && t.midstream.counted == 0
        && t.evicted.shown == 0
        && t.kernel_drop.unwrap_or(0) == 0
        && t.kernel_early_drop.unwrap_or(0) == 0
        && t.kernel_insert_failed.unwrap_or(0) == 0;
    if quiet {
        return None;
    }
    let k = |v: Option<u64>| v.map_or("unknown".to_string(), |v| v.to_string());
    Some(format!(
        "ct-trace: conntrack table in netns {netns} (max {}): table_full {} (kernel drop {}), evicted shown {} (kernel early_drop {}{}), insert_failed (kernel) {}, midstream {}",
        t.max.map_or("unknown".to_string(), |m| m.to_string()),
        t.table_full.counted,
        k(t.kernel_drop),
        t.evicted.shown,
        k(t.kernel_early_drop),
        if t.evicted.inferred > 0 {
            format!(", {} inferred", t.evicted.inferred)
        } else {
            String::new()
        },
        k(t.kernel_insert_failed),
        t.midstream.counted,
    ))
}
