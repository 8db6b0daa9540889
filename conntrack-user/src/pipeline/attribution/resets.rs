//! Resets: matched in the kernel to the packet that caused them, reported with their
//! attribution (client -> Service -> backend) and summed per flow.

use std::net::SocketAddr;

use conntrack_common::{flags, Cause, Kind, Reset, IPPROTO_TCP};

use super::*;

/// What is known of the packet behind an attributed reset.
pub(super) struct Known {
    /// Why conntrack let it through without its NAT (`invalid_reason`).
    pub reason: String,
    pub fate: Fate,
    pub enrichment: Option<&'static str>,
    /// The entry its flow lost (`cause: "entry_lost"`).
    pub lost: Option<LostReport>,
}

impl Correlator {
    /// Reports a reset caused by an INVALID packet and, when that packet belonged to a flow
    /// conntrack was tracking, its attribution; when that is not known yet, first looks the
    /// entry up (urgently: attributions come before verdicts) and holds both until the answer,
    /// or [`FATE_WAIT`]. A reset of a packet of no tracked flow is a stray, never blamed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attribution(
        &mut self,
        raw: Reset,
        rep: ResetReport,
        ct: Option<ConntrackReport>,
        tracked: Option<bool>,
        reason: String,
        fate: Fate,
        out: &mut Output,
    ) {
        let tracked = match tracked {
            Some(t) => Some(t),
            // The lookup found an entry, or there is no way to look one up.
            None if ct.is_some() => Some(true),
            None if !self.ctx.lookups || raw.packet.family == 0 => Some(false),
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
            let a = self.attribute(&raw, &rep, ct.as_ref(), known);
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

    /// A reset of a packet conntrack let through without NAT that belonged to no flow it was
    /// tracking (or nothing shows it did): reported as such, counted, not attributed.
    pub(super) fn stray(&mut self, mut rep: ResetReport, skipped: bool, out: &mut Output) {
        if rep.caused_by_invalid {
            self.strays.invalid += 1;
        } else {
            self.strays.midstream += 1;
        }
        rep.cause = Some("stray");
        rep.enrichment = skipped.then_some("skipped");
        out.reports.push(Report::RstSent(rep));
    }

    pub(super) fn reset_report(&mut self, kind: Kind, r: &Reset) -> ResetReport {
        let p = &r.packet;
        let (a, b) = addrs(p);
        let known = p.family != 0;
        let has_packet = r.flags & flags::NO_HEADERS == 0;
        let caused = r.flags & flags::CAUSED_BY_INVALID != 0;
        let lost = r.cause.cause == Cause::EntryLost as u8;
        let reason = if r.flags & flags::NO_REASON_ARG != 0 {
            if kind == Kind::RstSent {
                Some("unknown (tcp_send_reset has no reason argument before Linux 6.10)".into())
            } else {
                None
            }
        } else {
            Some(match self.ctx.rst_reasons.get(&r.reason) {
                Some(n) => crate::kernel::btf::short_reason(n).to_string(),
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
                caused_by_invalid: caused && !lost,
                cause: caused.then_some(if lost { "entry_lost" } else { "invalid_packet" }),
                enrichment: None,
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
                cause: None,
                enrichment: None,
            }
        }
    }

    pub(super) fn reset(&mut self, kind: Kind, r: Reset, out: &mut Output) {
        let report = self.reset_report(kind, &r);
        if kind != Kind::RstSent || report.cause.is_none() {
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
            let (ct, tracked, reason, fate) =
                (v.conntrack.clone(), v.tracked, v.reason.clone(), v.fate);
            self.attribution(r, report, ct, tracked, reason, fate, out);
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
        self.attribution(r, report, None, None, reason, Fate::Passed, out);
    }

    /// A held reset with its lookup's answer: attributed to the entry found; a stray when none
    /// was found, or when the lookup could not be made in time (nothing then shows the flow was
    /// tracked: `enrichment: "skipped"` on the reset says so).
    pub(super) fn release_held(
        &mut self,
        h: Held,
        entry: Option<ConntrackReport>,
        skipped: bool,
        out: &mut Output,
    ) {
        if entry.is_none() {
            self.stray(h.report, skipped, out);
            return;
        }
        let known = Known {
            reason: h.reason,
            fate: h.fate,
            enrichment: skipped.then_some("skipped"),
            lost: None,
        };
        let a = self.attribute(&h.reset, &h.report, entry.as_ref(), known);
        out.reports.push(Report::RstSent(h.report));
        out.reports.push(Report::Attribution(a));
    }

    pub(super) fn attribute(
        &mut self,
        r: &Reset,
        reset: &ResetReport,
        ct: Option<&ConntrackReport>,
        known: Known,
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
        let service_name = self.service_name(service, Some(backend), conntrack_common::IPPROTO_TCP);
        let (client, service, backend) = (
            client.map(|a| a.to_string()),
            service.map(|a| a.to_string()),
            backend.to_string(),
        );
        let a = AttributionReport {
            time: reset.time,
            client: client.clone(),
            service: service.clone(),
            backend: backend.clone(),
            reset_src: endpoint_of(reset.src, reset.sport),
            reset_dst: endpoint_of(reset.dst, reset.dport),
            reset_netns: reset.netns,
            reset_reason: reset.reason.clone(),
            invalid_netns: r.cause.netns,
            invalid_hook: Hook::name_of(r.cause.hook),
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
            service_name,
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
        if f.resets == 1 {
            f.first = a.time;
        }
        f.last = a.time;
        a
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
                first: s.first,
                last: s.last,
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
