//! Lost conntrack entries: how an entry went (evicted by `early_drop`, expired, deleted; the
//! reports of the table-pressure kinds are in `event::lost`), and the bounded memory of recently
//! lost entries that names the Service and the backend of a flow picked up
//! mid-stream - and of the reset that follows. Pure code, unit-tested; the netlink thread that
//! feeds it is in `destroy`.
//!
//! Destroy events do not say why an entry went. The deleting process's netlink port does
//! (`nlmsg_pid`, 0 when the kernel destroyed it); an entry the kernel destroyed was evicted when
//! the namespace's `early_drop` counter moved for it, else it expired. The counter is read after
//! each batch of events, so within a batch that mixes both the split is inferred (said so in
//! `certain: false`), never guessed silently.

use std::collections::{HashMap, VecDeque};

pub use crate::event::{
    how_name, EvictedReport, FlowEntry, How, LostReport, MidstreamReport, TableFullReport,
};
use crate::node::netlink::{Destroyed, Tuple, IPS_ASSURED};

/// Lost entries remembered for `midstream` and `entry_lost` attributions: at most this many ...
pub const LOST_ENTRIES: usize = 4096;
/// ... and for at most this long (a flow picked up mid-stream shows itself with its next
/// packet: an idle keepalive flow can take minutes).
pub const LOST_MAX_AGE_NS: u64 = 600 * 1_000_000_000;

/// One entry that went, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    pub destroyed: Destroyed,
    pub how: How,
    pub certain: bool,
    /// CLOCK_BOOTTIME of the batch it came in, nanoseconds.
    pub boot_ns: u64,
    /// The namespace's entry count after the batch (for an eviction; otherwise as read at most
    /// 100 ms before it).
    pub entries: Option<u64>,
}

/// How long an entry the kernel destroyed waits for the `early_drop` counter to move for it
/// before it is taken as expired, and how long counter moves wait for their events.
pub const EVICTION_WAIT_NS: u64 = 300_000_000;

/// Tells evictions from expiries. `early_drop_list()` (nf_conntrack_core.c) evicts only entries
/// that are not ASSURED, deletes each (which sends its destroy event) and then increments the
/// namespace's `early_drop` counter. So an unassured entry the kernel destroyed is matched, in
/// order, to a later move of that counter; one the counter does not move for within
/// [`EVICTION_WAIT_NS`] expired. Deletions by a process carry its netlink port: certain.
#[derive(Default)]
pub struct Classifier {
    /// Unassured entries the kernel destroyed, with when they arrived, not yet explained.
    pending: VecDeque<(Destroyed, u64)>,
    /// Counter moves not yet matched to an event, and since when.
    credit: u64,
    credit_since: u64,
    /// Counter moves that no event ever explained (entries created before ct-trace listened).
    pub unseen: u64,
}

impl Classifier {
    /// Takes one batch of events (possibly empty) and how far the counter moved since the last
    /// call; appends what can be told now, in the kernel's order.
    pub fn step(
        &mut self,
        batch: Vec<Destroyed>,
        early_drop_delta: u64,
        now_ns: u64,
        out: &mut Vec<(Destroyed, How, bool, u64)>,
    ) {
        for d in batch {
            if d.portid != 0 {
                out.push((d, How::Deleted, true, now_ns));
            } else if d.entry.status & IPS_ASSURED != 0 {
                out.push((d, How::Expired, true, now_ns));
            } else {
                self.pending.push_back((d, now_ns));
            }
        }
        if early_drop_delta > 0 {
            self.credit += early_drop_delta;
            self.credit_since = now_ns;
        }
        // More candidates than evictions at once: which of them expired is a guess.
        let ambiguous = self.credit > 0 && self.pending.len() as u64 > self.credit;
        while self.credit > 0 {
            let Some((d, at)) = self.pending.pop_front() else {
                break;
            };
            self.credit -= 1;
            out.push((d, How::Evicted, !ambiguous, at));
        }
        while self
            .pending
            .front()
            .is_some_and(|(_, at)| now_ns.saturating_sub(*at) > EVICTION_WAIT_NS)
        {
            let (d, at) = self.pending.pop_front().expect("front exists");
            out.push((d, How::Expired, !ambiguous, at));
        }
        if self.credit > 0 && now_ns.saturating_sub(self.credit_since) > EVICTION_WAIT_NS {
            self.unseen += self.credit;
            self.credit = 0;
        }
    }

    /// Whether some destroyed entry waits to be told (for the counter to move for it).
    pub fn holds(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether telling `batch` needs the `early_drop` counter read now: it holds an entry the
    /// kernel destroyed unassured (an eviction candidate), or something already waits for the
    /// counter or for an event. Assured expiries and deletions by a process are told without
    /// it; the counter is cumulative, so a read skipped loses no move.
    pub fn needs_counter(&self, batch: &[Destroyed]) -> bool {
        self.holds()
            || self.credit > 0
            || batch
                .iter()
                .any(|d| d.portid == 0 && d.entry.status & IPS_ASSURED == 0)
    }

    /// Everything still waiting is told now (at exit).
    pub fn flush(&mut self, out: &mut Vec<(Destroyed, How, bool, u64)>) {
        while let Some((d, at)) = self.pending.pop_front() {
            out.push((d, How::Expired, false, at));
        }
        self.unseen += self.credit;
        self.credit = 0;
    }
}

/// Whether a lost entry is worth remembering: a TCP flow that could still have been alive
/// (an entry in TIME_WAIT or CLOSE went the normal way).
fn worth_remembering(g: &Gone) -> bool {
    const TIME_WAIT: u8 = 7;
    const CLOSE: u8 = 8;
    g.destroyed.entry.orig.proto == conntrack_common::IPPROTO_TCP
        && !matches!(g.destroyed.entry.tcp_state, Some(TIME_WAIT | CLOSE))
}

/// Recently lost entries, by both of their tuples. Bounded by [`LOST_ENTRIES`] and
/// [`LOST_MAX_AGE_NS`].
#[derive(Default)]
pub struct LostEntries {
    by_tuple: HashMap<Tuple, u64>,
    entries: VecDeque<(u64, Gone)>,
    next: u64,
    /// Entries forgotten because the memory was full (not by age).
    pub forgotten: u64,
}

impl LostEntries {
    pub fn remember(&mut self, g: Gone) {
        if !worth_remembering(&g) {
            return;
        }
        if self.entries.len() >= LOST_ENTRIES {
            self.pop();
            self.forgotten += 1;
        }
        let id = self.next;
        self.next += 1;
        let e = &g.destroyed.entry;
        for t in [e.orig, e.reply] {
            self.by_tuple.insert(t, id);
        }
        self.entries.push_back((id, g));
    }

    fn pop(&mut self) {
        if let Some((id, g)) = self.entries.pop_front() {
            let e = &g.destroyed.entry;
            for t in [e.orig, e.reply] {
                if self.by_tuple.get(&t) == Some(&id) {
                    self.by_tuple.remove(&t);
                }
            }
        }
    }

    /// Forgets what is older than [`LOST_MAX_AGE_NS`].
    pub fn expire(&mut self, now_boot_ns: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(_, g)| now_boot_ns.saturating_sub(g.boot_ns) > LOST_MAX_AGE_NS)
        {
            self.pop();
        }
    }

    /// The lost entry a packet with this tuple, seen at `at_ns` (CLOCK_BOOTTIME), belonged to
    /// (either direction), if remembered and gone at most [`LOST_MAX_AGE_NS`] before. The age
    /// is checked here, not only by [`LostEntries::expire`]: that runs when entries go, and the
    /// destroy filter keeps normal closes away, so on a quiet node nothing else would age them.
    pub fn find(&self, t: &Tuple, at_ns: u64) -> Option<&Gone> {
        let id = self.by_tuple.get(t)?;
        let first = self.entries.front()?.0;
        let g = &self.entries.get(id.checked_sub(first)? as usize)?.1;
        (at_ns.saturating_sub(g.boot_ns) <= LOST_MAX_AGE_NS).then_some(g)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use crate::node::netlink::Entry;

    use super::*;

    fn entry(sport: u16, status: u32, state: u8) -> Entry {
        let a = |x: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, x));
        Entry {
            orig: Tuple {
                src: a(1),
                sport,
                dst: a(9),
                dport: 80,
                proto: 6,
            },
            reply: Tuple {
                src: a(2),
                sport: 8080,
                dst: a(1),
                dport: sport,
                proto: 6,
            },
            status,
            tcp_state: Some(state),
        }
    }

    fn destroyed(sport: u16, status: u32, portid: u32) -> Destroyed {
        Destroyed {
            entry: entry(sport, status, 3),
            portid,
            age_ns: None,
        }
    }

    fn run(
        c: &mut Classifier,
        batch: Vec<Destroyed>,
        delta: u64,
        now: u64,
    ) -> Vec<(u16, How, bool)> {
        let mut out = Vec::new();
        c.step(batch, delta, now, &mut out);
        out.into_iter()
            .map(|(d, how, certain, _)| (d.entry.orig.sport, how, certain))
            .collect()
    }

    #[test]
    fn a_deletion_by_a_process_is_certain() {
        let mut c = Classifier::default();
        let out = run(&mut c, vec![destroyed(1, IPS_ASSURED, 4242)], 0, 0);
        assert_eq!(out, vec![(1, How::Deleted, true)]);
    }

    #[test]
    fn unassured_entries_wait_for_the_counter_that_follows_their_event() {
        let mut c = Classifier::default();
        // The events arrive before the kernel increments early_drop for them.
        let b = vec![
            destroyed(1, 0, 0),
            destroyed(2, 0, 0),
            destroyed(3, IPS_ASSURED, 0),
        ];
        assert_eq!(run(&mut c, b, 0, 0), vec![(3, How::Expired, true)]);
        assert_eq!(
            run(&mut c, vec![], 2, 1_000),
            vec![(1, How::Evicted, true), (2, How::Evicted, true)]
        );
        assert_eq!(c.unseen, 0);
    }

    #[test]
    fn an_unassured_entry_the_counter_never_moves_for_expired() {
        let mut c = Classifier::default();
        assert!(run(&mut c, vec![destroyed(1, 0, 0)], 0, 0).is_empty());
        assert!(run(&mut c, vec![], 0, EVICTION_WAIT_NS).is_empty());
        assert_eq!(
            run(&mut c, vec![], 0, EVICTION_WAIT_NS + 1),
            vec![(1, How::Expired, true)]
        );
    }

    #[test]
    fn counter_moves_without_events_are_unseen_evictions() {
        let mut c = Classifier::default();
        assert!(run(&mut c, vec![], 3, 0).is_empty());
        // An event that arrives a moment after its counter move is still matched.
        assert_eq!(
            run(&mut c, vec![destroyed(1, 0, 0)], 0, 10),
            vec![(1, How::Evicted, true)]
        );
        run(&mut c, vec![], 0, EVICTION_WAIT_NS + 1);
        assert_eq!(c.unseen, 2);
    }

    #[test]
    fn only_eviction_candidates_and_waiting_ones_need_the_counter() {
        let mut c = Classifier::default();
        // A churn of closed flows (assured expiries, deletions by a process): no read.
        let quiet = [destroyed(1, IPS_ASSURED, 0), destroyed(2, 0, 4242)];
        assert!(!c.needs_counter(&quiet));
        assert!(!c.needs_counter(&[]));
        let candidate = [destroyed(3, 0, 0)];
        assert!(c.needs_counter(&candidate));
        run(&mut c, candidate.to_vec(), 0, 0);
        // It waits for the counter: every batch reads it until it is told.
        assert!(c.needs_counter(&[]));
        run(&mut c, vec![], 1, 10);
        assert!(!c.needs_counter(&[]));
        // A counter move with no event yet waits for its event.
        run(&mut c, vec![], 1, 20);
        assert!(c.needs_counter(&[]));
    }

    #[test]
    fn more_candidates_than_evictions_are_not_certain() {
        let mut c = Classifier::default();
        let out = run(&mut c, vec![destroyed(1, 0, 0), destroyed(2, 0, 0)], 1, 0);
        assert_eq!(out, vec![(1, How::Evicted, false)]);
    }

    fn gone(sport: u16, boot_ns: u64) -> Gone {
        Gone {
            destroyed: destroyed(sport, IPS_ASSURED, 0),
            how: How::Expired,
            certain: true,
            boot_ns,
            entries: None,
        }
    }

    #[test]
    fn a_lost_entry_is_found_by_either_tuple_and_forgotten_with_age() {
        let mut l = LostEntries::default();
        l.remember(gone(1000, 5));
        let e = entry(1000, 0, 3);
        assert!(l.find(&e.reply, 5).is_some());
        assert!(l.find(&e.orig, 6).is_some());
        assert!(l.find(&entry(1001, 0, 3).reply, 6).is_none());
        // Too old for a packet seen now, even before anything expired it ...
        assert!(l.find(&e.reply, 5 + LOST_MAX_AGE_NS).is_some());
        assert!(l.find(&e.reply, 5 + LOST_MAX_AGE_NS + 1).is_none());
        // ... and forgotten once something does.
        l.expire(5 + LOST_MAX_AGE_NS + 1);
        assert!(l.find(&e.reply, 5).is_none());
        assert!(l.is_empty());
    }

    #[test]
    fn the_memory_is_bounded_and_says_what_it_forgot() {
        let mut l = LostEntries::default();
        for p in 0..(LOST_ENTRIES as u16 + 10) {
            l.remember(gone(p, 1));
        }
        assert_eq!(l.len(), LOST_ENTRIES);
        assert_eq!(l.forgotten, 10);
        assert!(l.find(&entry(0, 0, 3).reply, 1).is_none());
        assert!(l
            .find(&entry(LOST_ENTRIES as u16 + 9, 0, 3).reply, 1)
            .is_some());
    }

    #[test]
    fn a_flow_that_closed_normally_is_not_remembered() {
        let mut l = LostEntries::default();
        let mut g = gone(7, 1);
        g.destroyed.entry.tcp_state = Some(7);
        l.remember(g);
        assert!(l.is_empty());
    }
}
