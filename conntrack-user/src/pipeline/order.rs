//! Reports leave in the order of their `time`.
//!
//! Three things put reports out of time order between the ring buffer and stdout: records of
//! different CPUs are reserved in the ring buffer a little after the time they carry; the
//! correlator holds some reports (a verdict for its fate and lookup, a `midstream` record for
//! the destroy event of its lost entry) while later ones go on; and the destroy watcher hands
//! over entries in batches. So reports wait here until nothing earlier can still come: until
//! their time is before the release bound the caller computes from what is still in flight
//! (the oldest report the correlator holds, the time up to which the ring buffer was read
//! empty, the destroy watcher's watermark), less [`MARGIN`] for a record whose time was taken
//! a moment before it was reserved.

use std::collections::BTreeMap;

use crate::event::{Report, Time};

/// How long before a reservation a program may have read its record's time: a program runs
/// for microseconds, but an interrupt can stretch that on a busy CPU.
pub const MARGIN_NS: u64 = 10_000_000;

/// Reports held at once at most; beyond it the oldest goes out at once (in order among those
/// held), so a storm cannot grow this without bound.
pub const MAX_HELD: usize = 65_536;

/// Reports waiting for their turn, by time and arrival.
#[derive(Default)]
pub struct Reorder {
    held: BTreeMap<(Time, u64), Report>,
    arrivals: u64,
    /// Reports that went out before their bound because [`MAX_HELD`] were waiting.
    pub forced: u64,
}

impl Reorder {
    /// Takes the reports (leaving `reports` empty). Reports without a time (flows, the
    /// summary) are not expected here; they would go first.
    pub fn push(&mut self, reports: &mut Vec<Report>) {
        for r in reports.drain(..) {
            let t = r.time().unwrap_or_default();
            self.arrivals += 1;
            self.held.insert((t, self.arrivals), r);
        }
    }

    /// Appends to `out`, in time order, every report older than `bound` (all with `None`), and
    /// the oldest beyond [`MAX_HELD`].
    pub fn release(&mut self, bound: Option<Time>, out: &mut Vec<Report>) {
        loop {
            let over = self.held.len() > MAX_HELD;
            let Some(entry) = self.held.first_entry() else {
                break;
            };
            let due = bound.is_none_or(|b| entry.key().0 < b);
            if !due && !over {
                break;
            }
            self.forced += u64::from(!due);
            out.push(entry.remove());
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CounterReport;

    fn at(ns: u64) -> Report {
        Report::Lost(CounterReport {
            time: Time(ns),
            counter: "lost_invalid",
            count: ns,
        })
    }

    fn times(v: &[Report]) -> Vec<u64> {
        v.iter().map(|r| r.time().unwrap().0).collect()
    }

    #[test]
    fn reports_leave_in_time_order_once_the_bound_is_past_them() {
        let mut o = Reorder::default();
        let mut out = Vec::new();
        o.push(&mut vec![at(30), at(10), at(20)]);
        o.release(Some(Time(20)), &mut out);
        assert_eq!(times(&out), [10]);
        o.push(&mut vec![at(15), at(40)]);
        o.release(Some(Time(31)), &mut out);
        assert_eq!(times(&out), [10, 15, 20, 30]);
        o.release(None, &mut out);
        assert_eq!(times(&out), [10, 15, 20, 30, 40]);
        assert!(o.is_empty());
    }

    #[test]
    fn equal_times_keep_their_arrival_order_and_the_bound_caps_memory() {
        let mut o = Reorder::default();
        let mut out = Vec::new();
        let mut many: Vec<Report> = (0..MAX_HELD as u64 + 3).map(|_| at(5)).collect();
        if let Report::Lost(c) = &mut many[0] {
            c.count = 0;
        }
        o.push(&mut many);
        o.release(Some(Time(0)), &mut out);
        assert_eq!(out.len(), 3, "only what is beyond the bound goes early");
        assert_eq!(o.forced, 3);
        assert!(matches!(&out[0], Report::Lost(c) if c.count == 0));
        assert_eq!(o.len(), MAX_HELD);
    }
}
