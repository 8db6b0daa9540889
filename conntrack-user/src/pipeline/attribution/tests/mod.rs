use std::collections::HashMap;

use super::*;
use crate::event::{Direction, Enrichment, Fate, ResetCause};
use crate::pipeline::lost::How;
use conntrack_common::{
    flags, Cause, Drop, Header, InvalidSeen, Packet, Reason, Verdict, IPPROTO_TCP, WIRE_VERSION,
};

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
        ifname: Box::new(|i| (i != 0).then(|| format!("if{i}").into())),
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

/// The entry conntrack had for `packet()`'s flow with the client on `client_port`: client ->
/// Service 10.96.0.10:80, DNATed to the backend 10.0.2.2:8080 (the packet is its reply).
fn entry(client_port: u16) -> ConntrackReport {
    ConntrackReport {
        source: "ctnetlink",
        direction: Direction::Reply,
        orig_src: "10.0.1.2".parse().unwrap(),
        orig_sport: client_port,
        orig_dst: "10.96.0.10".parse().unwrap(),
        orig_dport: 80,
        reply_src: "10.0.2.2".parse().unwrap(),
        reply_sport: 8080,
        reply_dst: "10.0.1.2".parse().unwrap(),
        reply_dport: client_port,
        tcp_state: Some("ESTABLISHED"),
        assured: true,
        original_window: None,
        reply_window: None,
    }
}

/// A correlator that looks entries up (as ct-trace does with ctnetlink).
fn looking_up() -> Correlator {
    let mut cx = ctx();
    cx.lookups = true;
    Correlator::new(cx)
}

/// Answers every lookup asked so far as ctnetlink would: the entry of the flow, or none.
fn answer_all(c: &mut Correlator, out: &mut Output, found: bool) {
    for r in std::mem::take(&mut out.lookups) {
        let e = found.then(|| entry(r.tuple.dport));
        c.answer(r.token, Some(e), out);
    }
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
                r.reason.to_string(),
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
            assert!(r
                .reason
                .to_string()
                .starts_with("ignored ACK under lower bound 1"));
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
    assert_eq!(c.reasons_unmatched(), 1);
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

/// A full room of waiting verdicts makes room by reporting its oldest at once (passed, without
/// its lookup): one report per verdict, nothing dropped unseen; a drop for it comes too late.
#[test]
fn a_full_room_of_verdicts_reports_its_oldest_at_once() {
    let mut c = looking_up();
    let t0 = Instant::now();
    let mut out = Output::default();
    for skb in 1..=MAX_PENDING as u64 + 1 {
        c.event(Event::Invalid(verdict(skb)), t0, &mut out);
    }
    match &out.reports[..] {
        [Report::Invalid(r)] => {
            assert_eq!(
                (r.fate, r.enrichment),
                (Fate::Passed, Some(Enrichment::Skipped))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.enrichment_skipped(), 1);
    c.event(drop_of(1, 1_000, 9), t0, &mut out);
    assert_eq!(out.reports.len(), 1);
    c.tick(t0, true, &mut out);
    assert_eq!(out.reports.len(), MAX_PENDING + 1);
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
    let mut c = looking_up();
    let t0 = Instant::now();
    let mut out = Output::default();
    c.event(Event::Invalid(verdict(7)), t0, &mut out);
    c.event(
        Event::Reset(Kind::RstSent, caused_reset(7, 1)),
        t0,
        &mut out,
    );
    assert!(out.reports.is_empty(), "the verdict waits for its entry");
    answer_all(&mut c, &mut out, true);
    assert_eq!(kinds(&out), ["invalid", "rst_sent", "attribution"]);
    let Report::Invalid(v) = &out.reports[0] else {
        unreachable!()
    };
    assert_eq!(v.tracked, Some(true));
    let Report::Attribution(a) = &out.reports[2] else {
        unreachable!()
    };
    assert_eq!(a.backend.to_string(), "10.0.2.2:8080");
    assert_eq!(
        a.client.map(|e| e.to_string()).as_deref(),
        Some("10.0.1.2:40000")
    );
    assert_eq!(
        a.service.map(|e| e.to_string()).as_deref(),
        Some("10.96.0.10:80")
    );
    assert_eq!(a.delay_us, 2);
    assert_eq!(a.fate, Fate::Passed);
    let Report::RstSent(rs) = &out.reports[1] else {
        unreachable!()
    };
    assert_eq!(rs.packet.src, Some("10.0.1.2".parse().unwrap()));
    assert_eq!(
        rs.packet.seq,
        Some(5000),
        "RST seq is the offending packet's ack"
    );
    assert_eq!(rs.reason.as_deref(), Some("NO_SOCKET"));
    assert_eq!(c.summary()[0].resets, 1);
    // Nothing more comes out later.
    c.tick(t0 + FATE_WAIT * 2, true, &mut out);
    assert_eq!(out.reports.len(), 3);
    assert_eq!(c.strays(), StrayTally::default());
}

/// A port scan: a SYN|FIN (or NULL, XMAS, FIN) segment to a closed port is INVALID, no entry
/// has its tuple, and the host resets it. That reset is a stray: reported with its own cause,
/// counted, never attributed, and `client`/`service` are never made up from its direction.
#[test]
fn a_reset_of_an_invalid_packet_of_no_tracked_flow_is_a_stray() {
    let mut c = looking_up();
    let t0 = Instant::now();
    let mut out = Output::default();
    for skb in 0..10u64 {
        let mut v = verdict(skb);
        v.packet.tcp_flags = 0x03; // SYN|FIN
        c.event(Event::Invalid(v), t0, &mut out);
        c.event(
            Event::Reset(Kind::RstSent, caused_reset(skb, 1)),
            t0,
            &mut out,
        );
    }
    answer_all(&mut c, &mut out, false);
    c.tick(t0 + FATE_WAIT * 2, true, &mut out);
    assert!(
        kinds(&out).iter().all(|k| *k != "attribution"),
        "{:?}",
        kinds(&out)
    );
    let strays: Vec<_> = out.reports.iter().filter(|r| r.is_stray()).collect();
    assert_eq!(strays.len(), 10);
    for r in &out.reports {
        if let Report::Invalid(v) = r {
            assert_eq!(v.tracked, Some(false));
        }
    }
    assert_eq!(
        c.strays(),
        StrayTally {
            invalid: 10,
            midstream: 0
        }
    );
    assert!(c.summary().is_empty(), "no flow is blamed");
    // The kernel said so itself: a refusal with an entry this packet was only about to create
    // (unconfirmed, e.g. "invalid new") needs no lookup and is no tracked flow either.
    let mut out = Output::default();
    let mut r = reason(20, "invalid new", 0);
    r.has_ct = 1;
    r.ct_status = 0;
    c.event(Event::Reason(r), t0, &mut out);
    c.event(Event::Invalid(verdict(20)), t0, &mut out);
    c.event(
        Event::Reset(Kind::RstSent, caused_reset(20, 1)),
        t0,
        &mut out,
    );
    assert!(out.lookups.is_empty(), "{:?}", out.lookups);
    assert_eq!(kinds(&out), ["invalid", "rst_sent"]);
    assert!(out.reports[1].is_stray());
}

#[test]
fn ten_resets_in_a_row_on_reused_buffers_are_ten_attributions() {
    // The same sk_buff address serves packet after packet: each verdict is told apart by
    // its time, and every reset finds its own.
    let mut c = looking_up();
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
        answer_all(&mut c, &mut out, true);
    }
    c.tick(t0 + FATE_WAIT * 2, true, &mut out);
    let clients: Vec<_> = out
        .reports
        .iter()
        .filter_map(|r| match r {
            Report::Attribution(a) => a.client.map(|c| c.to_string()),
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
    c.answer(token, Some(Some(entry(40000))), &mut out);
    assert_eq!(kinds(&out), ["rst_sent", "attribution"]);
    let Report::Attribution(a) = &out.reports[1] else {
        unreachable!()
    };
    assert_eq!(
        a.service.map(|e| e.to_string()).as_deref(),
        Some("10.96.0.10:80")
    );
    assert!(
        a.invalid_reason.to_string().contains("suppressed"),
        "{}",
        a.invalid_reason
    );
    // Unanswered, nothing shows the flow was tracked: at the deadline it goes out as a
    // stray, saying why, and nothing is blamed.
    let mut out = Output::default();
    c.event(
        Event::Reset(Kind::RstSent, caused_reset(8, 0)),
        t0,
        &mut out,
    );
    c.tick(t0 + FATE_WAIT * 2, false, &mut out);
    let [Report::RstSent(r)] = &out.reports[..] else {
        panic!("{:?}", out.reports)
    };
    assert_eq!(
        (r.cause, r.enrichment),
        (Some(ResetCause::Stray), Some(Enrichment::Skipped))
    );
    assert_eq!(c.enrichment_skipped(), 1);
    assert_eq!(c.strays().invalid, 1);
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
    assert_eq!(v.enrichment, Some(Enrichment::Skipped));
    // The attribution asks again, urgently, and goes out with the answer.
    let urgent = out.lookups.last().expect("an urgent lookup");
    assert!(urgent.urgent);
    let token = urgent.token;
    c.answer(token, Some(Some(entry(40000))), &mut out);
    assert_eq!(kinds(&out), ["invalid", "rst_sent", "attribution"]);
}

#[test]
fn the_flow_summary_is_bounded() {
    let mut c = looking_up();
    let t0 = Instant::now();
    let mut out = Output::default();
    for i in 0..(MAX_FLOWS as u64 + 5) {
        let mut r = caused_reset(7, 0);
        r.packet.dport = (i % 60_000) as u16;
        r.packet.daddr[2] = (i / 60_000) as u8;
        c.event(Event::Reset(Kind::RstSent, r), t0, &mut out);
        answer_all(&mut c, &mut out, true);
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

/// kube-proxy's rules name the Service 10.96.0.10:80 and its backend 10.0.2.2:8080: the INVALID
/// verdict and its attribution carry the name; without rules, neither does.
#[test]
fn invalid_packets_and_attributions_carry_the_service_name() {
    use crate::node::services::{parse_iptables_save, Builder, ServiceLookup};
    let save = "\
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"shop/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m tcp -j DNAT --to-destination 10.0.2.2:8080
";
    let mut b = Builder::default();
    parse_iptables_save(save, &mut b);
    for (names, want) in [
        (
            Some(ServiceLookup::fixed(b.finish())),
            Some("shop/web:http"),
        ),
        (None, None),
    ] {
        let mut c = looking_up();
        c.set_service_names(names);
        let t0 = Instant::now();
        let mut out = Output::default();
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.event(
            Event::Reset(Kind::RstSent, caused_reset(7, 1)),
            t0,
            &mut out,
        );
        answer_all(&mut c, &mut out, true);
        let [Report::Invalid(v), Report::RstSent(_), Report::Attribution(a)] = &out.reports[..]
        else {
            panic!("{:?}", kinds(&out));
        };
        assert_eq!(v.service_name.as_deref(), want);
        assert_eq!(a.service_name.as_deref(), want);
        let json = Report::Attribution(a.clone()).json();
        assert_eq!(json.contains("\"service_name\""), want.is_some(), "{json}");
        let text = Report::Attribution(a.clone()).text();
        assert_eq!(
            text.contains(" service_name=shop/web:http"),
            want.is_some(),
            "{text}"
        );
    }
}

mod contract;
mod midstream;
