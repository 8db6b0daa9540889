//! The output contract: a recorded stream of every kind of event the correlator makes, rendered
//! as JSON lines and text lines, must equal the golden files checked in beside the corpus
//! (`conntrack-user/tests/contract/`). The JSON field names and values are what users script
//! against; a change that alters them fails here. After an intended, documented change, the
//! files are written anew with `CT_TRACE_WRITE_CONTRACT=1 cargo test -p conntrack-user contract`.

use super::midstream::{gone_for, midstream_of};
use super::*;
use crate::node::services::{parse_iptables_save, Builder, ServiceLookup};

/// The records `ctt-pipeline` makes (TCP SYN|FIN, one flow each), plus IPv6 ones.
fn bench_verdict(i: u64, v6: bool) -> Verdict {
    let mut v = verdict(0xffff_8880_0000_0000 + i * 256);
    v.header.ts_ns = 1_000_000_000 + i * 1_000;
    v.packet.tcp_flags = 0x03;
    v.packet.sport = 1024 + i as u16;
    v.packet.dport = 80;
    v.packet.seq = i as u32;
    v.packet.ifindex = 3;
    if v6 {
        v.packet.family = 6;
        v.packet.saddr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        v.packet.daddr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    }
    v
}

/// Every report kind the correlator makes, from fixed records at fixed times.
fn recorded() -> Vec<Report> {
    let save = "\
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"shop/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m tcp -j DNAT --to-destination 10.0.2.2:8080
";
    let mut b = Builder::default();
    parse_iptables_save(save, &mut b);
    let mut cx = ctx();
    cx.boot_to_epoch_ns = 1_700_000_000_000_000_000;
    cx.lookups = true;
    let mut c = Correlator::new(cx);
    c.set_service_names(Some(ServiceLookup::fixed(b.finish())));
    let t0 = Instant::now();
    let mut out = Output::default();

    // A verdict with its reason, dropped by a netfilter rule.
    let fmt = "SEQ is over upper bound %u (over the window of the receiver)";
    c.event(Event::Reason(reason(1, fmt, 60)), t0, &mut out);
    c.event(Event::Invalid(verdict(1)), t0, &mut out);
    c.event(drop_of(1, 1_000, 9), t0, &mut out);
    answer_all(&mut c, &mut out, true);
    // A verdict that passed and the reset it caused: attributed.
    c.event(Event::Invalid(verdict(2)), t0, &mut out);
    c.event(
        Event::Reset(Kind::RstSent, caused_reset(2, 1)),
        t0,
        &mut out,
    );
    answer_all(&mut c, &mut out, true);
    // A scan: SYN|FIN of no tracked flow, and its stray reset.
    let mut v = verdict(3);
    v.packet.tcp_flags = 0x03;
    v.packet.dport = 40003;
    c.event(Event::Invalid(v), t0, &mut out);
    let mut r = caused_reset(3, 1);
    r.packet = v.packet;
    r.packet.netns = 2;
    c.event(Event::Reset(Kind::RstSent, r), t0, &mut out);
    answer_all(&mut c, &mut out, false);
    // A reset received, and one sent without headers or a reason argument.
    let mut rr = caused_reset(0, 1);
    rr.header.kind = Kind::RstReceived as u8;
    rr.flags = 0;
    rr.cause = Default::default();
    c.event(Event::Reset(Kind::RstReceived, rr), t0, &mut out);
    let mut rs = rr;
    rs.header.kind = Kind::RstSent as u8;
    rs.flags = flags::NO_HEADERS | flags::NO_REASON_ARG;
    c.event(Event::Reset(Kind::RstSent, rs), t0, &mut out);
    // An ignored packet: a reason without a verdict.
    let fmt = "ignored ACK under lower bound %u (possible overly delayed)";
    c.event(Event::Reason(reason(4, fmt, 1)), t0, &mut out);
    // Lost entries and table pressure.
    c.event(midstream_of(0xaa, 1_000), t0, &mut out);
    let mut r = caused_reset(0xaa, 1);
    r.cause.cause = Cause::EntryLost as u8;
    c.event(Event::Reset(Kind::RstSent, r), t0, &mut out);
    c.gone(vec![gone_for(How::Deleted)], &mut out);
    c.gone(vec![gone_for(How::Evicted)], &mut out);
    let mut p = conntrack_common::Pressure {
        skb: 0xbb,
        entries: 40,
        ..Default::default()
    };
    p.header.kind = Kind::TableFull as u8;
    p.header.ts_ns = 4_000;
    p.packet = packet();
    p.packet.tcp_flags = 0x02;
    p.packet.saddr[..4].copy_from_slice(&[10, 0, 1, 2]);
    p.packet.daddr[..4].copy_from_slice(&[10, 96, 0, 10]);
    (p.packet.sport, p.packet.dport) = (40001, 80);
    c.event(Event::Pressure(Kind::TableFull, p), t0, &mut out);
    let mut m = midstream_of(0xac, 2_000);
    if let Event::Pressure(_, p) = &mut m {
        p.packet.dport = 40002;
    }
    c.event(m, t0, &mut out);
    // The bench's records, IPv4 and IPv6, their lookups not answered in time.
    for i in 0..4 {
        c.event(Event::Invalid(bench_verdict(i, i % 2 == 1)), t0, &mut out);
    }
    for r in std::mem::take(&mut out.lookups) {
        c.answer(r.token, None, &mut out);
    }
    c.tick(t0 + FATE_WAIT * 2, true, &mut out);
    let mut reports = out.reports;
    reports.extend(c.summary().into_iter().map(Report::Flow));
    reports
}

fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/contract")
        .join(name)
}

#[test]
fn the_recorded_stream_renders_as_the_golden_files_say() {
    let reports = recorded();
    let json: Vec<String> = reports.iter().map(Report::json).collect();
    let text: Vec<String> = reports.iter().map(Report::text).collect();
    if std::env::var_os("CT_TRACE_WRITE_CONTRACT").is_some() {
        std::fs::create_dir_all(golden("")).unwrap();
        std::fs::write(golden("stream.jsonl"), json.join("\n") + "\n").unwrap();
        std::fs::write(golden("stream.txt"), text.join("\n") + "\n").unwrap();
    }
    let kinds: std::collections::BTreeSet<&str> = reports.iter().map(Report::kind).collect();
    for k in [
        "invalid",
        "ignored",
        "rst_sent",
        "rst_received",
        "attribution",
        "table_full",
        "evicted",
        "midstream",
        "flow",
    ] {
        assert!(kinds.contains(k), "the recorded stream has no {k}");
    }
    let want_json = std::fs::read_to_string(golden("stream.jsonl")).expect("checked in");
    let want_text = std::fs::read_to_string(golden("stream.txt")).expect("checked in");
    assert_eq!(json.len(), want_json.lines().count(), "JSON lines");
    for (i, (got, want)) in json.iter().zip(want_json.lines()).enumerate() {
        let got: serde_json::Value = serde_json::from_str(got).unwrap();
        let want: serde_json::Value = serde_json::from_str(want).unwrap();
        assert_eq!(got, want, "JSON line {}", i + 1);
    }
    assert_eq!(text.len(), want_text.lines().count(), "text lines");
    for (i, (got, want)) in text.iter().zip(want_text.lines()).enumerate() {
        assert_eq!(got, want, "text line {}", i + 1);
    }
}
