//! The `lost` / `suppressed` notices: one event each time a counter of records the programs did
//! not send (the budget's, the losses') has moved since the last notice.

use conntrack_common::{counter::Role, Counter, COUNTERS};

use crate::{
    event::time::boot_now,
    event::{CounterReport, Report},
    kernel::maps::Counters,
    output::correlated::Correlated,
};

/// The counters' values at the last notice.
pub(crate) struct Notices {
    noticed: [u64; COUNTERS as usize],
}

impl Notices {
    pub(crate) fn new() -> Self {
        Self {
            noticed: [0; COUNTERS as usize],
        }
    }

    /// Notices for the loss and suppression counters that moved since the last call.
    pub(crate) fn push(
        &mut self,
        counters: &Counters,
        corr: &dyn Correlated,
        out: &mut Vec<Report>,
    ) {
        for c in Counter::ALL {
            let suppressed = match c.role() {
                Role::Suppressed(_) => true,
                Role::Lost(_) => false,
                Role::Count | Role::Filtered(_) => continue,
            };
            let now = counters.read(c);
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
