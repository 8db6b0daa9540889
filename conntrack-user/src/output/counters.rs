//! ct-trace's kernel counters, summed over the CPUs, and the `lost` / `suppressed` notices they
//! give the stream when they move.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use conntrack_common::{counter::Role, Counter, COUNTERS};

use crate::{
    event::time::boot_now,
    event::{CounterReport, Report},
    output::correlated::Correlated,
};

/// The kernel's per-CPU counters of ct-trace, summed.
pub(crate) struct Counters {
    pub(crate) map: PerCpuArray<MapData, u64>,
    /// Values at the last notice, for the `lost`/`suppressed` events.
    pub(crate) noticed: [u64; COUNTERS as usize],
    /// Resets sent by reason slot (`RST_REASONS`, see [`conntrack_common::RST_REASON_SLOTS`]).
    pub(crate) rst_reasons: Option<PerCpuArray<MapData, u64>>,
}

impl Counters {
    pub(crate) fn read(&self, c: Counter) -> u64 {
        self.map
            .get(&(c as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Resets sent by reason slot, summed over the CPUs (the slots with a count only).
    pub(crate) fn rst_reasons(&self) -> Vec<(u32, u64)> {
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

    pub(crate) fn all(&self) -> BTreeMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .map(|c| (c.name(), self.read(*c)))
            .collect()
    }

    /// Notices for the loss and suppression counters that moved since the last call.
    pub(crate) fn notices(&mut self, corr: &dyn Correlated, out: &mut Vec<Report>) {
        // Every counter whose role says records went unsent: the budget's and the losses'.
        for c in Counter::ALL {
            let suppressed = match c.role() {
                Role::Suppressed(_) => true,
                Role::Lost(_) => false,
                Role::Count | Role::Filtered(_) => continue,
            };
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
            out.push(if suppressed {
                Report::Suppressed(r)
            } else {
                Report::Lost(r)
            });
        }
    }
}
