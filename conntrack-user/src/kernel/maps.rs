//! The maps ct-trace reads and writes while its programs run, once the loader has handed them
//! over: the programs' per-CPU counters (read, summed over the CPUs) and their copy of
//! `nf_conntrack_max` (written when the sysctl changes), with the two sysctls of the table the
//! pipeline reads beside them.

use std::collections::BTreeMap;

use aya::maps::{Array, MapData, PerCpuArray};
use conntrack_common::Counter;

/// The programs' per-CPU counters (`COUNTERS_MAP`, and `RST_REASONS` where it loaded).
pub struct Counters {
    map: PerCpuArray<MapData, u64>,
    /// Resets sent by reason slot (see [`conntrack_common::RST_REASON_SLOTS`]).
    rst_reasons: Option<PerCpuArray<MapData, u64>>,
}

impl Counters {
    pub fn new(
        map: PerCpuArray<MapData, u64>,
        rst_reasons: Option<PerCpuArray<MapData, u64>>,
    ) -> Self {
        Self { map, rst_reasons }
    }

    /// `c`, summed over the CPUs (0 if the map cannot be read).
    pub fn read(&self, c: Counter) -> u64 {
        self.map
            .get(&(c as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Resets sent by reason slot, summed over the CPUs (the slots with a count only).
    pub fn rst_reasons(&self) -> Vec<(u32, u64)> {
        let Some(m) = &self.rst_reasons else {
            return Vec::new();
        };
        (0..conntrack_common::RST_REASON_SLOTS)
            .filter_map(|i| {
                let n: u64 = m.get(&i, 0).ok()?.iter().sum();
                (n > 0).then_some((i, n))
            })
            .collect()
    }

    /// Every counter by name.
    pub fn all(&self) -> BTreeMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .map(|c| (c.name(), self.read(*c)))
            .collect()
    }
}

/// This namespace's `nf_conntrack_max`.
pub fn read_max() -> Option<u32> {
    read_u32("/proc/sys/net/netfilter/nf_conntrack_max")
}

/// The namespace's entry count (`nf_conntrack_count`), for events whose program could not
/// read it (Linux 5.19+ keeps it where BPF cannot find it).
pub fn read_count() -> Option<u32> {
    read_u32("/proc/sys/net/netfilter/nf_conntrack_count")
}

fn read_u32(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The programs' copy of `nf_conntrack_max` (map `CT_MAX`): the table-pressure program tells a
/// drop of a full table from other drops by it (the limit is a global sysctl that kallsyms gives
/// no symbol for).
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
