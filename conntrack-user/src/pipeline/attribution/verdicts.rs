//! INVALID verdicts: joined with the reason conntrack logged, their fate (a later drop) and
//! their entry, then reported once.

use std::time::Instant;

use conntrack_common::{flags, ips, Drop, Reason, Verdict, IPPROTO_TCP, NO_REASON};

use super::*;

impl Correlator {
    /// A verdict whose wait is over goes out with what is known.
    pub(super) fn expire(&mut self, id: VerdictId, out: &mut Output) {
        if let Some(p) = self.pending.get_mut(&id) {
            if let Some(t) = p.lookup.take() {
                self.tokens.remove(&t);
                p.report.enrichment = Some("skipped");
                self.enrichment_skipped += 1;
            }
        }
        self.finish(id, out);
    }

    pub(super) fn finish(&mut self, id: VerdictId, out: &mut Output) {
        let Some(mut p) = self.pending.remove(&id) else {
            return;
        };
        // Named now, when the entry's lookup (if any) is in.
        p.report.service_name = self.invalid_service_name(&p.report);
        if self.recent_order.len() >= RECENT {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        let recent = Recent {
            conntrack: p.report.conntrack.clone(),
            tracked: p.report.tracked,
            reason: p.report.reason.clone(),
            fate: p.report.fate,
        };
        out.reports.push(Report::Invalid(p.report));
        for (raw, rep) in p.resets {
            let (ct, reason) = (recent.conntrack.clone(), recent.reason.clone());
            self.attribution(raw, rep, ct, recent.tracked, reason, recent.fate, out);
        }
        self.recent.insert(id, recent);
        self.recent_order.push_back(id);
    }

    pub(super) fn reason_info(&self, r: &Reason) -> ReasonInfo {
        let fmt = crate::pipeline::reason::format_string(r);
        let state = self
            .ctx
            .ct_layout
            .as_ref()
            .and_then(|l| crate::pipeline::reason::tcp_state(r, l));
        let conntrack = self
            .ctx
            .ct_layout
            .as_ref()
            .and_then(|l| crate::pipeline::reason::conntrack(r, l));
        let (seq, ack) = (r.packet.seq, r.packet.ack);
        ReasonInfo {
            text: crate::pipeline::reason::render(&fmt, r.args, state),
            missed_by: crate::pipeline::reason::missed_by(&fmt, r.args[0], seq, ack).or_else(
                || crate::pipeline::reason::missed_by_window(&fmt, conntrack.as_ref(), seq, ack),
            ),
            conntrack,
            // A refusal with an entry: was it one conntrack was already tracking, or one this
            // very packet was about to create (e.g. "invalid new" for a stray FIN)?
            tracked: (r.has_ct != 0).then_some(r.ct_status & ips::CONFIRMED != 0),
        }
    }

    /// A TCP packet conntrack logged but did not mark INVALID: 6.1+ IGNORE (out of window in a
    /// way conntrack tolerates: it keeps the entry and the NAT).
    pub(super) fn ignored(&mut self, r: &Reason, out: &mut Output) {
        let p = &r.packet;
        if !self.ctx.verdicts || p.proto != IPPROTO_TCP || p.family == 0 {
            self.reasons_unmatched += 1;
            return;
        }
        let info = self.reason_info(r);
        let (src, dst) = addrs(p);
        let mut report = InvalidReport {
            time: self.time(r.header.ts_ns),
            netns: p.netns,
            hook: Hook::name_of(r.hook),
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
            tracked: info.tracked,
            enrichment: None,
            service_name: None,
        };
        report.service_name = self.invalid_service_name(&report);
        out.reports.push(Report::Ignored(report));
    }

    pub(super) fn invalid(&mut self, v: Verdict, now: Instant, out: &mut Output) {
        let p = &v.packet;
        let (src, dst) = addrs(p);
        let tcp = v.flags & flags::NOT_TCP == 0 && v.flags & flags::NO_HEADERS == 0;
        let info = match self.reasons.remove(&v.skb) {
            Some(r) if v.header.ts_ns.wrapping_sub(r.reason.header.ts_ns) <= REASON_MAX_AGE_NS => {
                Some(self.reason_info(&r.reason))
            }
            _ => None,
        };
        let (reason, missed_by, kernel_ct, tracked) = match (info, &self.ctx.reason_unknown) {
            (Some(i), _) => (i.text, i.missed_by, i.conntrack, i.tracked),
            (None, Some(why)) => (why.clone(), None, None, None),
            (None, None) => (
                "unknown (conntrack logged no reason for this packet: no entry was found or created for it)".to_string(),
                None,
                None,
                None,
            ),
        };
        // Without the kernel's word on the entry, its lookup tells whether the flow was tracked.
        let lookup = if tracked.is_none() && tcp && self.ctx.lookups {
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
            hook: Hook::name_of(v.hook),
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
            tracked,
            enrichment: None,
            service_name: None,
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

    pub(super) fn drop(&mut self, d: Drop, out: &mut Output) {
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
            (NO_REASON, _) | (_, None) => Fate::Unknown,
            (r, Some(nf)) if r == nf => Fate::Dropped,
            _ => Fate::Passed,
        };
        p.report.drop_reason = Some(match self.ctx.drop_reasons.get(&d.reason) {
            Some(n) => crate::kernel::btf::short_reason(n).to_string(),
            None if d.reason == NO_REASON => {
                "unknown (kfree_skb has no reason on this kernel)".into()
            }
            None => d.reason.to_string(),
        });
        p.fate_done = true;
        if p.lookup.is_none() {
            self.finish(id, out);
        }
    }
}
