//! Table pressure and lost entries: `table_full` reports, `midstream` records waiting for the
//! destroy event of the entry their flow lost, and the `entry_lost` attributions of their resets.

use std::{net::SocketAddr, time::Instant};

use conntrack_common::{Pressure, Reset, IPPROTO_TCP, IPPROTO_UDP};

use super::*;

impl Correlator {
    pub(super) fn table_full(&mut self, p: &Pressure, out: &mut Output) {
        let k = &p.packet;
        let (src, dst) = addrs(k);
        let tcp = k.proto == IPPROTO_TCP;
        let ports = tcp || k.proto == IPPROTO_UDP;
        let (sport, dport) = (ports.then_some(k.sport), ports.then_some(k.dport));
        // The refused packet opens the flow: its destination is the Service address.
        let service_name = self.packet_service_name(src, sport, dst, dport, k.proto);
        out.reports.push(Report::TableFull(TableFullReport {
            time: self.time(p.header.ts_ns),
            netns: k.netns,
            entries: self.entries(p),
            entries_source: self.entries_source(p),
            max: self.ct_max,
            proto: k.proto,
            src,
            sport,
            dst,
            dport,
            flags: tcp.then(|| tcp_flags(k.tcp_flags)),
            service_name,
        }));
    }

    pub(super) fn entries(&self, p: &Pressure) -> Option<u32> {
        if p.entries != u32::MAX {
            Some(p.entries)
        } else {
            self.entries_now
        }
    }

    pub(super) fn entries_source(&self, p: &Pressure) -> &'static str {
        if p.entries != u32::MAX {
            "kernel"
        } else {
            "ct-trace"
        }
    }

    pub(super) fn lost_report(&self, g: &Gone) -> LostReport {
        LostReport {
            how: g.how,
            certain: g.certain,
            time: Some(self.time(g.boot_ns)),
            entry: Some(FlowEntry::of(&g.destroyed.entry)),
        }
    }

    pub(super) fn midstream(&mut self, p: &Pressure, now: Instant, out: &mut Output) {
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
            hook: Hook::name_of(p.hook),
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
            service_name: None,
        };
        let id = (p.skb, p.header.ts_ns);
        if self.mids.len() >= MAX_PENDING {
            if let Some(old) = self.mid_order.pop_front() {
                self.finish_mid(old, LostReport::unknown(), out);
            }
        }
        let wait = if self.destroy_watermark.is_some() {
            MIDSTREAM_WAIT
        } else {
            FATE_WAIT
        };
        let pending = PendingMid {
            report,
            tuple,
            ts_ns: p.header.ts_ns,
            deadline: now + wait,
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
                self.evicted_inferred += u64::from(!g.certain);
                let entry = FlowEntry::of(&g.destroyed.entry);
                let service_name = self.entry_service_name(&entry);
                out.reports.push(Report::Evicted(EvictedReport {
                    time: self.time(g.boot_ns),
                    netns: self.ctx.own_netns,
                    entries: g.entries,
                    max: self.ct_max,
                    entry,
                    age_s: g.destroyed.age_ns.map(|n| n as f64 / 1e9),
                    certain: g.certain,
                    service_name,
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

    pub(super) fn finish_mid(&mut self, id: VerdictId, lost: LostReport, out: &mut Output) {
        let Some(mut m) = self.mids.remove(&id) else {
            return;
        };
        m.report.lost = lost.clone();
        // The lost entry names the Service; without it, the packet (a backend's reply or a
        // client's segment) does.
        let r = &m.report;
        m.report.service_name = match &lost.entry {
            Some(e) => self.entry_service_name(e),
            None => None,
        }
        .or_else(|| {
            self.packet_service_name(r.src, Some(r.sport), r.dst, Some(r.dport), IPPROTO_TCP)
        });
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
    pub(super) fn reset_of_lost_entry(
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

    /// A reset of a packet picked up mid-stream: attributed to the lost entry only when one
    /// was found, it had NAT (losing an untranslated flow's entry changes none of its packets),
    /// and the packet was that flow's answer travelling without it (the backend's reply
    /// reaching the client from the backend's address). Anything else - an ACK scan to a port,
    /// a segment of a flow nothing shows was tracked - is a stray.
    pub(super) fn lost_attribution(
        &mut self,
        r: Reset,
        rep: ResetReport,
        lost: LostReport,
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
        let reason = format!(
            "entry lost ({}): conntrack picked the flow up mid-stream without the Service's NAT",
            how_name(lost.how)
        );
        let known = resets::Known {
            reason,
            fate: Fate::Passed,
            enrichment: None,
            lost: Some(lost),
        };
        let a = self.attribute(&r, &rep, None, known);
        out.reports.push(Report::RstSent(rep));
        out.reports.push(Report::Attribution(a));
    }
}
