//! Resets: matched in the kernel to the packet that caused them, reported with their
//! attribution (client -> Service -> backend) and summed per flow. Owns the resets held for a
//! lookup of the entry behind them, and the reset summary ([`Flows`]).

use std::{net::SocketAddr, time::Instant};

use conntrack_common::{flags, Cause, Kind, Reset, IPPROTO_TCP};

use super::{
    flows::Flows,
    shared::{Output, Shared, FATE_WAIT, MAX_WAITING},
};
use crate::{
    event::{
        AttributionReport, ConntrackReport, Endpoint, Fate, ReasonText, Report, ResetReport,
        StrayTally, TcpFlags, Time, Trigger,
    },
    event::{Enrichment, NfHook, Packet, ResetCause},
    node::netlink::Tuple,
    pipeline::bounded::Bounded,
    pipeline::enrich::Request,
    pipeline::events::addrs,
    pipeline::lost::{How, LostReport},
};

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

/// The reason of an `entry_lost` attribution.
fn entry_lost_reason(how: How) -> &'static str {
    match how {
        How::Evicted => {
            "entry lost (evicted): conntrack picked the flow up mid-stream without the Service's NAT"
        }
        How::Expired => {
            "entry lost (expired): conntrack picked the flow up mid-stream without the Service's NAT"
        }
        How::Deleted => {
            "entry lost (deleted): conntrack picked the flow up mid-stream without the Service's NAT"
        }
        How::Unknown => {
            "entry lost (unknown): conntrack picked the flow up mid-stream without the Service's NAT"
        }
    }
}

/// What is known of the INVALID packet behind a reset: from its verdict (waiting, or reported
/// recently), or nothing when the verdict was not seen.
#[derive(Clone)]
pub(super) struct Invalid {
    pub conntrack: Option<Box<ConntrackReport>>,
    pub tracked: Option<bool>,
    /// Why conntrack let it through without its NAT (`invalid_reason`).
    pub reason: ReasonText,
    pub fate: Fate,
}

impl Invalid {
    /// A packet whose verdict was not shown: the budget suppressed it, or its record was lost.
    /// The kernel's match stands; the entry behind it is looked up.
    pub fn unseen(shown: u8) -> Self {
        let reason = if shown == 0 {
            "unknown (the verdict was suppressed by the event budget)"
        } else {
            "unknown (the verdict's record did not arrive)"
        };
        Self {
            conntrack: None,
            tracked: None,
            reason: ReasonText::fixed(reason),
            fate: Fate::Passed,
        }
    }
}

/// What is known of the packet behind an attributed reset.
struct Known {
    /// Why conntrack let it through without its NAT (`invalid_reason`).
    reason: ReasonText,
    fate: Fate,
    enrichment: Option<Enrichment>,
    /// The entry its flow lost (`cause: "entry_lost"`).
    lost: Option<LostReport>,
}

/// A reset caused by an INVALID packet whose entry is not known yet (its verdict was not shown,
/// or went out without its lookup), waiting for an urgent lookup of the entry behind it.
struct Held {
    reset: Reset,
    report: ResetReport,
    reason: ReasonText,
    fate: Fate,
    deadline: Instant,
}

pub(super) struct Resets {
    /// By the token of their lookup.
    held: Bounded<u64, Held>,
    pub flows: Flows,
    /// Resets of packets of no tracked flow (see [`StrayTally`]).
    pub strays: StrayTally,
    /// Held resets that went out without their lookup's answer.
    pub enrichment_skipped: u64,
}

/// The report of a reset, sent (with the packet it answers) or received.
pub(super) fn reset_report(kind: Kind, r: &Reset, sh: &mut Shared) -> ResetReport {
    let p = &r.packet;
    let (a, b) = addrs(p);
    let known = p.family != 0;
    let has_packet = r.flags & flags::NO_HEADERS == 0;
    let caused = r.flags & flags::CAUSED_BY_INVALID != 0;
    let lost = r.cause.cause == Cause::EntryLost as u8;
    let reason = if r.flags & flags::NO_REASON_ARG != 0 {
        if kind == Kind::RstSent {
            Some(sh.rst_no_reason.clone())
        } else {
            None
        }
    } else {
        Some(match sh.rst_names.get(&r.reason) {
            Some(n) => n.clone(),
            None => r.reason.to_string().into(),
        })
    };
    if kind == Kind::RstSent {
        // The event carries the packet that caused the reset; the reset goes back.
        let (rflags, seq, ack) = if has_packet {
            let (f, s, a) = reset_for(p.tcp_flags, p.seq, p.ack, p.payload_len);
            (Some(TcpFlags(f)), Some(s), Some(a))
        } else {
            (Some(TcpFlags::RST), None, None)
        };
        ResetReport {
            packet: Packet {
                time: sh.time(r.header.ts_ns),
                netns: p.netns,
                hook: NfHook::Unknown,
                proto: IPPROTO_TCP,
                src: known.then_some(b),
                sport: known.then_some(p.dport),
                dst: known.then_some(a),
                dport: known.then_some(p.sport),
                flags: rflags,
                seq,
                ack,
                len: Some(0),
            },
            reason,
            iface: if p.netns == sh.ctx.own_netns {
                (sh.ctx.ifname)(p.ifindex)
            } else {
                None
            },
            trigger: has_packet.then_some(Trigger {
                flags: TcpFlags(p.tcp_flags),
                seq: p.seq,
                ack: p.ack,
                len: p.payload_len,
            }),
            socket: Some(r.flags & flags::NO_SOCKET == 0),
            caused_by_invalid: caused && !lost,
            cause: caused.then_some(if lost {
                ResetCause::EntryLost
            } else {
                ResetCause::InvalidPacket
            }),
            enrichment: None,
        }
    } else {
        ResetReport {
            packet: Packet {
                time: sh.time(r.header.ts_ns),
                netns: p.netns,
                hook: NfHook::Unknown,
                proto: IPPROTO_TCP,
                src: known.then_some(a),
                sport: known.then_some(p.sport),
                dst: known.then_some(b),
                dport: known.then_some(p.dport),
                flags: Some(TcpFlags::RST),
                seq: None,
                ack: None,
                len: Some(0),
            },
            reason,
            iface: None,
            trigger: None,
            socket: None,
            caused_by_invalid: false,
            cause: None,
            enrichment: None,
        }
    }
}

impl Resets {
    pub fn new() -> Self {
        Self {
            held: Bounded::new(MAX_WAITING),
            flows: Flows::default(),
            strays: StrayTally::default(),
            enrichment_skipped: 0,
        }
    }

    /// Reports a reset caused by an INVALID packet and, when that packet belonged to a flow
    /// conntrack was tracking, its attribution; when that is not known yet, first looks the
    /// entry up (urgently: attributions come before verdicts) and holds both until the answer,
    /// or [`FATE_WAIT`]. A reset of a packet of no tracked flow is a stray, never blamed.
    pub fn attribution(
        &mut self,
        raw: Reset,
        rep: ResetReport,
        invalid: Invalid,
        sh: &mut Shared,
        out: &mut Output,
    ) {
        let Invalid {
            conntrack: ct,
            tracked,
            reason,
            fate,
        } = invalid;
        let tracked = match tracked {
            Some(t) => Some(t),
            // The lookup found an entry, or there is no way to look one up.
            None if ct.is_some() => Some(true),
            None if !sh.ctx.lookups || raw.packet.family == 0 => Some(false),
            None => None,
        };
        if let Some(tracked) = tracked {
            if !tracked {
                self.stray(rep, false, out);
                return;
            }
            let known = Known {
                reason,
                fate,
                enrichment: None,
                lost: None,
            };
            let a = self.attribute(&raw, &rep, ct.as_deref(), known, sh);
            out.reports.push(Report::RstSent(rep));
            out.reports.push(Report::Attribution(Box::new(a)));
            return;
        }
        let token = sh.token();
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
        let held = Held {
            reset: raw,
            report: rep,
            reason,
            fate,
            deadline: sh.now + FATE_WAIT,
        };
        if let Some((_, old)) = self.held.insert(token, held) {
            self.enrichment_skipped += 1;
            self.release(old, None, true, sh, out);
        }
    }

    /// A reset of a packet conntrack let through without NAT that belonged to no flow it was
    /// tracking (or nothing shows it did): reported as such, counted, not attributed.
    fn stray(&mut self, mut rep: ResetReport, skipped: bool, out: &mut Output) {
        if rep.caused_by_invalid {
            self.strays.invalid += 1;
        } else {
            self.strays.midstream += 1;
        }
        rep.cause = Some(ResetCause::Stray);
        rep.enrichment = skipped.then_some(Enrichment::Skipped);
        out.reports.push(Report::RstSent(rep));
    }

    /// Whether `token` is the lookup of a held reset.
    pub fn holds(&self, token: u64) -> bool {
        self.held.contains_key(&token)
    }

    /// The answer to a held reset's lookup (`None`: refused by the enrichment queue).
    pub fn answer(
        &mut self,
        token: u64,
        entry: Option<Option<ConntrackReport>>,
        sh: &Shared,
        out: &mut Output,
    ) {
        if let Some(h) = self.held.remove(&token) {
            let skipped = entry.is_none();
            self.release(h, entry.flatten(), skipped, sh, out);
        }
    }

    /// Releases the held resets whose wait is over (all with `flush`), without their lookup.
    pub fn tick(&mut self, now: Instant, flush: bool, sh: &Shared, out: &mut Output) {
        for (_, h) in self.held.pop_oldest_while(|h| flush || h.deadline <= now) {
            self.enrichment_skipped += 1;
            self.release(h, None, true, sh, out);
        }
    }

    /// The time of the oldest held reset.
    pub fn held_since(&self) -> Option<Time> {
        self.held.oldest().map(|(_, h)| h.report.packet.time)
    }

    /// A held reset with its lookup's answer: attributed to the entry found; a stray when none
    /// was found, or when the lookup could not be made in time (nothing then shows the flow was
    /// tracked: `enrichment: "skipped"` on the reset says so).
    fn release(
        &mut self,
        h: Held,
        entry: Option<ConntrackReport>,
        skipped: bool,
        sh: &Shared,
        out: &mut Output,
    ) {
        if entry.is_none() {
            self.stray(h.report, skipped, out);
            return;
        }
        let known = Known {
            reason: h.reason,
            fate: h.fate,
            enrichment: skipped.then_some(Enrichment::Skipped),
            lost: None,
        };
        let a = self.attribute(&h.reset, &h.report, entry.as_ref(), known, sh);
        out.reports.push(Report::RstSent(h.report));
        out.reports.push(Report::Attribution(Box::new(a)));
    }

    /// A reset of a packet picked up mid-stream: attributed to the lost entry only when one
    /// was found, it had NAT (losing an untranslated flow's entry changes none of its packets),
    /// and the packet was that flow's answer travelling without it (the backend's reply
    /// reaching the client from the backend's address). Anything else - an ACK scan to a port,
    /// a segment of a flow nothing shows was tracked - is a stray.
    pub fn lost_attribution(
        &mut self,
        r: Reset,
        rep: ResetReport,
        lost: LostReport,
        sh: &Shared,
        out: &mut Output,
    ) {
        let (src, dst) = addrs(&r.packet);
        let blamed = lost.entry.as_ref().is_some_and(|e| {
            e.nat()
                && e.is_reply(
                    SocketAddr::new(src, r.packet.sport),
                    SocketAddr::new(dst, r.packet.dport),
                )
        });
        if !blamed {
            self.stray(rep, false, out);
            return;
        }
        let reason = ReasonText::fixed(entry_lost_reason(lost.how));
        let known = Known {
            reason,
            fate: Fate::Passed,
            enrichment: None,
            lost: Some(lost),
        };
        let a = self.attribute(&r, &rep, None, known, sh);
        out.reports.push(Report::RstSent(rep));
        out.reports.push(Report::Attribution(Box::new(a)));
    }

    /// The attribution of a reset, counted in its flow's row of the summary.
    fn attribute(
        &mut self,
        r: &Reset,
        reset: &ResetReport,
        ct: Option<&ConntrackReport>,
        known: Known,
        sh: &Shared,
    ) -> AttributionReport {
        let a = attribution_report(r, reset, ct, known, sh);
        self.flows.count(&a);
        a
    }
}

fn attribution_report(
    r: &Reset,
    reset: &ResetReport,
    ct: Option<&ConntrackReport>,
    known: Known,
    sh: &Shared,
) -> AttributionReport {
    let Known {
        reason: invalid_reason,
        fate,
        enrichment,
        lost,
    } = known;
    let p = &r.packet;
    let (src, dst) = addrs(p);
    // Who was who comes from the flow's entry (the lost one, or the one conntrack had),
    // never from the reset's direction: client = original source, Service = original
    // destination (before DNAT), backend = reply source. Only a verdict on a kernel with
    // neither ctnetlink nor an entry in the reason record has none: its packet's ends.
    let (client, service, backend) = match (ct, lost.as_ref().and_then(|l| l.entry.as_ref())) {
        (_, Some(e)) => (Some(e.orig_src), Some(e.orig_dst), e.reply_src),
        (Some(c), _) => (
            Some(SocketAddr::new(c.orig_src, c.orig_sport)),
            Some(SocketAddr::new(c.orig_dst, c.orig_dport)),
            SocketAddr::new(c.reply_src, c.reply_sport),
        ),
        _ => (
            Some(SocketAddr::new(dst, p.dport)),
            None,
            SocketAddr::new(src, p.sport),
        ),
    };
    // Attributions are TCP: the reset answers a TCP packet.
    let service_name = sh.service_name(service, Some(backend), conntrack_common::IPPROTO_TCP);
    let (client, service, backend) = (
        client.map(Endpoint::from),
        service.map(Endpoint::from),
        Endpoint::from(backend),
    );
    AttributionReport {
        time: reset.packet.time,
        client,
        service,
        backend,
        reset_src: Endpoint::new(reset.packet.src, reset.packet.sport),
        reset_dst: Endpoint::new(reset.packet.dst, reset.packet.dport),
        reset_netns: reset.packet.netns,
        reset_reason: reset.reason.clone(),
        invalid_netns: r.cause.netns,
        invalid_hook: NfHook::of(r.cause.hook),
        invalid_reason,
        invalid_time: sh.time(r.cause.ts_ns),
        seq: p.seq,
        ack: p.ack,
        delay_us: r.header.ts_ns.saturating_sub(r.cause.ts_ns) / 1000,
        fate,
        cause: if lost.is_some() {
            ResetCause::EntryLost
        } else {
            ResetCause::InvalidPacket
        },
        lost,
        enrichment,
        service_name,
    }
}
