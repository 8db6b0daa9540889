//! Resets: matched in the kernel to the packet that caused them, reported with their
//! attribution (client -> Service -> backend) and summed per flow.

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
    /// Reports a reset and its attribution; when the entry behind it is not known, first
    /// looks it up (urgently: attributions come before verdicts) and holds both until the
    /// answer, or [`FATE_WAIT`].
    pub(super) fn attribution(
        &mut self,
        raw: Reset,
        rep: ResetReport,
        ct: Option<ConntrackReport>,
        reason: String,
        fate: Fate,
        out: &mut Output,
    ) {
        if ct.is_some() || !self.ctx.lookups || raw.packet.family == 0 {
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
                caused_by_invalid: caused && !lost,
                cause: caused.then_some(if lost { "entry_lost" } else { "invalid_packet" }),
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

    pub(super) fn release_held(
        &mut self,
        h: Held,
        entry: Option<ConntrackReport>,
        skipped: bool,
        out: &mut Output,
    ) {
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
        // Attributions are TCP: the reset answers a TCP packet.
        let service_name = self.service_name(
            service.as_deref().and_then(|s| s.parse().ok()),
            backend.parse().ok(),
            conntrack_common::IPPROTO_TCP,
        );
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
        if f.first.is_empty() {
            f.first = a.time.clone();
        }
        f.last = a.time.clone();
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
