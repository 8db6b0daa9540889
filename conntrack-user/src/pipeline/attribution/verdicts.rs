//! INVALID verdicts: joined with the reason conntrack logged, their fate (a later drop) and
//! their entry, then reported once. Owns the verdicts waiting for their fate or lookup, the
//! reasons waiting for their verdict, and what recent verdicts said, for later resets.

use std::{collections::HashMap, time::Instant};

use conntrack_common::{flags, ips, Drop, Reason, Reset, Verdict, IPPROTO_TCP, NO_REASON};

use super::{
    resets::Invalid,
    shared::{Output, Shared, VerdictId, FATE_WAIT, MAX_PENDING, MAX_WAITING, RECENT},
};
use crate::{
    event::{
        ConntrackReport, Fate, InvalidReport, ReasonText, Report, ResetReport, TcpFlags, Time,
    },
    event::{Enrichment, NfHook, Packet},
    node::netlink::Tuple,
    pipeline::bounded::{Bounded, KeyHash},
    pipeline::enrich::Request,
    pipeline::events::addrs,
    pipeline::reason::Formats,
};

/// A verdict within this long after a reason for the same `sk_buff` is about the same packet
/// (both happen inside one `nf_conntrack_in()` call).
const REASON_MAX_AGE_NS: u64 = 100_000_000;

/// Boxed in the queue: a verdict waits there for tens of thousands of others in a storm, and
/// its eviction, expiry and report then move a pointer instead of a few hundred bytes.
pub(super) struct Pending {
    report: InvalidReport,
    deadline: Instant,
    /// A drop came, or a reset proved that the packet went on: nothing more to wait for.
    fate_done: bool,
    /// The token of an unanswered lookup.
    lookup: Option<u64>,
    /// Resets this packet caused, reported after it.
    resets: Vec<(Reset, ResetReport)>,
}

/// A reason record waiting for the verdict on the same packet.
struct PendingReason {
    reason: Box<Reason>,
    deadline: Instant,
}

/// What a reason record says, ready to go into a report.
struct ReasonInfo {
    text: ReasonText,
    missed_by: Option<u32>,
    conntrack: Option<Box<ConntrackReport>>,
    /// Whether conntrack refused the packet with a confirmed entry of its flow in hand (`None`:
    /// it refused it before looking one up).
    tracked: Option<bool>,
}

/// A verdict that was reported, with the resets it caused meanwhile: the caller attributes
/// them, in order, right after the verdict's report (`invalid` is there when they are).
#[derive(Default)]
pub(super) struct Done {
    pub resets: Vec<(Reset, ResetReport)>,
    pub invalid: Option<Invalid>,
}

pub(super) struct Verdicts {
    pending: Bounded<VerdictId, Box<Pending>>,
    /// What reported verdicts said, for resets that arrive later.
    recent: Bounded<VerdictId, Invalid>,
    /// By `sk_buff` address.
    reasons: Bounded<u64, PendingReason>,
    /// Lookups in flight for pending verdicts.
    tokens: HashMap<u64, VerdictId, KeyHash>,
    /// Reasons on packets that were neither INVALID nor TCP (not reported).
    pub reasons_unmatched: u64,
    /// Verdicts that went out without their lookup's answer.
    pub enrichment_skipped: u64,
    formats: Formats,
}

impl Verdicts {
    pub fn new() -> Self {
        Self {
            pending: Bounded::new(MAX_PENDING),
            recent: Bounded::new(RECENT),
            reasons: Bounded::new(MAX_WAITING),
            tokens: HashMap::default(),
            reasons_unmatched: 0,
            enrichment_skipped: 0,
            formats: Formats::default(),
        }
    }

    /// A reason record waits for the verdict on the same packet; a full room reports its
    /// oldest as ignored.
    pub fn reason(&mut self, r: Box<Reason>, now: Instant, sh: &Shared, out: &mut Output) {
        let skb = r.skb;
        // The first reason logged for a packet is the one that decided.
        if self.reasons.contains_key(&skb) {
            return;
        }
        let pending = PendingReason {
            reason: r,
            deadline: now + FATE_WAIT,
        };
        if let Some((_, old)) = self.reasons.insert(skb, pending) {
            self.ignored(&old.reason, sh, out);
        }
    }

    /// Reports the reasons that waited long enough for a verdict (all with `flush`) as ignored.
    pub fn tick_reasons(&mut self, now: Instant, flush: bool, sh: &Shared, out: &mut Output) {
        for (_, p) in self
            .reasons
            .pop_oldest_while(|p| flush || p.deadline <= now)
        {
            self.ignored(&p.reason, sh, out);
        }
    }

    /// The verdicts whose wait is over (all with `flush`), oldest first, for [`Self::expire`].
    pub fn due(&mut self, now: Instant, flush: bool) -> Vec<(VerdictId, Box<Pending>)> {
        self.pending
            .pop_oldest_while(|p| flush || p.deadline <= now)
    }

    /// The times of the oldest verdict waiting and the oldest reason waiting.
    pub fn held_since(&self, sh: &Shared) -> [Option<Time>; 2] {
        [
            self.pending.oldest().map(|(_, p)| p.report.packet.time),
            self.reasons
                .oldest()
                .map(|(_, r)| sh.time(r.reason.header.ts_ns)),
        ]
    }

    /// A verdict whose wait is over goes out with what is known.
    pub fn expire(
        &mut self,
        id: VerdictId,
        mut p: Box<Pending>,
        sh: &Shared,
        out: &mut Output,
    ) -> Done {
        if let Some(t) = p.lookup.take() {
            self.tokens.remove(&t);
            p.report.enrichment = Some(Enrichment::Skipped);
            self.enrichment_skipped += 1;
        }
        self.finish(id, p, sh, out)
    }

    fn finish(
        &mut self,
        id: VerdictId,
        mut p: Box<Pending>,
        sh: &Shared,
        out: &mut Output,
    ) -> Done {
        // Named now, when the entry's lookup (if any) is in.
        p.report.service_name = sh.invalid_service_name(&p.report);
        let invalid = Invalid {
            conntrack: p.report.conntrack.clone(),
            tracked: p.report.tracked,
            reason: p.report.reason.clone(),
            fate: p.report.fate,
        };
        out.reports.push(Report::Invalid(p.report));
        if p.resets.is_empty() {
            self.recent.insert(id, invalid);
            return Done::default();
        }
        self.recent.insert(id, invalid.clone());
        Done {
            resets: p.resets,
            invalid: Some(invalid),
        }
    }

    /// The answer to a verdict's lookup (`None`: refused by the enrichment queue); `None` back
    /// unless it completed the verdict.
    pub fn answer(
        &mut self,
        token: u64,
        entry: Option<Option<ConntrackReport>>,
        sh: &Shared,
        out: &mut Output,
    ) -> Option<Done> {
        let id = self.tokens.remove(&token)?;
        let p = self.pending.get_mut(&id)?;
        p.lookup = None;
        match entry {
            Some(e) => {
                p.report.tracked = Some(e.is_some());
                p.report.conntrack = e.map(Box::new);
            }
            None => {
                p.report.enrichment = Some(Enrichment::Skipped);
                self.enrichment_skipped += 1;
            }
        }
        if !p.fate_done {
            return None;
        }
        let p = self.pending.remove(&id)?;
        Some(self.finish(id, p, sh, out))
    }

    /// Whether verdict `id` is waiting.
    pub fn waiting(&self, id: &VerdictId) -> bool {
        self.pending.contains_key(id)
    }

    /// A reset caused by the packet of waiting verdict `id` waits with it (the packet reached a
    /// host that reset it, so it was not dropped: its verdict goes out once its lookup is
    /// answered, then the reset and the attribution).
    pub fn join_reset(
        &mut self,
        id: VerdictId,
        r: Reset,
        report: ResetReport,
        sh: &Shared,
        out: &mut Output,
    ) -> Option<Done> {
        let p = self.pending.get_mut(&id)?;
        p.fate_done = true;
        p.resets.push((r, report));
        if p.lookup.is_some() {
            return None;
        }
        let p = self.pending.remove(&id)?;
        Some(self.finish(id, p, sh, out))
    }

    /// What a verdict reported recently said, for a reset that came after it.
    pub fn seen(&self, id: &VerdictId) -> Option<Invalid> {
        self.recent.get(id).cloned()
    }

    fn reason_info(&mut self, r: &Reason, sh: &Shared) -> ReasonInfo {
        let fmt = self.formats.of(r);
        let layout = sh.ctx.ct_layout.as_ref();
        let state = layout.and_then(|l| crate::pipeline::reason::tcp_state(r, l));
        let conntrack = layout.and_then(|l| crate::pipeline::reason::conntrack(r, l));
        let (seq, ack) = (r.packet.seq, r.packet.ack);
        ReasonInfo {
            missed_by: crate::pipeline::reason::missed_by(&fmt, r.args[0], seq, ack).or_else(
                || crate::pipeline::reason::missed_by_window(&fmt, conntrack.as_ref(), seq, ack),
            ),
            text: ReasonText::logged(fmt, r.args, state),
            conntrack: conntrack.map(Box::new),
            // A refusal with an entry: was it one conntrack was already tracking, or one this
            // very packet was about to create (e.g. "invalid new" for a stray FIN)?
            tracked: (r.has_ct != 0).then_some(r.ct_status & ips::CONFIRMED != 0),
        }
    }

    /// A TCP packet conntrack logged but did not mark INVALID: 6.1+ IGNORE (out of window in a
    /// way conntrack tolerates: it keeps the entry and the NAT).
    fn ignored(&mut self, r: &Reason, sh: &Shared, out: &mut Output) {
        let p = &r.packet;
        if !sh.ctx.verdicts || p.proto != IPPROTO_TCP || p.family == 0 {
            self.reasons_unmatched += 1;
            return;
        }
        let info = self.reason_info(r, sh);
        let (src, dst) = addrs(p);
        let mut report = InvalidReport {
            packet: Packet {
                time: sh.time(r.header.ts_ns),
                netns: p.netns,
                hook: NfHook::of(r.hook),
                proto: p.proto,
                src: Some(src),
                sport: Some(p.sport),
                dst: Some(dst),
                dport: Some(p.dport),
                flags: Some(TcpFlags(p.tcp_flags)),
                seq: Some(p.seq),
                ack: Some(p.ack),
                len: Some(p.payload_len),
            },
            in_iface: None,
            out_iface: None,
            reason: info.text,
            missed_by: info.missed_by,
            fate: Fate::Accepted,
            drop_reason: None,
            conntrack: info.conntrack,
            tracked: info.tracked,
            enrichment: None,
            service_name: None,
        };
        report.service_name = sh.invalid_service_name(&report);
        out.reports.push(Report::Ignored(report));
    }

    /// A verdict waits for its fate and its lookup; a full room gives back its oldest, for
    /// [`Self::expire`].
    pub fn invalid(
        &mut self,
        v: Verdict,
        now: Instant,
        sh: &mut Shared,
        out: &mut Output,
    ) -> Option<(VerdictId, Box<Pending>)> {
        let p = &v.packet;
        let (src, dst) = addrs(p);
        let tcp = v.flags & flags::NOT_TCP == 0 && v.flags & flags::NO_HEADERS == 0;
        let info = match self.reasons.remove(&v.skb) {
            Some(r) if v.header.ts_ns.wrapping_sub(r.reason.header.ts_ns) <= REASON_MAX_AGE_NS => {
                Some(self.reason_info(&r.reason, sh))
            }
            _ => None,
        };
        let (reason, missed_by, kernel_ct, tracked) = match info {
            Some(i) => (i.text, i.missed_by, i.conntrack, i.tracked),
            None => (sh.reason_unknown.clone(), None, None, None),
        };
        // Without the kernel's word on the entry, its lookup tells whether the flow was tracked.
        let lookup = if tracked.is_none() && tcp && sh.ctx.lookups {
            let token = sh.token();
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
            packet: Packet {
                time: sh.time(v.header.ts_ns),
                netns: p.netns,
                hook: NfHook::of(v.hook),
                proto: p.proto,
                src: Some(src),
                sport: tcp.then_some(p.sport),
                dst: Some(dst),
                dport: tcp.then_some(p.dport),
                flags: tcp.then_some(TcpFlags(p.tcp_flags)),
                seq: tcp.then_some(p.seq),
                ack: tcp.then_some(p.ack),
                len: tcp.then_some(p.payload_len),
            },
            in_iface: (sh.ctx.ifname)(p.ifindex),
            out_iface: (sh.ctx.ifname)(v.out_ifindex),
            reason,
            missed_by,
            fate: if sh.ctx.fate_known {
                Fate::Passed
            } else {
                Fate::Unknown
            },
            drop_reason: None,
            conntrack: kernel_ct,
            tracked,
            enrichment: None,
            service_name: None,
        };
        let id = (v.skb, v.header.ts_ns);
        if let Some(t) = lookup {
            self.tokens.insert(t, id);
        }
        let fresh = Box::new(Pending {
            report,
            deadline: now + FATE_WAIT,
            fate_done: !sh.ctx.fate_known,
            lookup,
            resets: Vec::new(),
        });
        self.pending.insert(id, fresh)
    }

    /// The drop of a waiting verdict's packet: its fate.
    pub fn drop(&mut self, d: Drop, sh: &Shared, out: &mut Output) -> Option<Done> {
        let id = (d.skb, d.verdict_ts_ns);
        // A drop for a verdict already reported (or never seen) says nothing new.
        let p = self.pending.get_mut(&id)?;
        // On a veth the same sk_buff crosses into the next namespace, so a packet that passed
        // netfilter here can be freed later elsewhere (e.g. NO_SOCKET on the host that then
        // resets it). Only a netfilter drop protects the node; an old kernel without reasons
        // cannot tell the two apart.
        p.report.fate = match (d.reason, sh.ctx.netfilter_drop) {
            (NO_REASON, _) | (_, None) => Fate::Unknown,
            (r, Some(nf)) if r == nf => Fate::Dropped,
            _ => Fate::Passed,
        };
        p.report.drop_reason = Some(match sh.drop_names.get(&d.reason) {
            Some(n) => n.clone(),
            None if d.reason == NO_REASON => sh.drop_no_reason.clone(),
            None => d.reason.to_string().into(),
        });
        p.fate_done = true;
        if p.lookup.is_some() {
            return None;
        }
        let p = self.pending.remove(&id)?;
        Some(self.finish(id, p, sh, out))
    }
}
