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
    time::{Duration, Instant},
};

use conntrack_common::{
    flags, Cause, Drop, Hook, Kind, Pressure, Reason, Reset, Verdict, IPPROTO_TCP,
};

use crate::{
    btf::CtLayout,
    enrich::{Answer, Request},
    events::{addrs, tcp_flags, Event},
    lost::{
        how_name, EvictedReport, FlowEntry, Gone, How, LostEntries, LostReport, MidstreamReport,
        TableFullReport,
    },
    netlink::Tuple,
    report::{
        endpoint, endpoint_of, rfc3339, AttributionReport, ConntrackReport, Direction, Fate,
        FlowReport, InvalidReport, Report, ResetReport, Trigger,
    },
};

/// How long a verdict waits for a drop of the same packet (and for its ctnetlink lookup) before
/// it is reported as `passed`. The drop follows within microseconds in the same softirq; this
/// only covers the reader's lag.
pub const FATE_WAIT: Duration = Duration::from_millis(50);

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
    reason: String,
    fate: Fate,
}

/// What a reason record says, ready to go into a report.
struct ReasonInfo {
    text: String,
    missed_by: Option<u32>,
    conntrack: Option<ConntrackReport>,
}

/// A verdict within this long after a reason for the same `sk_buff` is about the same packet
/// (both happen inside one `nf_conntrack_in()` call).
const REASON_MAX_AGE_NS: u64 = 100_000_000;

/// One flow of the reset summary: client -> service -> backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub resets: u64,
    pub reasons: Vec<String>,
    pub first: String,
    pub last: String,
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
    pub flows: HashMap<(String, String, String), FlowStats>,
    /// Entries seen going (ctnetlink destroy events), for `midstream` and `entry_lost`.
    pub lost: LostEntries,
    /// `midstream` records waiting (at most [`FATE_WAIT`]) for the destroy event of the entry
    /// their flow lost, and the resets they caused meanwhile.
    mids: HashMap<VerdictId, PendingMid>,
    mid_order: VecDeque<VerdictId>,
    /// What reported `midstream` records found, for resets that arrive later.
    mid_recent: HashMap<VerdictId, LostReport>,
    mid_recent_order: VecDeque<VerdictId>,
    /// `nf_conntrack_max` as last read (the caller refreshes it).
    pub ct_max: Option<u32>,
    /// The namespace's entry count as last read by the caller (at most 20 ms old), for events
    /// whose program could not read it: said so with `entries_source: "ct-trace"`.
    pub entries_now: Option<u32>,
    /// `evicted` events: shown, and of those inferred (not certain).
    pub evicted: u64,
    pub evicted_inferred: u64,
}

struct PendingMid {
    report: MidstreamReport,
    tuple: Tuple,
    deadline: Instant,
    resets: Vec<(Reset, ResetReport)>,
}

fn hook_name(h: u8) -> &'static str {
    match Hook::try_from(h) {
        Ok(Hook::PreRouting) => "prerouting",
        Ok(Hook::LocalIn) => "input",
        Ok(Hook::Forward) => "forward",
        Ok(Hook::LocalOut) => "output",
        Ok(Hook::PostRouting) => "postrouting",
        Err(_) => "unknown",
    }
}

/// The reset the kernel sends for a packet no socket owns (tcp_v4_send_reset(),
/// net/ipv4/tcp_ipv4.c): seq = the packet's ack if it had ACK set, otherwise an ACK of
/// everything it carried.
pub fn reset_for(flags_in: u8, seq: u32, ack: u32, len: u16) -> (u8, u32, u32) {
    const ACK: u8 = 0x10;
    const RST: u8 = 0x04;
    if flags_in & ACK != 0 {
        (RST, ack, 0)
    } else {
        let syn_fin = u32::from(flags_in & 0x02 != 0) + u32::from(flags_in & 0x01 != 0);
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
            flows: HashMap::new(),
            lost: LostEntries::default(),
            mids: HashMap::new(),
            mid_order: VecDeque::new(),
            mid_recent: HashMap::new(),
            mid_recent_order: VecDeque::new(),
            ct_max: None,
            entries_now: None,
            evicted: 0,
            evicted_inferred: 0,
        }
    }

    pub fn time(&self, boot_ns: u64) -> String {
        rfc3339((boot_ns as i128 + self.ctx.boot_to_epoch_ns).max(0) as u64)
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
            Some(e) => p.report.conntrack = e,
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
        for id in due(&mut self.mid_order, &self.mids, |m| {
            flush || m.deadline <= now
        }) {
            self.finish_mid(id, LostReport::unknown(), out);
        }
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

    /// A verdict whose wait is over goes out with what is known.
    fn expire(&mut self, id: VerdictId, out: &mut Output) {
        if let Some(p) = self.pending.get_mut(&id) {
            if let Some(t) = p.lookup.take() {
                self.tokens.remove(&t);
                p.report.enrichment = Some("skipped");
                self.enrichment_skipped += 1;
            }
        }
        self.finish(id, out);
    }

    fn finish(&mut self, id: VerdictId, out: &mut Output) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if self.recent_order.len() >= RECENT {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        let recent = Recent {
            conntrack: p.report.conntrack.clone(),
            reason: p.report.reason.clone(),
            fate: p.report.fate,
        };
        out.reports.push(Report::Invalid(p.report));
        for (raw, rep) in p.resets {
            let (ct, reason) = (recent.conntrack.clone(), recent.reason.clone());
            self.attribution(raw, rep, ct, reason, recent.fate, out);
        }
        self.recent.insert(id, recent);
        self.recent_order.push_back(id);
    }

    /// Reports a reset and its attribution; when the entry behind it is not known, first
    /// looks it up (urgently: attributions come before verdicts) and holds both until the
    /// answer, or [`FATE_WAIT`].
    fn attribution(
        &mut self,
        raw: Reset,
        rep: ResetReport,
        ct: Option<ConntrackReport>,
        reason: String,
        fate: Fate,
        out: &mut Output,
    ) {
        if ct.is_some() || !self.ctx.lookups || raw.packet.family == 0 {
            let a = self.attribute(&raw, &rep, ct.as_ref(), reason, fate, None, None);
            out.reports.push(Report::RstSent(rep));
            out.reports.push(Report::Attribution(a));
            return;
        }
        let token = self.token();
        let (src, dst) = addrs(&raw.packet);
        out.lookups.push(Request {
            token,
            tuple: Tuple {
                src,
                sport: raw.packet.sport,
                dst,
                dport: raw.packet.dport,
                proto: IPPROTO_TCP,
            },
            urgent: true,
        });
        if self.held.len() >= MAX_WAITING {
            if let Some(t) = self.held_order.pop_front() {
                if let Some(h) = self.held.remove(&t) {
                    self.enrichment_skipped += 1;
                    self.release_held(h, None, true, out);
                }
            }
        }
        self.held.insert(
            token,
            Held {
                reset: raw,
                report: rep,
                reason,
                fate,
                deadline: self.now + FATE_WAIT,
            },
        );
        self.held_order.push_back(token);
    }

    fn reason_info(&self, r: &Reason) -> ReasonInfo {
        let fmt = crate::reason::format_string(r);
        let state = self
            .ctx
            .ct_layout
            .as_ref()
            .and_then(|l| crate::reason::tcp_state(r, l));
        ReasonInfo {
            text: crate::reason::render(&fmt, r.args, state),
            missed_by: crate::reason::missed_by(&fmt, r.args[0], r.packet.seq, r.packet.ack),
            conntrack: self
                .ctx
                .ct_layout
                .as_ref()
                .and_then(|l| crate::reason::conntrack(r, l)),
        }
    }

    /// A TCP packet conntrack logged but did not mark INVALID: 6.1+ IGNORE (out of window in a
    /// way conntrack tolerates: it keeps the entry and the NAT).
    fn ignored(&mut self, r: &Reason, out: &mut Output) {
        let p = &r.packet;
        if !self.ctx.verdicts || p.proto != IPPROTO_TCP || p.family == 0 {
            self.reasons_unmatched += 1;
            return;
        }
        let info = self.reason_info(r);
        let (src, dst) = addrs(p);
        out.reports.push(Report::Ignored(InvalidReport {
            time: self.time(r.header.ts_ns),
            netns: p.netns,
            hook: hook_name(r.hook),
            in_iface: None,
            out_iface: None,
            proto: p.proto,
            src,
            sport: Some(p.sport),
            dst,
            dport: Some(p.dport),
            flags: Some(tcp_flags(p.tcp_flags)),
            seq: Some(p.seq),
            ack: Some(p.ack),
            len: Some(p.payload_len),
            reason: info.text,
            missed_by: info.missed_by,
            fate: Fate::Accepted,
            drop_reason: None,
            conntrack: info.conntrack,
            enrichment: None,
        }));
    }

    fn invalid(&mut self, v: Verdict, now: Instant, out: &mut Output) {
        let p = &v.packet;
        let (src, dst) = addrs(p);
        let tcp = v.flags & flags::NOT_TCP == 0 && v.flags & flags::NO_HEADERS == 0;
        let info = match self.reasons.remove(&v.skb) {
            Some(r) if v.header.ts_ns.wrapping_sub(r.reason.header.ts_ns) <= REASON_MAX_AGE_NS => {
                Some(self.reason_info(&r.reason))
            }
            _ => None,
        };
        let (reason, missed_by, kernel_ct) = match (info, &self.ctx.reason_unknown) {
            (Some(i), _) => (i.text, i.missed_by, i.conntrack),
            (None, Some(why)) => (why.clone(), None, None),
            (None, None) => (
                "unknown (conntrack logged no reason for this packet: no entry was found or created for it)".to_string(),
                None,
                None,
            ),
        };
        let lookup = if kernel_ct.is_none() && tcp && self.ctx.lookups {
            let token = self.token();
            out.lookups.push(Request {
                token,
                tuple: Tuple {
                    src,
                    sport: p.sport,
                    dst,
                    dport: p.dport,
                    proto: p.proto,
                },
                urgent: false,
            });
            Some(token)
        } else {
            None
        };
        let report = InvalidReport {
            time: self.time(v.header.ts_ns),
            netns: p.netns,
            hook: hook_name(v.hook),
            in_iface: (self.ctx.ifname)(p.ifindex),
            out_iface: (self.ctx.ifname)(v.out_ifindex),
            proto: p.proto,
            src,
            sport: tcp.then_some(p.sport),
            dst,
            dport: tcp.then_some(p.dport),
            flags: tcp.then(|| tcp_flags(p.tcp_flags)),
            seq: tcp.then_some(p.seq),
            ack: tcp.then_some(p.ack),
            len: tcp.then_some(p.payload_len),
            reason,
            missed_by,
            fate: if self.ctx.fate_known {
                Fate::Passed
            } else {
                Fate::Unknown
            },
            drop_reason: None,
            conntrack: kernel_ct,
            enrichment: None,
        };
        let id = (v.skb, v.header.ts_ns);
        if let Some(t) = lookup {
            self.tokens.insert(t, id);
        }
        while self.pending.len() >= MAX_PENDING {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.expire(old, out);
        }
        let fresh = Pending {
            report,
            deadline: now + FATE_WAIT,
            fate_done: !self.ctx.fate_known,
            lookup,
            resets: Vec::new(),
        };
        if self.pending.insert(id, fresh).is_none() {
            self.order.push_back(id);
        }
    }

    fn drop(&mut self, d: Drop, out: &mut Output) {
        let id = (d.skb, d.verdict_ts_ns);
        // A drop for a verdict already reported (or never seen) says nothing new.
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        // On a veth the same sk_buff crosses into the next namespace, so a packet that passed
        // netfilter here can be freed later elsewhere (e.g. NO_SOCKET on the host that then
        // resets it). Only a netfilter drop protects the node; an old kernel without reasons
        // cannot tell the two apart.
        p.report.fate = match (d.reason, self.ctx.netfilter_drop) {
            (u32::MAX, _) | (_, None) => Fate::Unknown,
            (r, Some(nf)) if r == nf => Fate::Dropped,
            _ => Fate::Passed,
        };
        p.report.drop_reason = Some(match self.ctx.drop_reasons.get(&d.reason) {
            Some(n) => crate::btf::short_reason(n).to_string(),
            None if d.reason == u32::MAX => {
                "unknown (kfree_skb has no reason on this kernel)".into()
            }
            None => d.reason.to_string(),
        });
        p.fate_done = true;
        if p.lookup.is_none() {
            self.finish(id, out);
        }
    }

    fn reset_report(&mut self, kind: Kind, r: &Reset) -> ResetReport {
        let p = &r.packet;
        let (a, b) = addrs(p);
        let known = p.family != 0;
        let has_packet = r.flags & flags::NO_HEADERS == 0;
        let reason = if r.flags & flags::NO_REASON_ARG != 0 {
            if kind == Kind::RstSent {
                Some("unknown (tcp_send_reset has no reason argument before Linux 6.10)".into())
            } else {
                None
            }
        } else {
            Some(match self.ctx.rst_reasons.get(&r.reason) {
                Some(n) => crate::btf::short_reason(n).to_string(),
                None => r.reason.to_string(),
            })
        };
        if kind == Kind::RstSent {
            // The event carries the packet that caused the reset; the reset goes back.
            let (rflags, seq, ack) = if has_packet {
                let (f, s, a) = reset_for(p.tcp_flags, p.seq, p.ack, p.payload_len);
                (Some(tcp_flags(f)), Some(s), Some(a))
            } else {
                (Some("RST".to_string()), None, None)
            };
            ResetReport {
                time: self.time(r.header.ts_ns),
                netns: p.netns,
                src: known.then_some(b),
                sport: known.then_some(p.dport),
                dst: known.then_some(a),
                dport: known.then_some(p.sport),
                flags: rflags,
                seq,
                ack,
                reason,
                iface: if p.netns == self.ctx.own_netns {
                    (self.ctx.ifname)(p.ifindex)
                } else {
                    None
                },
                trigger: has_packet.then(|| Trigger {
                    flags: tcp_flags(p.tcp_flags),
                    seq: p.seq,
                    ack: p.ack,
                    len: p.payload_len,
                }),
                socket: Some(r.flags & flags::NO_SOCKET == 0),
                caused_by_invalid: r.flags & flags::CAUSED_BY_INVALID != 0,
            }
        } else {
            ResetReport {
                time: self.time(r.header.ts_ns),
                netns: p.netns,
                src: known.then_some(a),
                sport: known.then_some(p.sport),
                dst: known.then_some(b),
                dport: known.then_some(p.dport),
                flags: Some("RST".into()),
                seq: None,
                ack: None,
                reason,
                iface: None,
                trigger: None,
                socket: None,
                caused_by_invalid: false,
            }
        }
    }

    fn reset(&mut self, kind: Kind, r: Reset, out: &mut Output) {
        let report = self.reset_report(kind, &r);
        if kind != Kind::RstSent || !report.caused_by_invalid {
            out.reports.push(if kind == Kind::RstSent {
                Report::RstSent(report)
            } else {
                Report::RstReceived(report)
            });
            return;
        }
        let id = (r.cause.skb, r.cause.ts_ns);
        if r.cause.cause == Cause::EntryLost as u8 {
            self.reset_of_lost_entry(id, r, report, out);
            return;
        }
        if let Some(p) = self.pending.get_mut(&id) {
            // The packet reached a host that reset it, so it was not dropped: report its
            // verdict (once its lookup is answered), then the reset and the attribution.
            p.fate_done = true;
            p.resets.push((r, report));
            if p.lookup.is_none() {
                self.finish(id, out);
            }
            return;
        }
        if let Some(v) = self.recent.get(&id) {
            let (ct, reason, fate) = (v.conntrack.clone(), v.reason.clone(), v.fate);
            self.attribution(r, report, ct, reason, fate, out);
            return;
        }
        // The verdict was not shown: the budget suppressed it, or its record was lost. The
        // kernel's match stands; the entry behind it is looked up now.
        let reason = if r.cause.shown == 0 {
            "unknown (the verdict was suppressed by the event budget)"
        } else {
            "unknown (the verdict's record did not arrive)"
        }
        .to_string();
        self.attribution(r, report, None, reason, Fate::Passed, out);
    }

    fn release_held(
        &mut self,
        h: Held,
        entry: Option<ConntrackReport>,
        skipped: bool,
        out: &mut Output,
    ) {
        let a = self.attribute(
            &h.reset,
            &h.report,
            entry.as_ref(),
            h.reason,
            h.fate,
            skipped.then_some("skipped"),
            None,
        );
        out.reports.push(Report::RstSent(h.report));
        out.reports.push(Report::Attribution(a));
    }

    fn attribute(
        &mut self,
        r: &Reset,
        reset: &ResetReport,
        ct: Option<&ConntrackReport>,
        invalid_reason: String,
        fate: Fate,
        enrichment: Option<&'static str>,
        lost: Option<LostReport>,
    ) -> AttributionReport {
        let p = &r.packet;
        let (src, dst) = addrs(p);
        // The INVALID packet went backend -> client; the entry's original tuple is
        // client -> service. Without an entry, the packet's own destination is the client.
        let (client, service, backend) = match (ct, lost.as_ref().and_then(|l| l.entry.as_ref())) {
            (_, Some(e)) => (
                Some(e.orig_src.clone()),
                Some(e.orig_dst.clone()),
                e.reply_src.clone(),
            ),
            (Some(c), _) if c.direction == Direction::Reply => (
                Some(endpoint(c.orig_src, c.orig_sport)),
                Some(endpoint(c.orig_dst, c.orig_dport)),
                endpoint(src, p.sport),
            ),
            _ => (Some(endpoint(dst, p.dport)), None, endpoint(src, p.sport)),
        };
        let a = AttributionReport {
            time: reset.time.clone(),
            client: client.clone(),
            service: service.clone(),
            backend: backend.clone(),
            reset_src: endpoint_of(reset.src, reset.sport),
            reset_dst: endpoint_of(reset.dst, reset.dport),
            reset_netns: reset.netns,
            reset_reason: reset.reason.clone(),
            invalid_netns: r.cause.netns,
            invalid_hook: hook_name(r.cause.hook),
            invalid_reason: invalid_reason.clone(),
            invalid_time: self.time(r.cause.ts_ns),
            seq: p.seq,
            ack: p.ack,
            delay_us: r.header.ts_ns.saturating_sub(r.cause.ts_ns) / 1000,
            fate,
            cause: if lost.is_some() {
                "entry_lost"
            } else {
                "invalid_packet"
            },
            lost,
            enrichment,
        };
        let mut key = (
            client.unwrap_or_else(|| "?".into()),
            service.unwrap_or_else(|| "-".into()),
            backend,
        );
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&key) {
            key = ("(other flows)".into(), "-".into(), "-".into());
        }
        let f = self.flows.entry(key).or_default();
        f.resets += 1;
        if !f.reasons.contains(&invalid_reason) && f.reasons.len() < 16 {
            f.reasons.push(invalid_reason);
        }
        if f.first.is_empty() {
            f.first = a.time.clone();
        }
        f.last = a.time.clone();
        a
    }

    fn table_full(&mut self, p: &Pressure, out: &mut Output) {
        let k = &p.packet;
        let (src, dst) = addrs(k);
        let tcp = k.proto == IPPROTO_TCP;
        let ports = tcp || k.proto == 17;
        out.reports.push(Report::TableFull(TableFullReport {
            time: self.time(p.header.ts_ns),
            netns: k.netns,
            entries: self.entries(p),
            entries_source: self.entries_source(p),
            max: self.ct_max,
            proto: k.proto,
            src,
            sport: ports.then_some(k.sport),
            dst,
            dport: ports.then_some(k.dport),
            flags: tcp.then(|| tcp_flags(k.tcp_flags)),
        }));
    }

    fn entries(&self, p: &Pressure) -> Option<u32> {
        if p.entries != u32::MAX {
            Some(p.entries)
        } else {
            self.entries_now
        }
    }

    fn entries_source(&self, p: &Pressure) -> &'static str {
        if p.entries != u32::MAX {
            "kernel"
        } else {
            "ct-trace"
        }
    }

    fn lost_report(&self, g: &Gone) -> LostReport {
        LostReport {
            how: g.how,
            certain: g.certain,
            time: Some(self.time(g.boot_ns)),
            entry: Some(FlowEntry::of(&g.destroyed.entry)),
        }
    }

    fn midstream(&mut self, p: &Pressure, now: Instant, out: &mut Output) {
        let k = &p.packet;
        let (src, dst) = addrs(k);
        let tuple = Tuple {
            src,
            sport: k.sport,
            dst,
            dport: k.dport,
            proto: IPPROTO_TCP,
        };
        let report = MidstreamReport {
            time: self.time(p.header.ts_ns),
            netns: k.netns,
            hook: hook_name(p.hook),
            entries: self.entries(p),
            entries_source: self.entries_source(p),
            max: self.ct_max,
            src,
            sport: k.sport,
            dst,
            dport: k.dport,
            flags: tcp_flags(k.tcp_flags),
            seq: k.seq,
            ack: k.ack,
            len: k.payload_len,
            lost: LostReport::unknown(),
        };
        let id = (p.skb, p.header.ts_ns);
        if self.mids.len() >= MAX_PENDING {
            if let Some(old) = self.mid_order.pop_front() {
                self.finish_mid(old, LostReport::unknown(), out);
            }
        }
        let pending = PendingMid {
            report,
            tuple,
            deadline: now + FATE_WAIT,
            resets: Vec::new(),
        };
        self.mids.insert(id, pending);
        self.mid_order.push_back(id);
        if let Some(g) = self.lost.find(&tuple) {
            let l = self.lost_report(g);
            self.finish_mid(id, l, out);
        }
    }

    /// Entries that went: `evicted` ones are reported; every one is remembered, and completes
    /// the `midstream` records waiting for it.
    pub fn gone(&mut self, gone: Vec<Gone>, out: &mut Output) {
        for g in gone {
            if g.how == How::Evicted {
                self.evicted += 1;
                self.evicted_inferred += u64::from(!g.certain);
                out.reports.push(Report::Evicted(EvictedReport {
                    time: self.time(g.boot_ns),
                    netns: self.ctx.own_netns,
                    entries: g.entries,
                    max: self.ct_max,
                    entry: FlowEntry::of(&g.destroyed.entry),
                    age_s: g.destroyed.age_ns.map(|n| n as f64 / 1e9),
                    certain: g.certain,
                }));
            }
            self.lost.expire(g.boot_ns);
            self.lost.remember(g);
        }
        let found: Vec<(VerdictId, LostReport)> = self
            .mids
            .iter()
            .filter_map(|(id, m)| Some((*id, self.lost_report(self.lost.find(&m.tuple)?))))
            .collect();
        for (id, l) in found {
            self.finish_mid(id, l, out);
        }
    }

    fn finish_mid(&mut self, id: VerdictId, lost: LostReport, out: &mut Output) {
        let Some(mut m) = self.mids.remove(&id) else {
            return;
        };
        m.report.lost = lost.clone();
        out.reports.push(Report::Midstream(m.report));
        for (raw, rep) in m.resets {
            self.lost_attribution(raw, rep, lost.clone(), out);
        }
        if self.mid_recent_order.len() >= RECENT {
            if let Some(old) = self.mid_recent_order.pop_front() {
                self.mid_recent.remove(&old);
            }
        }
        self.mid_recent.insert(id, lost);
        self.mid_recent_order.push_back(id);
    }

    /// A reset answering a packet picked up mid-stream: attributed to the lost entry.
    fn reset_of_lost_entry(
        &mut self,
        id: VerdictId,
        r: Reset,
        report: ResetReport,
        out: &mut Output,
    ) {
        if let Some(m) = self.mids.get_mut(&id) {
            m.resets.push((r, report));
            return;
        }
        let lost = match self.mid_recent.get(&id) {
            Some(l) => l.clone(),
            None => {
                // The midstream record was not shown (budget) or did not arrive.
                let (src, dst) = addrs(&r.packet);
                let t = Tuple {
                    src,
                    sport: r.packet.sport,
                    dst,
                    dport: r.packet.dport,
                    proto: IPPROTO_TCP,
                };
                match self.lost.find(&t) {
                    Some(g) => self.lost_report(g),
                    None => LostReport::unknown(),
                }
            }
        };
        self.lost_attribution(r, report, lost, out);
    }

    fn lost_attribution(&mut self, r: Reset, rep: ResetReport, lost: LostReport, out: &mut Output) {
        let reason = format!(
            "entry lost ({}): conntrack picked the flow up mid-stream without the Service's NAT",
            how_name(lost.how)
        );
        let a = self.attribute(&r, &rep, None, reason, Fate::Passed, None, Some(lost));
        out.reports.push(Report::RstSent(rep));
        out.reports.push(Report::Attribution(a));
    }

    /// The flows ranked by attributed resets, most first.
    pub fn summary(&self) -> Vec<FlowReport> {
        let mut v: Vec<_> = self
            .flows
            .iter()
            .map(|((client, service, backend), s)| FlowReport {
                client: client.clone(),
                service: service.clone(),
                backend: backend.clone(),
                resets: s.resets,
                reasons: s.reasons.clone(),
                first: s.first.clone(),
                last: s.last.clone(),
            })
            .collect();
        v.sort_by(|a, b| {
            b.resets.cmp(&a.resets).then_with(|| {
                (&a.client, &a.service, &a.backend).cmp(&(&b.client, &b.service, &b.backend))
            })
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conntrack_common::{Header, InvalidSeen, Packet, WIRE_VERSION};

    fn ctx() -> Context {
        Context {
            boot_to_epoch_ns: 0,
            rst_reasons: HashMap::from([(2, "SK_RST_REASON_NO_SOCKET".to_string())]),
            drop_reasons: HashMap::from([(9, "SKB_DROP_REASON_NETFILTER_DROP".to_string())]),
            netfilter_drop: Some(9),
            fate_known: true,
            reason_unknown: None,
            ct_layout: None,
            verdicts: true,
            own_netns: 1,
            lookups: false,
            ifname: Box::new(|i| (i != 0).then(|| format!("if{i}"))),
        }
    }

    fn packet() -> Packet {
        let mut p = Packet {
            netns: 1,
            family: 4,
            proto: 6,
            tcp_flags: 0x10,
            sport: 8080,
            dport: 40000,
            seq: 100,
            ack: 5000,
            payload_len: 10,
            ..Default::default()
        };
        p.saddr[..4].copy_from_slice(&[10, 0, 2, 2]);
        p.daddr[..4].copy_from_slice(&[10, 0, 1, 2]);
        p
    }

    fn verdict(skb: u64) -> Verdict {
        Verdict {
            header: Header {
                version: WIRE_VERSION,
                kind: Kind::Invalid as u8,
                ts_ns: 1_000,
                ..Default::default()
            },
            packet: packet(),
            skb,
            ..Default::default()
        }
    }

    fn reason(skb: u64, fmt: &str, bound: u64) -> Box<Reason> {
        let mut r = Reason {
            header: Header {
                version: WIRE_VERSION,
                kind: Kind::Reason as u8,
                ts_ns: 900,
                ..Default::default()
            },
            packet: packet(),
            skb,
            args: [bound, 0],
            ..Default::default()
        };
        r.fmt[..fmt.len()].copy_from_slice(fmt.as_bytes());
        Box::new(r)
    }

    /// The reset the client sends for the INVALID packet `skb` (seen at time 1000).
    fn caused_reset(skb: u64, shown: u8) -> Reset {
        let mut r = Reset {
            header: Header {
                version: WIRE_VERSION,
                kind: Kind::RstSent as u8,
                ts_ns: 3_000,
                ..Default::default()
            },
            packet: packet(),
            reason: 2,
            flags: flags::NO_SOCKET | flags::CAUSED_BY_INVALID,
            ..Default::default()
        };
        r.packet.netns = 2;
        r.cause = InvalidSeen {
            ts_ns: 1_000,
            skb,
            netns: 1,
            hook: 0,
            shown,
            cause: 0,
            _pad: 0,
        };
        r
    }

    fn kinds(out: &Output) -> Vec<&'static str> {
        out.reports.iter().map(Report::kind).collect()
    }

    #[test]
    fn a_reason_joins_the_verdict_on_the_same_packet() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = Output::default();
        let fmt = "SEQ is over upper bound %u (over the window of the receiver)";
        c.event(Event::Reason(reason(7, fmt, 60)), t0, &mut out);
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.tick(t0 + FATE_WAIT * 2, false, &mut out);
        match &out.reports[..] {
            [Report::Invalid(r)] => {
                assert_eq!(
                    r.reason,
                    "SEQ is over upper bound 60 (over the window of the receiver)"
                );
                assert_eq!(r.missed_by, Some(40), "seq 100 - bound 60");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reason_without_a_verdict_is_an_ignored_packet() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = Output::default();
        let fmt = "ignored ACK under lower bound %u (possible overly delayed)";
        c.event(Event::Reason(reason(7, fmt, 1)), t0, &mut out);
        c.tick(t0, false, &mut out);
        assert!(out.reports.is_empty(), "waits for the verdict");
        c.tick(t0 + FATE_WAIT * 2, false, &mut out);
        match &out.reports[..] {
            [Report::Ignored(r)] => {
                assert_eq!(r.fate, Fate::Accepted);
                assert!(r.reason.starts_with("ignored ACK under lower bound 1"));
            }
            other => panic!("{other:?}"),
        }
        // Without verdict programs nothing says it was not INVALID: not reported.
        let mut cx = ctx();
        cx.verdicts = false;
        let mut c = Correlator::new(cx);
        let mut out = Output::default();
        c.event(Event::Reason(reason(7, fmt, 1)), t0, &mut out);
        c.tick(t0, true, &mut out);
        assert!(out.reports.is_empty());
        assert_eq!(c.reasons_unmatched, 1);
    }

    #[test]
    fn a_verdict_without_drop_is_reported_passed_after_the_wait() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = Output::default();
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.tick(t0, false, &mut out);
        assert!(out.reports.is_empty(), "must wait for a possible drop");
        c.tick(t0 + FATE_WAIT * 2, false, &mut out);
        match &out.reports[..] {
            [Report::Invalid(r)] => {
                assert_eq!(r.fate, Fate::Passed);
                assert_eq!(r.in_iface, None);
            }
            other => panic!("{other:?}"),
        }
    }

    fn drop_of(skb: u64, ts: u64, reason: u32) -> Event {
        Event::Drop(Drop {
            skb,
            verdict_ts_ns: ts,
            reason,
            ..Default::default()
        })
    }

    #[test]
    fn a_netfilter_drop_of_the_same_packet_makes_it_dropped() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = Output::default();
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.event(drop_of(7, 1_000, 9), t0, &mut out);
        match &out.reports[..] {
            [Report::Invalid(r)] => {
                assert_eq!(r.fate, Fate::Dropped);
                assert_eq!(r.drop_reason.as_deref(), Some("NETFILTER_DROP"));
            }
            other => panic!("{other:?}"),
        }
        // Freed later for another reason (in the next namespace): it passed netfilter.
        c.event(Event::Invalid(verdict(8)), t0, &mut out);
        c.event(drop_of(8, 1_000, 3), t0, &mut out);
        let Report::Invalid(r) = &out.reports[1] else {
            unreachable!()
        };
        assert_eq!(r.fate, Fate::Passed);
        // A drop of an older verdict on a reused sk_buff address changes nothing.
        c.event(Event::Invalid(verdict(9)), t0, &mut out);
        c.event(drop_of(9, 999, 9), t0, &mut out);
        assert_eq!(out.reports.len(), 2);
    }

    #[test]
    fn a_reset_caused_by_an_invalid_packet_is_attributed_once() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = Output::default();
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.event(
            Event::Reset(Kind::RstSent, caused_reset(7, 1)),
            t0,
            &mut out,
        );
        assert_eq!(kinds(&out), ["invalid", "rst_sent", "attribution"]);
        let Report::Attribution(a) = &out.reports[2] else {
            unreachable!()
        };
        assert_eq!(a.backend, "10.0.2.2:8080");
        assert_eq!(a.client.as_deref(), Some("10.0.1.2:40000"));
        assert_eq!(a.delay_us, 2);
        assert_eq!(a.fate, Fate::Passed);
        let Report::RstSent(rs) = &out.reports[1] else {
            unreachable!()
        };
        assert_eq!(rs.src, Some("10.0.1.2".parse().unwrap()));
        assert_eq!(rs.seq, Some(5000), "RST seq is the offending packet's ack");
        assert_eq!(rs.reason.as_deref(), Some("NO_SOCKET"));
        assert_eq!(c.summary()[0].resets, 1);
        // Nothing more comes out later.
        c.tick(t0 + FATE_WAIT * 2, true, &mut out);
        assert_eq!(out.reports.len(), 3);
    }

    #[test]
    fn ten_resets_in_a_row_on_reused_buffers_are_ten_attributions() {
        // The same sk_buff address serves packet after packet: each verdict is told apart by
        // its time, and every reset finds its own.
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = Output::default();
        for i in 0..10u64 {
            let mut v = verdict(7);
            v.header.ts_ns = 1_000 + i * 10_000;
            v.packet.dport = 40_000 + i as u16;
            c.event(Event::Invalid(v), t0, &mut out);
            let mut r = caused_reset(7, 1);
            r.cause.ts_ns = v.header.ts_ns;
            r.header.ts_ns = v.header.ts_ns + 500;
            r.packet.dport = 40_000 + i as u16;
            c.event(Event::Reset(Kind::RstSent, r), t0, &mut out);
        }
        c.tick(t0 + FATE_WAIT * 2, true, &mut out);
        let clients: Vec<_> = out
            .reports
            .iter()
            .filter_map(|r| match r {
                Report::Attribution(a) => a.client.clone(),
                _ => None,
            })
            .collect();
        let want: Vec<_> = (0..10)
            .map(|i| format!("10.0.1.2:{}", 40_000 + i))
            .collect();
        assert_eq!(clients, want);
        assert_eq!(out.reports.len(), 30);
    }

    #[test]
    fn a_reset_of_a_suppressed_verdict_is_still_attributed_with_its_lookup() {
        let mut cx = ctx();
        cx.lookups = true;
        let mut c = Correlator::new(cx);
        let t0 = Instant::now();
        let mut out = Output::default();
        c.event(
            Event::Reset(Kind::RstSent, caused_reset(7, 0)),
            t0,
            &mut out,
        );
        assert!(out.reports.is_empty(), "waits for the lookup");
        let [req] = &out.lookups[..] else {
            panic!("one lookup: {:?}", out.lookups)
        };
        let token = req.token;
        assert_eq!(req.tuple.sport, 8080);
        let entry = ConntrackReport {
            source: "ctnetlink",
            direction: Direction::Reply,
            orig_src: "10.0.1.2".parse().unwrap(),
            orig_sport: 40000,
            orig_dst: "10.96.0.10".parse().unwrap(),
            orig_dport: 80,
            reply_src: "10.0.2.2".parse().unwrap(),
            reply_sport: 8080,
            reply_dst: "10.0.1.2".parse().unwrap(),
            reply_dport: 40000,
            tcp_state: Some("ESTABLISHED"),
            assured: true,
            original_window: None,
            reply_window: None,
        };
        c.answer(token, Some(Some(entry)), &mut out);
        assert_eq!(kinds(&out), ["rst_sent", "attribution"]);
        let Report::Attribution(a) = &out.reports[1] else {
            unreachable!()
        };
        assert_eq!(a.service.as_deref(), Some("10.96.0.10:80"));
        assert!(
            a.invalid_reason.contains("suppressed"),
            "{}",
            a.invalid_reason
        );
        // Unanswered, it goes out at the deadline, saying so.
        let mut out = Output::default();
        c.event(
            Event::Reset(Kind::RstSent, caused_reset(8, 0)),
            t0,
            &mut out,
        );
        c.tick(t0 + FATE_WAIT * 2, false, &mut out);
        let Report::Attribution(a) = &out.reports[1] else {
            panic!("{:?}", out.reports)
        };
        assert_eq!(a.enrichment, Some("skipped"));
        assert_eq!(a.client.as_deref(), Some("10.0.1.2:40000"));
        assert_eq!(c.enrichment_skipped, 1);
    }

    #[test]
    fn a_verdict_waits_for_its_lookup_then_its_reset_follows() {
        let mut cx = ctx();
        cx.lookups = true;
        let mut c = Correlator::new(cx);
        let t0 = Instant::now();
        let mut out = Output::default();
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.event(
            Event::Reset(Kind::RstSent, caused_reset(7, 1)),
            t0,
            &mut out,
        );
        assert!(out.reports.is_empty(), "the verdict waits for its entry");
        let token = out.lookups[0].token;
        // The queue was full: the verdict goes out at once without its entry, saying so.
        c.answer(token, None, &mut out);
        assert_eq!(kinds(&out), ["invalid"]);
        let Report::Invalid(v) = &out.reports[0] else {
            unreachable!()
        };
        assert_eq!(v.enrichment, Some("skipped"));
        // The attribution asks again, urgently, and goes out with the answer.
        let urgent = out.lookups.last().expect("an urgent lookup");
        assert!(urgent.urgent);
        let token = urgent.token;
        c.answer(token, Some(None), &mut out);
        assert_eq!(kinds(&out), ["invalid", "rst_sent", "attribution"]);
    }

    #[test]
    fn the_flow_summary_is_bounded() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = Output::default();
        for i in 0..(MAX_FLOWS as u64 + 5) {
            let mut r = caused_reset(7, 0);
            r.packet.dport = (i % 60_000) as u16;
            r.packet.daddr[2] = (i / 60_000) as u8;
            c.event(Event::Reset(Kind::RstSent, r), t0, &mut out);
        }
        let flows = c.summary();
        assert_eq!(flows.len(), MAX_FLOWS + 1);
        let other = flows.iter().find(|f| f.client == "(other flows)").unwrap();
        assert_eq!(other.resets, 5);
    }

    #[test]
    fn resets_follow_the_kernel_rule() {
        assert_eq!(reset_for(0x02, 10, 0, 0), (0x14, 0, 11), "SYN is acked");
        assert_eq!(
            reset_for(0x18, 10, 99, 5),
            (0x04, 99, 0),
            "ACK: seq = its ack"
        );
        assert_eq!(
            reset_for(0x01, 10, 0, 3),
            (0x14, 0, 14),
            "FIN and data are acked"
        );
    }

    fn midstream_of(skb: u64, ts: u64) -> Event {
        let mut p = conntrack_common::Pressure {
            skb,
            entries: u32::MAX,
            ..Default::default()
        };
        p.header.ts_ns = ts;
        p.header.kind = Kind::Midstream as u8;
        p.packet = packet();
        Event::Pressure(Kind::Midstream, p)
    }

    fn gone_for(how: How) -> Gone {
        use crate::netlink::{Destroyed, Entry};
        let p = packet();
        let (src, dst) = addrs(&p);
        Gone {
            destroyed: Destroyed {
                entry: Entry {
                    orig: Tuple {
                        src: dst,
                        sport: p.dport,
                        dst: "10.96.0.10".parse().unwrap(),
                        dport: 80,
                        proto: IPPROTO_TCP,
                    },
                    reply: Tuple {
                        src,
                        sport: p.sport,
                        dst,
                        dport: p.dport,
                        proto: IPPROTO_TCP,
                    },
                    status: crate::netlink::IPS_ASSURED,
                    tcp_state: Some(3),
                },
                portid: 77,
                age_ns: None,
            },
            how,
            certain: true,
            boot_ns: 500,
            entries: Some(3),
        }
    }

    #[test]
    fn a_midstream_waits_for_its_lost_entry_and_its_reset_is_attributed_to_it() {
        let mut c = Correlator::new(ctx());
        let mut out = Output::default();
        let now = Instant::now();
        c.event(midstream_of(0xaa, 1_000), now, &mut out);
        assert!(out.reports.is_empty(), "waits for the destroy event");
        let mut r = caused_reset(0xaa, 1);
        r.cause.cause = Cause::EntryLost as u8;
        c.event(Event::Reset(Kind::RstSent, r), now, &mut out);
        assert!(out.reports.is_empty(), "the reset waits with its midstream");
        c.gone(vec![gone_for(How::Deleted)], &mut out);
        assert_eq!(kinds(&out), ["midstream", "rst_sent", "attribution"]);
        let Report::Attribution(a) = &out.reports[2] else {
            panic!()
        };
        assert_eq!(a.cause, "entry_lost");
        assert_eq!(a.service.as_deref(), Some("10.96.0.10:80"));
        assert_eq!(a.lost.as_ref().unwrap().how, How::Deleted);
    }

    #[test]
    fn a_midstream_without_a_lost_entry_goes_out_unknown_after_the_wait() {
        let mut c = Correlator::new(ctx());
        let mut out = Output::default();
        let now = Instant::now();
        c.event(midstream_of(0xab, 1_000), now, &mut out);
        c.tick(now + FATE_WAIT, false, &mut out);
        assert_eq!(kinds(&out), ["midstream"]);
        let Report::Midstream(m) = &out.reports[0] else {
            panic!()
        };
        assert_eq!(m.lost.how, How::Unknown);
    }
}
