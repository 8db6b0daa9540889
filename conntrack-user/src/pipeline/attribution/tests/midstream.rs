//! Table pressure and lost entries: `midstream` records, their lost entries, and the
//! `entry_lost` attributions (or strays) of their resets.

use super::*;
use crate::{node::netlink::Tuple, pipeline::events::addrs};

pub(super) fn midstream_of(skb: u64, ts: u64) -> Event {
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

pub(super) fn gone_for(how: How) -> Gone {
    use crate::node::netlink::{Destroyed, Entry};
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
                status: crate::node::netlink::IPS_ASSURED,
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
    assert_eq!(a.cause, ResetCause::EntryLost);
    assert_eq!(
        a.service.map(|e| e.to_string()).as_deref(),
        Some("10.96.0.10:80")
    );
    assert_eq!(a.lost.as_ref().unwrap().how, How::Deleted);
}

/// An ACK scan: ACK segments to a port nothing was talking to are picked up mid-stream and
/// reset by the host they went to. No lost entry is behind them (or only one whose flow the
/// segment does not answer): strays, never `entry_lost` attributions.
#[test]
fn resets_of_midstream_packets_no_lost_entry_explains_are_strays() {
    let mut c = Correlator::new(ctx());
    let mut out = Output::default();
    let now = Instant::now();
    for i in 0..10u64 {
        let mut m = midstream_of(0x100 + i, 1_000 + i);
        let mut r = caused_reset(0x100 + i, 1);
        r.cause.cause = Cause::EntryLost as u8;
        r.cause.ts_ns = 1_000 + i;
        // Half of them go client -> pod (the scan's direction: the lost entry's original
        // direction after DNAT, not its reply).
        if i % 2 == 1 {
            for p in [
                match &mut m {
                    Event::Pressure(_, p) => &mut p.packet,
                    _ => unreachable!(),
                },
                &mut r.packet,
            ] {
                std::mem::swap(&mut p.saddr, &mut p.daddr);
                std::mem::swap(&mut p.sport, &mut p.dport);
            }
        }
        c.event(m, now, &mut out);
        c.event(Event::Reset(Kind::RstSent, r), now, &mut out);
    }
    // The entry of the even ones' flow... is not lost; an entry of another flow is.
    let mut other = gone_for(How::Deleted);
    other.destroyed.entry.orig.sport = 1;
    other.destroyed.entry.reply.dport = 1;
    c.gone(vec![other], &mut out);
    c.tick(now + MIDSTREAM_WAIT, true, &mut out);
    assert!(
        kinds(&out).iter().all(|k| *k != "attribution"),
        "{:?}",
        kinds(&out)
    );
    assert_eq!(out.reports.iter().filter(|r| r.is_stray()).count(), 10);
    assert_eq!(
        c.strays(),
        StrayTally {
            invalid: 0,
            midstream: 10
        }
    );
    // A lost entry of a flow without NAT: losing it changed nothing, so nothing is blamed.
    let mut c = Correlator::new(ctx());
    let mut out = Output::default();
    let mut plain = gone_for(How::Expired);
    plain.destroyed.entry.orig.dst = plain.destroyed.entry.reply.src;
    plain.destroyed.entry.orig.dport = plain.destroyed.entry.reply.sport;
    c.event(midstream_of(0xaa, 1_000), now, &mut out);
    let mut r = caused_reset(0xaa, 1);
    r.cause.cause = Cause::EntryLost as u8;
    c.event(Event::Reset(Kind::RstSent, r), now, &mut out);
    c.gone(vec![plain], &mut out);
    assert_eq!(kinds(&out), ["midstream", "rst_sent"]);
    assert!(out.reports[1].is_stray());
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

/// With the destroy watcher running, a midstream record waits for it beyond the fixed wait (a
/// slow watcher thread must not turn a known lost entry into `unknown`), and goes as soon as
/// the watcher is past the packet's time.
#[test]
fn with_a_watcher_a_midstream_waits_until_the_watcher_is_past_it() {
    let mut c = Correlator::new(ctx());
    let mut out = Output::default();
    let now = Instant::now();
    c.batch(Batch {
        watermark: Some(900),
        ..Default::default()
    });
    c.event(midstream_of(0xaa, 1_000), now, &mut out);
    // Another flow (another client port).
    let mut other = midstream_of(0xab, 2_000);
    if let Event::Pressure(_, p) = &mut other {
        p.packet.dport += 1;
    }
    c.event(other, now, &mut out);
    c.tick(now + FATE_WAIT * 4, false, &mut out);
    assert!(out.reports.is_empty(), "the watcher is behind both");
    // The watcher caught up to 1 500 and brought the first flow's entry.
    c.batch(Batch {
        watermark: Some(1_500),
        ..Default::default()
    });
    c.gone(vec![gone_for(How::Expired)], &mut out);
    c.tick(now + FATE_WAIT * 4, false, &mut out);
    assert_eq!(kinds(&out), ["midstream"]);
    let Report::Midstream(m) = &out.reports[0] else {
        panic!()
    };
    assert_eq!((m.lost.how, m.lost.certain), (How::Expired, true));
    // Past the second one with nothing for it: it goes at once, unknown ...
    c.batch(Batch {
        watermark: Some(2_500),
        ..Default::default()
    });
    c.tick(now + FATE_WAIT * 4, false, &mut out);
    assert_eq!(kinds(&out), ["midstream", "midstream"]);
    // ... and a stalled watcher holds none longer than MIDSTREAM_WAIT.
    let mut third = midstream_of(0xac, 3_000);
    if let Event::Pressure(_, p) = &mut third {
        p.packet.dport += 2;
    }
    c.event(third, now, &mut out);
    c.tick(now + MIDSTREAM_WAIT - FATE_WAIT, false, &mut out);
    assert_eq!(out.reports.len(), 2);
    c.tick(now + MIDSTREAM_WAIT, false, &mut out);
    assert_eq!(out.reports.len(), 3);
}

/// Lost entries and table pressure are named too: by the lost entry's Service address when it
/// is known (the backend here also serves another Service, which comes first in order), by the
/// refused packet's destination, else by the packet's backend.
#[test]
fn lost_entries_and_table_pressure_carry_the_service_name() {
    use crate::node::services::{parse_iptables_save, Builder, ServiceLookup};
    let save = "\
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"shop/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m comment --comment \"aaa/other:x cluster IP\" -m tcp --dport 80 -j KUBE-SVC-CCCCCCCCCCCCCCCC
-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SVC-CCCCCCCCCCCCCCCC -j KUBE-SEP-DDDDDDDDDDDDDDDD
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m tcp -j DNAT --to-destination 10.0.2.2:8080
-A KUBE-SEP-DDDDDDDDDDDDDDDD -p tcp -m tcp -j DNAT --to-destination 10.0.2.2:8080
";
    let mut b = Builder::default();
    parse_iptables_save(save, &mut b);
    let mut c = Correlator::new(ctx());
    c.set_service_names(Some(ServiceLookup::fixed(b.finish())));
    let mut out = Output::default();
    let now = Instant::now();

    // A midstream reply whose entry was deleted, and the reset it caused.
    c.event(midstream_of(0xaa, 1_000), now, &mut out);
    let mut r = caused_reset(0xaa, 1);
    r.cause.cause = Cause::EntryLost as u8;
    c.event(Event::Reset(Kind::RstSent, r), now, &mut out);
    c.gone(vec![gone_for(How::Deleted)], &mut out);
    // An evicted entry.
    c.gone(vec![gone_for(How::Evicted)], &mut out);
    // A new flow refused by a full table: client -> Service.
    let mut p = conntrack_common::Pressure {
        skb: 0xbb,
        entries: 40,
        ..Default::default()
    };
    p.header.kind = Kind::TableFull as u8;
    p.packet = packet();
    p.packet.saddr[..4].copy_from_slice(&[10, 0, 1, 2]);
    p.packet.daddr[..4].copy_from_slice(&[10, 96, 0, 10]);
    (p.packet.sport, p.packet.dport) = (40001, 80);
    c.event(Event::Pressure(Kind::TableFull, p), now, &mut out);
    // A midstream reply whose lost entry ct-trace never saw: only the backend is known.
    let mut m = midstream_of(0xac, 2_000);
    if let Event::Pressure(_, p) = &mut m {
        p.packet.dport = 40002;
    }
    c.event(m, now, &mut out);
    c.tick(now + FATE_WAIT, false, &mut out);

    assert_eq!(
        kinds(&out),
        [
            "midstream",
            "rst_sent",
            "attribution",
            "evicted",
            "table_full",
            "midstream"
        ]
    );
    let names: Vec<Option<&str>> = out
        .reports
        .iter()
        .map(|r| match r {
            Report::Midstream(m) => m.service_name.as_deref(),
            Report::Attribution(a) => a.service_name.as_deref(),
            Report::Evicted(e) => e.service_name.as_deref(),
            Report::TableFull(t) => t.service_name.as_deref(),
            _ => None,
        })
        .collect();
    let web = Some("shop/web:http");
    assert_eq!(names, [web, None, web, web, web, Some("aaa/other:x")]);
    let text = out.reports[4].text();
    assert!(text.ends_with(" service_name=shop/web:http"), "{text}");
}
