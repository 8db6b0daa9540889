//! The kinds that hold a [`Packet`] write the bytes their derived `Serialize` wrote before the
//! part existed: the structs below are those kinds as they were (fields, order, attributes),
//! and random reports of every shape go through both, tagged as `Report` tags them.

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use crate::event::{
    ConntrackReport, Direction, Enrichment, Fate, FlowEntry, How, InvalidReport, LostReport,
    MidstreamReport, NfHook, Packet, ReasonText, Report, ResetCause, ResetReport, Segment,
    TableFullReport, TcpFlags, Time, Trigger,
};

#[derive(Serialize)]
struct OldReset {
    time: Time,
    netns: u32,
    src: Option<IpAddr>,
    sport: Option<u16>,
    dst: Option<IpAddr>,
    dport: Option<u16>,
    flags: Option<TcpFlags>,
    seq: Option<u32>,
    ack: Option<u32>,
    reason: Option<Arc<str>>,
    iface: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: Option<Trigger>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<bool>,
    caused_by_invalid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<ResetCause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enrichment: Option<Enrichment>,
}

#[derive(Serialize)]
struct OldInvalid {
    time: Time,
    netns: u32,
    hook: NfHook,
    in_iface: Option<Arc<str>>,
    out_iface: Option<Arc<str>>,
    proto: u8,
    src: IpAddr,
    sport: Option<u16>,
    dst: IpAddr,
    dport: Option<u16>,
    flags: Option<TcpFlags>,
    seq: Option<u32>,
    ack: Option<u32>,
    len: Option<u16>,
    reason: ReasonText,
    #[serde(skip_serializing_if = "Option::is_none")]
    missed_by: Option<u32>,
    fate: Fate,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_reason: Option<Arc<str>>,
    conntrack: Option<Box<ConntrackReport>>,
    tracked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enrichment: Option<Enrichment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_name: Option<Arc<str>>,
}

#[derive(Serialize)]
struct OldTableFull {
    time: Time,
    netns: u32,
    entries: Option<u32>,
    entries_source: &'static str,
    max: Option<u32>,
    proto: u8,
    src: IpAddr,
    sport: Option<u16>,
    dst: IpAddr,
    dport: Option<u16>,
    flags: Option<TcpFlags>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_name: Option<Arc<str>>,
}

#[derive(Serialize)]
struct OldMidstream {
    time: Time,
    netns: u32,
    hook: NfHook,
    entries: Option<u32>,
    entries_source: &'static str,
    max: Option<u32>,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    flags: TcpFlags,
    seq: u32,
    ack: u32,
    len: u16,
    lost: LostReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_name: Option<Arc<str>>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Old {
    RstSent(OldReset),
    RstReceived(OldReset),
    Invalid(OldInvalid),
    Ignored(OldInvalid),
    TableFull(OldTableFull),
    Midstream(OldMidstream),
}

/// A small deterministic generator (xorshift), so a failure names its case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn some<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (!self.next().is_multiple_of(3)).then(|| f(self))
    }
    fn text(&mut self) -> Arc<str> {
        let words = [
            "eth0",
            "NO_SOCKET",
            "quote \" and \\",
            "",
            "default/web:http",
        ];
        words[(self.next() % words.len() as u64) as usize].into()
    }
    fn ip(&mut self) -> IpAddr {
        let x = self.next();
        if x.is_multiple_of(2) {
            IpAddr::from((x as u32).to_be_bytes())
        } else {
            IpAddr::from((u128::from(x) << 64 | u128::from(x >> 7)).to_be_bytes())
        }
    }
    fn packet(&mut self) -> Packet {
        Packet {
            time: Time(self.next()),
            netns: self.next() as u32,
            hook: NfHook::of(self.next() as u8 % 6),
            proto: self.next() as u8,
            src: Some(self.ip()),
            sport: self.some(|g| g.next() as u16),
            dst: Some(self.ip()),
            dport: self.some(|g| g.next() as u16),
            flags: self.some(|g| TcpFlags(g.next() as u8)),
            seq: self.some(|g| g.next() as u32),
            ack: self.some(|g| g.next() as u32),
            len: self.some(|g| g.next() as u16),
        }
    }
    fn lost(&mut self) -> LostReport {
        let hows = [How::Evicted, How::Expired, How::Deleted, How::Unknown];
        let a = std::net::SocketAddr::new(self.ip(), self.next() as u16);
        LostReport {
            how: hows[(self.next() % 4) as usize],
            certain: self.next().is_multiple_of(2),
            time: self.some(|g| Time(g.next())),
            entry: self.some(|g| FlowEntry {
                proto: 6,
                orig_src: a,
                orig_dst: a,
                reply_src: a,
                reply_dst: a,
                tcp_state: g.some(|_| "ESTABLISHED"),
                assured: false,
            }),
        }
    }
}

fn reset(g: &mut Rng) -> (ResetReport, OldReset) {
    let mut packet = g.packet();
    // Resets without addresses have none of the tuple.
    if g.next().is_multiple_of(4) {
        (packet.src, packet.sport, packet.dst, packet.dport) = (None, None, None, None);
    }
    let causes = [
        ResetCause::InvalidPacket,
        ResetCause::EntryLost,
        ResetCause::Stray,
    ];
    let new = ResetReport {
        packet,
        reason: g.some(|g| g.text()),
        iface: g.some(|g| g.text()),
        trigger: g.some(|g| Trigger {
            flags: TcpFlags(g.next() as u8),
            seq: g.next() as u32,
            ack: g.next() as u32,
            len: g.next() as u16,
        }),
        socket: g.some(|g| g.next().is_multiple_of(2)),
        caused_by_invalid: g.next().is_multiple_of(2),
        cause: g.some(|g| causes[(g.next() % 3) as usize]),
        enrichment: g.some(|_| Enrichment::Skipped),
    };
    let old = reset_old(&new);
    (new, old)
}

fn invalid(g: &mut Rng) -> (InvalidReport, OldInvalid) {
    let fates = [Fate::Dropped, Fate::Passed, Fate::Unknown, Fate::Accepted];
    let new = InvalidReport {
        packet: g.packet(),
        in_iface: g.some(|g| g.text()),
        out_iface: g.some(|g| g.text()),
        reason: ReasonText::new(g.text()),
        missed_by: g.some(|g| g.next() as u32),
        fate: fates[(g.next() % 4) as usize],
        drop_reason: g.some(|g| g.text()),
        conntrack: g.some(|g| {
            Box::new(ConntrackReport {
                source: "kernel",
                direction: Direction::Original,
                orig_src: g.ip(),
                orig_sport: 1,
                orig_dst: g.ip(),
                orig_dport: 2,
                reply_src: g.ip(),
                reply_sport: 3,
                reply_dst: g.ip(),
                reply_dport: 4,
                tcp_state: None,
                assured: true,
                original_window: None,
                reply_window: None,
            })
        }),
        tracked: g.some(|g| g.next().is_multiple_of(2)),
        enrichment: g.some(|_| Enrichment::Skipped),
        service_name: g.some(|g| g.text()),
    };
    let p = &new.packet;
    let old = OldInvalid {
        time: p.time,
        netns: p.netns,
        hook: p.hook,
        in_iface: new.in_iface.clone(),
        out_iface: new.out_iface.clone(),
        proto: p.proto,
        src: p.src.unwrap(),
        sport: p.sport,
        dst: p.dst.unwrap(),
        dport: p.dport,
        flags: p.flags,
        seq: p.seq,
        ack: p.ack,
        len: p.len,
        reason: new.reason.clone(),
        missed_by: new.missed_by,
        fate: new.fate,
        drop_reason: new.drop_reason.clone(),
        conntrack: new.conntrack.clone(),
        tracked: new.tracked,
        enrichment: new.enrichment,
        service_name: new.service_name.clone(),
    };
    (new, old)
}

fn table_full(g: &mut Rng) -> (TableFullReport, OldTableFull) {
    let new = TableFullReport {
        packet: g.packet(),
        entries: g.some(|g| g.next() as u32),
        entries_source: if g.next().is_multiple_of(2) {
            "kernel"
        } else {
            "ct-trace"
        },
        max: g.some(|g| g.next() as u32),
        service_name: g.some(|g| g.text()),
    };
    let p = &new.packet;
    let old = OldTableFull {
        time: p.time,
        netns: p.netns,
        entries: new.entries,
        entries_source: new.entries_source,
        max: new.max,
        proto: p.proto,
        src: p.src.unwrap(),
        sport: p.sport,
        dst: p.dst.unwrap(),
        dport: p.dport,
        flags: p.flags,
        service_name: new.service_name.clone(),
    };
    (new, old)
}

fn midstream(g: &mut Rng) -> (MidstreamReport, OldMidstream) {
    let packet = g.packet();
    // Always TCP with its ports, flags, sequence numbers and length.
    let segment = Segment {
        src: packet.src.unwrap(),
        sport: g.next() as u16,
        dst: packet.dst.unwrap(),
        dport: g.next() as u16,
        flags: TcpFlags(g.next() as u8),
        seq: g.next() as u32,
        ack: g.next() as u32,
        len: g.next() as u16,
    };
    let mut new = MidstreamReport::new(
        (packet.time, packet.netns, packet.hook),
        segment,
        (
            g.some(|g| g.next() as u32),
            "kernel",
            g.some(|g| g.next() as u32),
        ),
    );
    new.lost = g.lost();
    new.service_name = g.some(|g| g.text());
    let p = new.packet();
    let old = OldMidstream {
        time: p.time,
        netns: p.netns,
        hook: p.hook,
        entries: new.entries,
        entries_source: new.entries_source,
        max: new.max,
        src: p.src.unwrap(),
        sport: p.sport.unwrap(),
        dst: p.dst.unwrap(),
        dport: p.dport.unwrap(),
        flags: p.flags.unwrap(),
        seq: p.seq.unwrap(),
        ack: p.ack.unwrap(),
        len: p.len.unwrap(),
        lost: new.lost.clone(),
        service_name: new.service_name.clone(),
    };
    (new, old)
}

#[test]
fn packet_kinds_write_the_bytes_their_derives_wrote() {
    let mut g = Rng(0x2545_f491_4f6c_dd1d);
    for case in 0..5_000 {
        let ((r, o), (r2, o2)) = (reset(&mut g), reset(&mut g));
        let ((i, oi), (i2, oi2)) = (invalid(&mut g), invalid(&mut g));
        let (t, ot) = table_full(&mut g);
        let (m, om) = midstream(&mut g);
        let pairs = [
            (Report::RstSent(r), Old::RstSent(o)),
            (Report::RstReceived(r2), Old::RstReceived(o2)),
            (Report::Invalid(i), Old::Invalid(oi)),
            (Report::Ignored(i2), Old::Ignored(oi2)),
            (Report::TableFull(t), Old::TableFull(ot)),
            (Report::Midstream(Box::new(m)), Old::Midstream(om)),
        ];
        for (new, old) in pairs {
            let old = serde_json::to_string(&old).unwrap();
            assert_eq!(new.json(), old, "case {case}");
            assert_eq!(serde_json::to_string(&new).unwrap(), old, "case {case}");
        }
    }
}

fn reset_old(r: &ResetReport) -> OldReset {
    let p = &r.packet;
    OldReset {
        time: p.time,
        netns: p.netns,
        src: p.src,
        sport: p.sport,
        dst: p.dst,
        dport: p.dport,
        flags: p.flags,
        seq: p.seq,
        ack: p.ack,
        reason: r.reason.clone(),
        iface: r.iface.clone(),
        trigger: r.trigger.clone(),
        socket: r.socket,
        caused_by_invalid: r.caused_by_invalid,
        cause: r.cause,
        enrichment: r.enrichment,
    }
}
