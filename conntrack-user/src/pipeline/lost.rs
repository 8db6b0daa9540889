//! Lost conntrack entries: how an entry went (evicted by `early_drop`, expired, deleted), the
//! reports of the table-pressure kinds (`table_full`, `evicted`, `midstream`), and the bounded
//! memory of recently lost entries that names the Service and the backend of a flow picked up
//! mid-stream - and of the reset that follows. Pure code, unit-tested; the netlink thread that
//! feeds it is in `destroy`.
//!
//! Destroy events do not say why an entry went. The deleting process's netlink port does
//! (`nlmsg_pid`, 0 when the kernel destroyed it); an entry the kernel destroyed was evicted when
//! the namespace's `early_drop` counter moved for it, else it expired. The counter is read after
//! each batch of events, so within a batch that mixes both the split is inferred (said so in
//! `certain: false`), never guessed silently.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    netlink::{tcp_state_name, Destroyed, Entry, Tuple, IPS_ASSURED},
    report::{endpoint, endpoint_of},
};

/// Lost entries remembered for `midstream` and `entry_lost` attributions: at most this many ...
pub const LOST_ENTRIES: usize = 4096;
/// ... and for at most this long (a flow picked up mid-stream shows itself with its next
/// packet: an idle keepalive flow can take minutes).
pub const LOST_MAX_AGE_NS: u64 = 600 * 1_000_000_000;

/// How an entry went.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// Removed by `early_drop` to make room in a full table.
    Evicted,
    /// Its timeout ran out (idle longer than `nf_conntrack_tcp_timeout_*`).
    Expired,
    /// Deleted by a process over ctnetlink (`conntrack -D`, a CNI plugin, kube-proxy).
    Deleted,
    /// ct-trace did not see it go (it went before ct-trace started, or before the kernel
    /// sent events for it).
    Unknown,
}

/// A conntrack entry: both tuples, so the Service (original destination) and the backend
/// (reply source) are named.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowEntry {
    pub proto: u8,
    pub orig_src: String,
    pub orig_dst: String,
    pub reply_src: String,
    pub reply_dst: String,
    pub tcp_state: Option<&'static str>,
    pub assured: bool,
}

impl FlowEntry {
    pub fn of(e: &Entry) -> Self {
        Self {
            proto: e.orig.proto,
            orig_src: endpoint(e.orig.src, e.orig.sport),
            orig_dst: endpoint(e.orig.dst, e.orig.dport),
            reply_src: endpoint(e.reply.src, e.reply.sport),
            reply_dst: endpoint(e.reply.dst, e.reply.dport),
            tcp_state: e.tcp_state.map(tcp_state_name),
            assured: e.status & IPS_ASSURED != 0,
        }
    }
}

/// An entry that went, as `midstream` and `attribution` carry it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LostReport {
    pub how: How,
    /// False when `how` was inferred (see the module doc) or is `unknown`.
    pub certain: bool,
    /// When ct-trace saw it go (null when unknown).
    pub time: Option<String>,
    /// The entry as it was (null when unknown).
    pub entry: Option<FlowEntry>,
}

impl LostReport {
    pub fn unknown() -> Self {
        Self {
            how: How::Unknown,
            certain: false,
            time: None,
            entry: None,
        }
    }
}

/// `table_full`: conntrack had no room for this packet's new entry, and netfilter dropped it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TableFullReport {
    pub time: String,
    pub netns: u32,
    /// Entries in the namespace's table: read by the program at the drop (`entries_source:
    /// "kernel"`), or by ct-trace within 20 ms of it (`"ct-trace"`, Linux 5.19+).
    pub entries: Option<u32>,
    pub entries_source: &'static str,
    pub max: Option<u32>,
    pub proto: u8,
    /// The refused flow (its original tuple: the client and the Service it asked for).
    pub src: IpAddr,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    pub flags: Option<String>,
}

/// `evicted`: an entry removed by `early_drop` to make room.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EvictedReport {
    pub time: String,
    pub netns: u32,
    /// Entries / max of the table when ct-trace read them, right after the eviction.
    pub entries: Option<u64>,
    pub max: Option<u32>,
    pub entry: FlowEntry,
    /// Seconds the entry lived (only with `nf_conntrack_timestamp=1`).
    pub age_s: Option<f64>,
    /// False when the eviction is inferred from the kernel's counter (see README).
    pub certain: bool,
}

/// `midstream`: a TCP packet other than a SYN created a new entry: its flow's entry was lost, and
/// with it the Service's NAT. The new entry's original tuple is the packet's.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MidstreamReport {
    pub time: String,
    pub netns: u32,
    pub hook: &'static str,
    pub entries: Option<u32>,
    pub entries_source: &'static str,
    pub max: Option<u32>,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub flags: String,
    pub seq: u32,
    pub ack: u32,
    pub len: u16,
    /// The entry the flow had before, and how it went.
    pub lost: LostReport,
}

/// One entry that went, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    pub destroyed: Destroyed,
    pub how: How,
    pub certain: bool,
    /// CLOCK_BOOTTIME of the batch it came in, nanoseconds.
    pub boot_ns: u64,
    /// The namespace's entry count after the batch.
    pub entries: Option<u64>,
}

/// Classifies a batch of destroy events given how far the namespace's `early_drop` counter
/// moved over it. Deleted by a process: certain. Destroyed by the kernel: `early_drop` evicts
/// only entries that are not ASSURED (`early_drop_list()`, nf_conntrack_core.c); when the counter
/// moved by exactly the number of such entries in the batch they were all evicted, when it did
/// not move they all expired, otherwise the first `delta` are taken as evicted, not certain.
pub fn classify(batch: &[Destroyed], early_drop_delta: u64) -> Vec<(How, bool)> {
    let candidates = batch
        .iter()
        .filter(|d| d.portid == 0 && d.entry.status & IPS_ASSURED == 0)
        .count() as u64;
    let exact = early_drop_delta == candidates || early_drop_delta == 0;
    let mut evictions = early_drop_delta;
    batch
        .iter()
        .map(|d| {
            if d.portid != 0 {
                (How::Deleted, true)
            } else if d.entry.status & IPS_ASSURED == 0 && evictions > 0 {
                evictions -= 1;
                (How::Evicted, exact)
            } else {
                (How::Expired, exact || d.entry.status & IPS_ASSURED != 0)
            }
        })
        .collect()
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

    /// The lost entry a packet with this tuple belonged to (either direction), if remembered.
    pub fn find(&self, t: &Tuple) -> Option<&Gone> {
        let id = self.by_tuple.get(t)?;
        let first = self.entries.front()?.0;
        let g = &self.entries.get(id.checked_sub(first)? as usize)?.1;
        Some(g)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

pub fn how_name(h: How) -> &'static str {
    match h {
        How::Evicted => "evicted",
        How::Expired => "expired",
        How::Deleted => "deleted",
        How::Unknown => "unknown",
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), |v| v.to_string())
}

pub fn text_table_full(s: &mut String, r: &TableFullReport) {
    let _ = write!(
        s,
        "{} {:<12} netns={:<10} {:>22} > {:<22} {:<8} entries={}/{}",
        r.time,
        "table_full",
        r.netns,
        endpoint_of(Some(r.src), r.sport),
        endpoint_of(Some(r.dst), r.dport),
        opt(&r.flags),
        opt(&r.entries),
        opt(&r.max),
    );
}

pub fn text_evicted(s: &mut String, r: &EvictedReport) {
    let e = &r.entry;
    let _ = write!(
        s,
        "{} {:<12} netns={:<10} {:>22} > {:<22} backend={} state={}{} entries={}/{}{}",
        r.time,
        "evicted",
        r.netns,
        e.orig_src,
        e.orig_dst,
        e.reply_src,
        e.tcp_state.unwrap_or("-"),
        if e.assured { ",ASSURED" } else { "" },
        opt(&r.entries),
        opt(&r.max),
        if r.certain { "" } else { " (inferred)" },
    );
}

pub fn text_midstream(s: &mut String, r: &MidstreamReport) {
    let _ = write!(
        s,
        "{} {:<12} netns={:<10} {:>22} > {:<22} {:<8} seq={:<10} ack={:<10} len={} hook={} lost={}",
        r.time,
        "midstream",
        r.netns,
        endpoint(r.src, r.sport),
        endpoint(r.dst, r.dport),
        r.flags,
        r.seq,
        r.ack,
        r.len,
        r.hook,
        how_name(r.lost.how),
    );
    if let Some(e) = &r.lost.entry {
        let _ = write!(s, " was={}>{}>{}", e.orig_src, e.orig_dst, e.reply_src);
    }
    if let Some(t) = &r.lost.time {
        let _ = write!(s, " at={t}");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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

    #[test]
    fn a_deletion_by_a_process_is_certain() {
        let c = classify(&[destroyed(1, IPS_ASSURED, 4242)], 0);
        assert_eq!(c, vec![(How::Deleted, true)]);
    }

    #[test]
    fn unassured_entries_are_evicted_when_the_counter_moved_by_as_many() {
        let b = [
            destroyed(1, 0, 0),
            destroyed(2, 0, 0),
            destroyed(3, IPS_ASSURED, 0),
        ];
        assert_eq!(
            classify(&b, 2),
            vec![
                (How::Evicted, true),
                (How::Evicted, true),
                (How::Expired, true)
            ]
        );
        assert_eq!(
            classify(&b, 0),
            vec![
                (How::Expired, true),
                (How::Expired, true),
                (How::Expired, true)
            ]
        );
    }

    #[test]
    fn a_mixed_batch_is_inferred_not_certain() {
        let b = [destroyed(1, 0, 0), destroyed(2, 0, 0)];
        assert_eq!(
            classify(&b, 1),
            vec![(How::Evicted, false), (How::Expired, false)]
        );
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
        assert!(l.find(&e.reply).is_some());
        assert!(l.find(&e.orig).is_some());
        assert!(l.find(&entry(1001, 0, 3).reply).is_none());
        l.expire(5 + LOST_MAX_AGE_NS + 1);
        assert!(l.find(&e.reply).is_none());
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
        assert!(l.find(&entry(0, 0, 3).reply).is_none());
        assert!(l
            .find(&entry(LOST_ENTRIES as u16 + 9, 0, 3).reply)
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
