//! ct-trace's kernel counters, summed over the CPUs, and the `lost` / `suppressed` notices they
//! give the stream when they move.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use conntrack_common::{Counter, COUNTERS};

use crate::{
    app::boot_now,
    attribution::Correlator,
    report::{CounterReport, Report},
};

/// The kernel's per-CPU counters of ct-trace, summed.
pub(crate) struct Counters {
    pub(crate) map: PerCpuArray<MapData, u64>,
    /// Values at the last notice, for the `lost`/`suppressed` events.
    pub(crate) noticed: [u64; COUNTERS as usize],
}

impl Counters {
    pub(crate) fn read(&self, c: Counter) -> u64 {
        self.map
            .get(&(c as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    pub(crate) fn all(&self) -> BTreeMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .map(|c| (c.name(), self.read(*c)))
            .collect()
    }

    /// Notices for the loss and suppression counters that moved since the last call.
    pub(crate) fn notices(&mut self, corr: &Correlator, out: &mut Vec<Report>) {
        use Counter::*;
        for c in [
            LostInvalid,
            LostReset,
            LostReason,
            LostDrop,
            ReadFailed,
            MapUpdateFailed,
            StackLost,
            SuppressedInvalid,
            SuppressedReset,
            SuppressedReason,
            SuppressedDrop,
            LostMidstream,
            LostTableFull,
            SuppressedMidstream,
            SuppressedTableFull,
        ] {
            let now = self.read(c);
            let delta = now.saturating_sub(self.noticed[c as usize]);
            if delta == 0 {
                continue;
            }
            self.noticed[c as usize] = now;
            let r = CounterReport {
                time: corr.time(boot_now()),
                counter: c.name(),
                count: delta,
            };
            out.push(match c {
                SuppressedInvalid | SuppressedReset | SuppressedReason | SuppressedDrop
                | SuppressedMidstream | SuppressedTableFull => Report::Suppressed(r),
                _ => Report::Lost(r),
            });
        }
    }
}
