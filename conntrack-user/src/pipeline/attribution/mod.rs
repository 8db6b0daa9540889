//! The correlation core: turns kernel records into reports. It joins each INVALID verdict with
//! the reason conntrack logged for it, its fate (a later drop), its conntrack entry (from the
//! kernel's copy, or a ctnetlink lookup answered by the enrichment thread) and the resets it
//! caused (matched exactly in the kernel by tuple, seq and ack), and keeps the per-flow reset
//! summary. Pure code: no I/O (lookups go out as [`Request`]s, answers come back in), so every
//! rule here is unit-tested on its own.
//!
//! Every record that arrives becomes a report, once: a verdict waits at most [`FATE_WAIT`] for
//! its fate and its lookup, then goes out with what is known. Every map is bounded.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use conntrack_common::{Hook, Kind, Reason, Reset};

pub use crate::output::report::StrayTally;
use crate::{
    kernel::btf::CtLayout,
    node::netlink::Tuple,
    node::services::ServiceLookup,
    output::report::{
        endpoint_of, AttributionReport, ConntrackReport, Fate, FlowReport, InvalidReport, Report,
        ResetReport, Time, Trigger,
    },
    pipeline::enrich::{Answer, Request},
    pipeline::events::{addrs, tcp_flags, Event},
    pipeline::lost::{
        how_name, EvictedReport, FlowEntry, Gone, How, LostEntries, LostReport, MidstreamReport,
        TableFullReport,
    },
};

/// How long a verdict waits for a drop of the same packet (and for its ctnetlink lookup) before
/// it is reported as `passed`. The drop follows within microseconds in the same softirq; this
/// only covers the reader's lag.
pub const FATE_WAIT: Duration = Duration::from_millis(50);

/// How long a `midstream` record waits at most for the destroy event of the entry its flow
/// lost, when the destroy watcher runs. It normally goes as soon as the watcher has handed over
/// every event up to the record's time (`destroy_watermark`); this bound covers a stalled
/// watcher. The kernel sends the event of an entry that expired in this very lookup before it
/// creates the new one (`nf_ct_gc_expired()` in `__nf_conntrack_find_get()`,
/// net/netfilter/nf_conntrack_core.c), but the watcher is another thread reading another
/// socket: on a loaded (or emulated) CPU it can lag far behind the ring buffer.
pub const MIDSTREAM_WAIT: Duration = Duration::from_secs(1);

/// Verdicts remembered after they were reported, to describe a reset that arrives later.
pub const RECENT: usize = 4096;
/// Verdicts waiting for their fate at once (at 300k verdicts/s for 50 ms: 15k). Beyond this the
/// oldest goes out at once, with what is known.
pub const MAX_PENDING: usize = 32768;
/// Reasons waiting for their verdict, and resets waiting for a lookup.
pub const MAX_WAITING: usize = 32768;
/// Flows in the reset summary; attributions of further flows are summed in one
/// `(other flows)` row.
pub const MAX_FLOWS: usize = 10_000;

/// A verdict is named by its `sk_buff` address and its time: addresses are reused, the pair
/// is not.
type VerdictId = (u64, u64);

/// What the correlator knows about the running kernel and the attach plan.
pub struct Context {
    /// Nanoseconds to add to CLOCK_BOOTTIME to get the time since the epoch.
    pub boot_to_epoch_ns: i128,
    pub rst_reasons: HashMap<u32, String>,
    pub drop_reasons: HashMap<u32, String>,
    pub netfilter_drop: Option<u32>,
    /// Whether `kfree_skb` is watched: without it the fate is `unknown`.
    pub fate_known: bool,
    /// Why the INVALID reason is not known on this kernel (no kprobes), or `None` when the
    /// reason kprobes are attached.
    pub reason_unknown: Option<String>,
    /// How to decode conntrack entries in reason records.
    pub ct_layout: Option<CtLayout>,
    /// Whether INVALID verdicts are watched: a reason without a verdict is then an IGNORE.
    pub verdicts: bool,
    /// ct-trace's own netns: interface names resolve only there.
    pub own_netns: u32,
    /// Whether entries can be looked up over ctnetlink (the enrichment thread runs).
    pub lookups: bool,
    /// Interface names of ct-trace's namespace (the caller caches them).
    pub ifname: Box<dyn FnMut(u32) -> Option<String>>,
}

/// The reports and lookups one call produced.
#[derive(Default)]
pub struct Output {
    pub reports: Vec<Report>,
    pub lookups: Vec<Request>,
}

struct Pending {
    report: InvalidReport,
    deadline: Instant,
    /// A drop came, or a reset proved that the packet went on: nothing more to wait for.
    fate_done: bool,
    /// The token of an unanswered lookup.
    lookup: Option<u64>,
    /// Resets this packet caused, reported after it.
    resets: Vec<(Reset, ResetReport)>,
}

/// A reset caused by an INVALID packet whose entry is not known yet (its verdict was not shown,
/// or went out without its lookup), waiting for an urgent lookup of the entry behind it.
struct Held {
    reset: Reset,
    report: ResetReport,
    reason: String,
    fate: Fate,
    deadline: Instant,
}

/// A reason record waiting for the verdict on the same packet.
struct PendingReason {
    reason: Box<Reason>,
    deadline: Instant,
}

/// What a reset arriving after its verdict was reported needs of it.
struct Recent {
    conntrack: Option<ConntrackReport>,
    tracked: Option<bool>,
    reason: String,
    fate: Fate,
}

/// What a reason record says, ready to go into a report.
struct ReasonInfo {
    text: String,
    missed_by: Option<u32>,
    conntrack: Option<ConntrackReport>,
    /// Whether conntrack refused the packet with a confirmed entry of its flow in hand (`None`:
    /// it refused it before looking one up).
    tracked: Option<bool>,
}

/// A verdict within this long after a reason for the same `sk_buff` is about the same packet
/// (both happen inside one `nf_conntrack_in()` call).
const REASON_MAX_AGE_NS: u64 = 100_000_000;

/// One flow of the reset summary: client -> service -> backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub resets: u64,
    pub reasons: Vec<String>,
    pub first: Time,
    pub last: Time,
}

pub struct Correlator {
    ctx: Context,
    pending: HashMap<VerdictId, Pending>,
    order: VecDeque<VerdictId>,
    recent: HashMap<VerdictId, Recent>,
    recent_order: VecDeque<VerdictId>,
    reasons: HashMap<u64, PendingReason>,
    reason_order: VecDeque<u64>,
    /// Lookups in flight: to a pending verdict, or to a held reset (in `held`).
    tokens: HashMap<u64, VerdictId>,
    held: HashMap<u64, Held>,
    held_order: VecDeque<u64>,
    next_token: u64,
    /// The time of the call being handled.
    now: Instant,
    /// Reasons on packets that were neither INVALID nor TCP (not reported).
    pub reasons_unmatched: u64,
    /// Reports that went out without their lookup's answer.
    pub enrichment_skipped: u64,
    /// Resets of packets of no tracked flow (see [`StrayTally`]).
    pub strays: StrayTally,
    pub flows: HashMap<(String, String, String), FlowStats>,
    /// Entries seen going (ctnetlink destroy events), for `midstream` and `entry_lost`.
    pub lost: LostEntries,
    /// `midstream` records waiting for the destroy event of the entry their flow lost (until
    /// the watcher is past them, at most [`MIDSTREAM_WAIT`]), and the resets they caused
    /// meanwhile.
    mids: HashMap<VerdictId, PendingMid>,
    mid_order: VecDeque<VerdictId>,
    /// CLOCK_BOOTTIME up to which the destroy watcher has handed over every event (the caller
    /// sets it before it passes on what the watcher took); None without a watcher, when a
    /// `midstream` record waits [`FATE_WAIT`] only.
    pub destroy_watermark: Option<u64>,
    /// What reported `midstream` records found, for resets that arrive later.
    mid_recent: HashMap<VerdictId, LostReport>,
    mid_recent_order: VecDeque<VerdictId>,
    /// `nf_conntrack_max` as last read (the caller refreshes it).
    pub ct_max: Option<u32>,
    /// The namespace's entry count as the caller read it when it took this batch of events,
    /// for events whose program could not read it: said so with `entries_source: "ct-trace"`.
    pub entries_now: Option<u32>,
    /// `evicted` events that were inferred, not certain (how many there were in all is the
    /// output stage's count of the kind).
    pub evicted_inferred: u64,
    /// The Service names of kube-proxy's rules (kept current by their own thread; a lookup is
    /// a hash lookup in a snapshot, no I/O).
    pub service_names: Option<ServiceLookup>,
}

struct PendingMid {
    report: MidstreamReport,
    tuple: Tuple,
    /// The packet's time (CLOCK_BOOTTIME): once the watcher is past it, no destroy event that
    /// could name the lost entry is still to come.
    ts_ns: u64,
    deadline: Instant,
    resets: Vec<(Reset, ResetReport)>,
}

/// The reset the kernel sends for a packet no socket owns (tcp_v4_send_reset(),
/// net/ipv4/tcp_ipv4.c): seq = the packet's ack if it had ACK set, otherwise an ACK of
/// everything it carried.
pub fn reset_for(flags_in: u8, seq: u32, ack: u32, len: u16) -> (u8, u32, u32) {
    use conntrack_common::tcp_flags::{ACK, FIN, RST, SYN};
    if flags_in & ACK != 0 {
        (RST, ack, 0)
    } else {
        let syn_fin = u32::from(flags_in & SYN != 0) + u32::from(flags_in & FIN != 0);
        (
            RST | ACK,
            0,
            seq.wrapping_add(syn_fin).wrapping_add(u32::from(len)),
        )
    }
}

/// Pops ids off the front of an order queue while `due` says so, skipping ids no longer in
/// `map` (removed early); returns the ones to finish.
fn due<K: Copy + Eq + std::hash::Hash, V>(
    order: &mut VecDeque<K>,
    map: &HashMap<K, V>,
    mut ready: impl FnMut(&V) -> bool,
) -> Vec<K> {
    let mut out = Vec::new();
    while let Some(k) = order.front().copied() {
        match map.get(&k) {
            Some(v) if !ready(v) => break,
            Some(_) => out.push(k),
            None => {}
        }
        order.pop_front();
    }
    out
}

impl Correlator {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            pending: HashMap::new(),
            order: VecDeque::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            reasons: HashMap::new(),
            reason_order: VecDeque::new(),
            tokens: HashMap::new(),
            held: HashMap::new(),
            held_order: VecDeque::new(),
            next_token: 1,
            now: Instant::now(),
            reasons_unmatched: 0,
            enrichment_skipped: 0,
            strays: StrayTally::default(),
            flows: HashMap::new(),
            lost: LostEntries::default(),
            mids: HashMap::new(),
            mid_order: VecDeque::new(),
            destroy_watermark: None,
            mid_recent: HashMap::new(),
            mid_recent_order: VecDeque::new(),
            ct_max: None,
            entries_now: None,
            evicted_inferred: 0,
            service_names: None,
        }
    }

    /// The name of a flow's Service, by its Service address, else its backend.
    pub(super) fn service_name(
        &self,
        service: Option<SocketAddr>,
        backend: Option<SocketAddr>,
        proto: u8,
    ) -> Option<String> {
        self.service_names.as_ref()?.name(service, backend, proto)
    }

    /// The name of a packet's Service when its direction is not known: its destination as a
    /// Service address, or either end as a backend.
    pub(super) fn packet_service_name(
        &self,
        src: IpAddr,
        sport: Option<u16>,
        dst: IpAddr,
        dport: Option<u16>,
        proto: u8,
    ) -> Option<String> {
        let (sport, dport) = (sport?, dport?);
        self.service_names.as_ref()?.name_of_packet(
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
            proto,
        )
    }

    /// The name of the Service of a conntrack entry (original destination, reply source), or
    /// of the packet itself without one.
    pub(super) fn invalid_service_name(&self, r: &InvalidReport) -> Option<String> {
        match &r.conntrack {
            Some(c) => self.service_name(
                Some(SocketAddr::new(c.orig_dst, c.orig_dport)),
                Some(SocketAddr::new(c.reply_src, c.reply_sport)),
                r.proto,
            ),
            None => self.packet_service_name(r.src, r.sport, r.dst, r.dport, r.proto),
        }
    }

    /// The name of the Service of a lost entry.
    pub(super) fn entry_service_name(&self, e: &FlowEntry) -> Option<String> {
        self.service_name(Some(e.orig_dst), Some(e.reply_src), e.proto)
    }

    pub fn time(&self, boot_ns: u64) -> Time {
        Time((boot_ns as i128 + self.ctx.boot_to_epoch_ns).max(0) as u64)
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Handles one event; the reports it completes are appended to `out`, in order.
    pub fn event(&mut self, ev: Event, now: Instant, out: &mut Output) {
        self.now = now;
        match ev {
            Event::Invalid(v) => self.invalid(v, now, out),
            Event::Reason(r) => {
                let skb = r.skb;
                if self.reasons.len() >= MAX_WAITING {
                    self.tick_reasons(now, true, Some(1), out);
                }
                let pending = PendingReason {
                    reason: r,
                    deadline: now + FATE_WAIT,
                };
                // The first reason logged for a packet is the one that decided.
                if let std::collections::hash_map::Entry::Vacant(e) = self.reasons.entry(skb) {
                    e.insert(pending);
                    self.reason_order.push_back(skb);
                }
            }
            Event::Drop(d) => self.drop(d, out),
            Event::Reset(kind, r) => self.reset(kind, r, out),
            Event::Pressure(Kind::TableFull, p) => self.table_full(&p, out),
            Event::Pressure(_, p) => self.midstream(&p, now, out),
        }
    }

    /// The answer to a lookup (or `None` for a request the enrichment queue refused).
    pub fn answer(&mut self, token: u64, entry: Option<Option<ConntrackReport>>, out: &mut Output) {
        if let Some(h) = self.held.remove(&token) {
            let skipped = entry.is_none();
            self.release_held(h, entry.flatten(), skipped, out);
            return;
        }
        let Some(id) = self.tokens.remove(&token) else {
            return;
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        p.lookup = None;
        match entry {
            Some(e) => {
                p.report.tracked = Some(e.is_some());
                p.report.conntrack = e;
            }
            None => {
                p.report.enrichment = Some("skipped");
                self.enrichment_skipped += 1;
            }
        }
        if p.fate_done {
            self.finish(id, out);
        }
    }

    /// Applies the answers of the enrichment thread.
    pub fn answers(&mut self, answers: Vec<Answer>, out: &mut Output) {
        for a in answers {
            self.answer(a.token, Some(a.entry), out);
        }
    }

    /// Reports what waited long enough (verdicts as `passed`, reasons without a verdict as
    /// `ignored`, resets without their lookup), or everything with `flush`.
    pub fn tick(&mut self, now: Instant, flush: bool, out: &mut Output) {
        self.now = now;
        self.tick_reasons(now, flush, None, out);
        for id in due(&mut self.order, &self.pending, |p| {
            flush || p.deadline <= now
        }) {
            self.expire(id, out);
        }
        for t in due(&mut self.held_order, &self.held, |h| {
            flush || h.deadline <= now
        }) {
            if let Some(h) = self.held.remove(&t) {
                self.enrichment_skipped += 1;
                self.release_held(h, None, true, out);
            }
        }
        let watermark = self.destroy_watermark;
        for id in due(&mut self.mid_order, &self.mids, |m| {
            flush || m.deadline <= now || watermark.is_some_and(|w| w >= m.ts_ns)
        }) {
            self.finish_mid(id, LostReport::unknown(), out);
        }
    }

    /// The time of the oldest report still held here (a verdict waiting for its fate or
    /// lookup, a reason for its verdict, a reset for its lookup, a `midstream` record for its
    /// lost entry): no report this correlator makes later is older, up to the disorder of
    /// arrival (see `order`).
    pub fn held_since(&mut self) -> Option<Time> {
        fn front<K: Copy + Eq + std::hash::Hash, V>(
            order: &mut VecDeque<K>,
            map: &HashMap<K, V>,
        ) -> Option<K> {
            while let Some(k) = order.front() {
                if map.contains_key(k) {
                    return Some(*k);
                }
                order.pop_front();
            }
            None
        }
        let verdict = front(&mut self.order, &self.pending).map(|id| self.pending[&id].report.time);
        let held = front(&mut self.held_order, &self.held).map(|t| self.held[&t].report.time);
        let mid = front(&mut self.mid_order, &self.mids).map(|id| self.mids[&id].report.time);
        let reason = front(&mut self.reason_order, &self.reasons)
            .map(|skb| self.time(self.reasons[&skb].reason.header.ts_ns));
        [verdict, held, mid, reason].into_iter().flatten().min()
    }

    fn tick_reasons(&mut self, now: Instant, flush: bool, limit: Option<usize>, out: &mut Output) {
        let mut n = 0;
        while let Some(skb) = self.reason_order.front().copied() {
            if limit.is_some_and(|l| n >= l) {
                break;
            }
            match self.reasons.get(&skb) {
                Some(p) if !flush && p.deadline > now => break,
                Some(_) => {
                    let p = self.reasons.remove(&skb).expect("present");
                    self.ignored(&p.reason, out);
                    n += 1;
                }
                None => {}
            }
            self.reason_order.pop_front();
        }
    }
}

mod midstream;
mod resets;
mod verdicts;

#[cfg(test)]
mod tests;
