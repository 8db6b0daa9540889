//! Table pressure and lost entries: `table_full` reports, `midstream` records waiting for the
//! destroy event of the entry their flow lost, and the entries seen going. Owns the waiting
//! records, what reported ones found (for later resets) and the lost entries; the resets'
//! `entry_lost` attributions are made by the resets part with what this one hands back.

use std::time::{Duration, Instant};

use conntrack_common::{Pressure, Reset, IPPROTO_TCP, IPPROTO_UDP};

use super::shared::{Output, Shared, VerdictId, FATE_WAIT, MAX_PENDING, RECENT};
use crate::{
    event::NfHook,
    event::{Packet, Report, ResetReport, Segment, TcpFlags, Time},
    node::netlink::Tuple,
    pipeline::bounded::Bounded,
    pipeline::events::addrs,
    pipeline::lost::{
        EvictedReport, FlowEntry, Gone, How, LostEntries, LostReport, MidstreamReport,
        TableFullReport,
    },
};

/// How long a `midstream` record waits at most for the destroy event of the entry its flow
/// lost, when the destroy watcher runs. It normally goes as soon as the watcher has handed over
/// every event up to the record's time (the batch's `watermark`); this bound covers a stalled
/// watcher. The kernel sends the event of an entry that expired in this very lookup before it
/// creates the new one (`nf_ct_gc_expired()` in `__nf_conntrack_find_get()`,
/// net/netfilter/nf_conntrack_core.c), but the watcher is another thread reading another
/// socket: on a loaded (or emulated) CPU it can lag far behind the ring buffer.
pub const MIDSTREAM_WAIT: Duration = Duration::from_secs(1);

pub(super) struct PendingMid {
    report: MidstreamReport,
    tuple: Tuple,
    /// The packet's time (CLOCK_BOOTTIME): once the watcher is past it, no destroy event that
    /// could name the lost entry is still to come.
    ts_ns: u64,
    deadline: Instant,
    resets: Vec<(Reset, ResetReport)>,
}

/// A waiting record that is complete: with the entry its flow lost (or `unknown`).
pub(super) type MidDone = (VerdictId, PendingMid, LostReport);

pub(super) struct Midstream {
    /// `midstream` records waiting for the destroy event of the entry their flow lost (until
    /// the watcher is past them, at most [`MIDSTREAM_WAIT`]), and the resets they caused
    /// meanwhile.
    mids: Bounded<VerdictId, PendingMid>,
    /// What reported `midstream` records found, for resets that arrive later.
    recent: Bounded<VerdictId, LostReport>,
    /// Entries seen going (ctnetlink destroy events), for `midstream` and `entry_lost`.
    lost: LostEntries,
    /// `evicted` events that were inferred, not certain (how many there were in all is the
    /// output stage's count of the kind).
    pub evicted_inferred: u64,
}

fn entries(p: &Pressure, sh: &Shared) -> Option<u32> {
    if p.entries != u32::MAX {
        Some(p.entries)
    } else {
        sh.batch.entries
    }
}

fn entries_source(p: &Pressure) -> &'static str {
    if p.entries != u32::MAX {
        "kernel"
    } else {
        "ct-trace"
    }
}

fn lost_report(g: &Gone, sh: &Shared) -> LostReport {
    LostReport {
        how: g.how,
        certain: g.certain,
        time: Some(sh.time(g.boot_ns)),
        entry: Some(FlowEntry::of(&g.destroyed.entry)),
    }
}

/// A packet conntrack refused because its table was full.
pub(super) fn table_full(p: &Pressure, sh: &Shared, out: &mut Output) {
    let k = &p.packet;
    let (src, dst) = addrs(k);
    let tcp = k.proto == IPPROTO_TCP;
    let ports = tcp || k.proto == IPPROTO_UDP;
    let (sport, dport) = (ports.then_some(k.sport), ports.then_some(k.dport));
    // The refused packet opens the flow: its destination is the Service address.
    let service_name = sh.packet_service_name(src, sport, dst, dport, k.proto);
    out.reports.push(Report::TableFull(TableFullReport {
        packet: Packet {
            time: sh.time(p.header.ts_ns),
            netns: k.netns,
            hook: NfHook::Unknown,
            proto: k.proto,
            src: Some(src),
            sport,
            dst: Some(dst),
            dport,
            flags: tcp.then_some(TcpFlags(k.tcp_flags)),
            seq: None,
            ack: None,
            len: None,
        },
        entries: entries(p, sh),
        entries_source: entries_source(p),
        max: sh.batch.ct_max,
        service_name,
    }));
}

impl Midstream {
    pub fn new() -> Self {
        Self {
            mids: Bounded::new(MAX_PENDING),
            recent: Bounded::new(RECENT),
            lost: LostEntries::default(),
            evicted_inferred: 0,
        }
    }

    /// A `midstream` record waits for the entry its flow lost. Returns the record a full room
    /// evicted (complete as `unknown`), then this one when the lost entry is already known.
    pub fn wait(
        &mut self,
        p: &Pressure,
        now: Instant,
        sh: &Shared,
    ) -> (Option<MidDone>, Option<MidDone>) {
        let k = &p.packet;
        let (src, dst) = addrs(k);
        let tuple = Tuple {
            src,
            sport: k.sport,
            dst,
            dport: k.dport,
            proto: IPPROTO_TCP,
        };
        let report = MidstreamReport::new(
            (sh.time(p.header.ts_ns), k.netns, NfHook::of(p.hook)),
            Segment {
                src,
                sport: k.sport,
                dst,
                dport: k.dport,
                flags: TcpFlags(k.tcp_flags),
                seq: k.seq,
                ack: k.ack,
                len: k.payload_len,
            },
            (entries(p, sh), entries_source(p), sh.batch.ct_max),
        );
        let id = (p.skb, p.header.ts_ns);
        let wait = if sh.batch.watermark.is_some() {
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
        let evicted = self
            .mids
            .insert(id, pending)
            .map(|(old, m)| (old, m, LostReport::unknown()));
        let found = match self.lost.find(&tuple, p.header.ts_ns) {
            Some(g) => {
                let l = lost_report(g, sh);
                self.mids.remove(&id).map(|m| (id, m, l))
            }
            None => None,
        };
        (evicted, found)
    }

    /// Entries that went: `evicted` ones are reported; every one is remembered. Returns the
    /// waiting records they complete, oldest first.
    pub fn gone(&mut self, gone: Vec<Gone>, sh: &Shared, out: &mut Output) -> Vec<MidDone> {
        for g in gone {
            if g.how == How::Evicted {
                self.evicted_inferred += u64::from(!g.certain);
                let entry = FlowEntry::of(&g.destroyed.entry);
                let service_name = sh.entry_service_name(&entry);
                out.reports.push(Report::Evicted(EvictedReport {
                    time: sh.time(g.boot_ns),
                    netns: sh.ctx.own_netns,
                    entries: g.entries,
                    max: sh.batch.ct_max,
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
            .filter_map(|(id, m)| Some((*id, lost_report(self.lost.find(&m.tuple, m.ts_ns)?, sh))))
            .collect();
        found
            .into_iter()
            .filter_map(|(id, l)| self.mids.remove(&id).map(|m| (id, m, l)))
            .collect()
    }

    /// The records whose wait is over (all with `flush`), oldest first: complete as `unknown`.
    pub fn due(&mut self, now: Instant, flush: bool, watermark: Option<u64>) -> Vec<MidDone> {
        self.mids
            .pop_oldest_while(|m| {
                flush || m.deadline <= now || watermark.is_some_and(|w| w >= m.ts_ns)
            })
            .into_iter()
            .map(|(id, m)| (id, m, LostReport::unknown()))
            .collect()
    }

    /// The time of the oldest waiting record.
    pub fn held_since(&self) -> Option<Time> {
        self.mids.oldest().map(|(_, m)| m.report.packet().time)
    }

    /// Reports a complete record; returns the resets it caused meanwhile, for their
    /// attribution to `lost`, right after it.
    pub fn finish(
        &mut self,
        (id, mut m, lost): MidDone,
        sh: &Shared,
        out: &mut Output,
    ) -> Vec<(Reset, ResetReport)> {
        // The lost entry names the Service; without it, the packet (a backend's reply or a
        // client's segment) does.
        m.report.service_name = match &lost.entry {
            Some(e) => sh.entry_service_name(e),
            None => None,
        }
        .or_else(|| sh.service_name_of(m.report.packet()));
        m.report.lost = lost.clone();
        out.reports.push(Report::Midstream(Box::new(m.report)));
        self.recent.insert(id, lost);
        m.resets
    }

    /// A reset answering a packet picked up mid-stream: kept with its record while that waits,
    /// else given back with the entry its flow lost, for its attribution.
    pub fn join_reset(
        &mut self,
        id: VerdictId,
        r: Reset,
        report: ResetReport,
        sh: &Shared,
    ) -> Option<(Reset, ResetReport, LostReport)> {
        if let Some(m) = self.mids.get_mut(&id) {
            m.resets.push((r, report));
            return None;
        }
        let lost = match self.recent.get(&id) {
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
                match self.lost.find(&t, r.header.ts_ns) {
                    Some(g) => lost_report(g, sh),
                    None => LostReport::unknown(),
                }
            }
        };
        Some((r, report, lost))
    }
}
