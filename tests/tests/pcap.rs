//! `--pcap FILE`: tshark reads the file; it holds one packet per event that carries one, in the
//! order of the events, each with that event's addresses, ports, TCP flags, sequence numbers,
//! real length, right checksums and the event's JSON line as its comment (tcpdump reads it
//! too); with `--summary`
//! (nothing on stdout) and SIGTERM, the file still gets every packet.

use std::{path::PathBuf, process::Command, time::Duration};

use conntrack_user::output::text::rfc3339;
use integration_tests::{
    carries_packet, need_root, CtTrace, Topology, CLIENT, SERVER, WITH_PACKET,
};
use serde_json::Value;

fn pcap_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ct-trace-{name}-{}.pcapng", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Ten out-of-window replies through the Service, each on a fresh connection.
fn out_of_window_replies(t: &Topology) {
    t.segments("seq_over", 10, false);
}

/// tshark's reading of the file: one JSON object of fields per packet.
fn tshark(path: &PathBuf) -> Vec<Value> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(path)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
        ])
        .args(["-T", "json"]);
    for f in [
        "frame.interface_name",
        "frame.len",
        "frame.cap_len",
        "frame.time_epoch",
        "frame.comment",
        "ip.src",
        "ip.dst",
        "ip.len",
        "ip.checksum.status",
        "tcp.srcport",
        "tcp.dstport",
        "tcp.flags",
        "tcp.seq_raw",
        "tcp.ack_raw",
        "tcp.checksum.status",
    ] {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("tshark runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("tshark -T json prints JSON");
    v.as_array()
        .expect("an array of packets")
        .iter()
        .map(|p| p["_source"]["layers"].clone())
        .collect()
}

/// A field's values (tshark -T json -e gives each as an array of strings).
fn field<'a>(p: &'a Value, name: &str) -> Vec<&'a str> {
    p[name]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn one<'a>(p: &'a Value, name: &str) -> &'a str {
    let v = field(p, name);
    assert_eq!(v.len(), 1, "{name} once in {p}");
    v[0]
}

fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap(),
    }
}

#[test]
fn every_event_with_a_packet_is_a_packet_tshark_reads_with_the_event_as_its_comment() {
    if !need_root(
        "every_event_with_a_packet_is_a_packet_tshark_reads_with_the_event_as_its_comment",
    ) {
        return;
    }
    let t = Topology::ipv4_only();
    let path = pcap_path("stream");
    let ct = CtTrace::start(Some(&t.node), &["--pcap", path.to_str().unwrap()]);
    out_of_window_replies(&t);
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let events: Vec<&Value> = out.events.iter().filter(|e| carries_packet(e)).collect();
    // Each reply and each client RST is INVALID at the node, and each reply is reset.
    assert!(
        out.of_kind("invalid").len() >= 20,
        "{:#?}",
        out.of_kind("invalid")
    );
    assert!(out.of_kind("rst_sent").len() >= 10, "{:#?}", out.events);
    let packets = tshark(&path);
    assert_eq!(
        packets.len(),
        events.len(),
        "one packet per event with a packet: {events:#?}"
    );
    for (p, e) in packets.iter().zip(&events) {
        let comments = field(p, "frame.comment");
        assert_eq!(comments.len(), 2, "{p}");
        let c: Value = serde_json::from_str(comments[0]).expect("the comment is a JSON line");
        assert_eq!(&c, *e, "the comment is the event");
        assert!(comments[1].starts_with("reconstructed by ct-trace"), "{p}");

        assert_eq!(one(p, "ip.src"), e["src"], "{p}\n{e}");
        assert_eq!(one(p, "ip.dst"), e["dst"], "{p}\n{e}");
        assert_eq!(num(one(p, "tcp.srcport")), e["sport"], "{p}\n{e}");
        assert_eq!(num(one(p, "tcp.dstport")), e["dport"], "{p}\n{e}");
        let flags = num(one(p, "tcp.flags"));
        let names: Vec<&str> = e["flags"].as_str().unwrap().split('|').collect();
        for (bit, n) in [(1, "FIN"), (2, "SYN"), (4, "RST"), (8, "PSH"), (16, "ACK")] {
            assert_eq!(flags & bit != 0, names.contains(&n), "{n}: {p}\n{e}");
        }
        assert_eq!(num(one(p, "tcp.seq_raw")), e["seq"].as_u64().unwrap_or(0));
        assert_eq!(num(one(p, "tcp.ack_raw")), e["ack"].as_u64().unwrap_or(0));
        // Headers only in the file; the real size on the wire.
        assert_eq!(num(one(p, "frame.cap_len")), 40, "{p}");
        assert_eq!(num(one(p, "ip.len")), 40, "{p}");
        let len = e["len"].as_u64().unwrap_or(0);
        assert_eq!(num(one(p, "frame.len")), 40 + len, "{p}\n{e}");
        // 1: good (tshark's checksum_status values: 0 bad, 1 good, 2 unverified).
        assert_eq!(one(p, "ip.checksum.status"), "1", "{p}");
        assert_eq!(one(p, "tcp.checksum.status"), "1", "{p}");
        // Nanoseconds: the packet's time is the event's.
        let epoch = one(p, "frame.time_epoch");
        let (s, ns) = epoch.split_once('.').unwrap();
        let ns: u64 = format!("{ns:0<9}")[..9].parse().unwrap();
        let epoch_ns = s.parse::<u64>().unwrap() * 1_000_000_000 + ns;
        assert_eq!(rfc3339(epoch_ns), e["time"].as_str().unwrap(), "{p}");
        let iface = one(p, "frame.interface_name");
        let point = match e["kind"].as_str().unwrap() {
            "rst_sent" => "tcp:tcp_send_reset ipv4".to_string(),
            "rst_received" => "tcp:tcp_receive_reset ipv4".to_string(),
            _ => format!("netfilter ipv4/{}", e["hook"].as_str().unwrap()),
        };
        assert_eq!(iface, format!("{point} netns {}", e["netns"]), "{p}");
    }
    // The replies come from the backend to the client, and their resets go back.
    assert!(
        packets
            .iter()
            .any(|p| field(p, "ip.src") == [SERVER] && field(p, "ip.dst") == [CLIENT]),
        "{packets:#?}"
    );
    // tcpdump (libpcap) reads it too: one line per packet.
    let td = Command::new("tcpdump")
        .arg("-nr")
        .arg(&path)
        .output()
        .expect("tcpdump runs");
    assert!(
        td.status.success(),
        "{}",
        String::from_utf8_lossy(&td.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&td.stdout).lines().count(),
        events.len()
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn with_summary_and_sigterm_the_file_still_gets_every_packet() {
    if !need_root("with_summary_and_sigterm_the_file_still_gets_every_packet") {
        return;
    }
    let t = Topology::ipv4_only();
    let path = pcap_path("summary");
    let ct = CtTrace::start(
        Some(&t.node),
        &["--summary", "--pcap", path.to_str().unwrap()],
    );
    out_of_window_replies(&t);
    // What `stop` waits for before its SIGINT: the segments through conntrack and ct-trace.
    ct.settle();
    // SAFETY: signalling our own child (`ip netns exec` execs ct-trace).
    unsafe { libc::kill(ct.pid() as i32, libc::SIGTERM) };
    let out = ct.wait_exit(Duration::from_secs(10));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.events.iter().all(|e| !carries_packet(e)),
        "--summary prints no events"
    );
    let produced: u64 = WITH_PACKET
        .iter()
        .filter_map(|k| out.summary()["events"][k].as_u64())
        .sum();
    assert!(produced >= 30, "{}", out.summary());
    let packets = tshark(&path);
    assert_eq!(packets.len() as u64, produced, "{}", out.summary());
    let _ = std::fs::remove_file(&path);
}

/// Events leave in time order, on stdout and in the file, although the pipeline holds some
/// (a verdict waits for its fate and its entry) while others go on (resets of a scan beside
/// them, with `--resets all`): capinfos calls the file strictly time-ordered.
#[test]
fn events_and_packets_are_in_time_order() {
    if !need_root("events_and_packets_are_in_time_order") {
        return;
    }
    let t = Topology::ipv4_only();
    let path = pcap_path("order");
    let ct = CtTrace::start(
        Some(&t.node),
        &["--resets", "all", "--pcap", path.to_str().unwrap()],
    );
    let scan = integration_tests::Background::start(
        &t.client,
        &format!(
            "{} {} {SERVER} 8081,8083 n=10",
            integration_tests::python(),
            integration_tests::scripts().join("scan.py").display()
        ),
    );
    out_of_window_replies(&t);
    scan.wait(Duration::from_secs(120));
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let times: Vec<&str> = out
        .events
        .iter()
        .filter(|e| e["kind"] != "summary")
        .map(|e| e["time"].as_str().expect("every event has a time"))
        .collect();
    assert!(times.len() > 100, "{}", times.len());
    // RFC 3339 with nanoseconds in UTC, always 30 characters: text order is time order.
    assert!(times.iter().all(|t| t.len() == 30), "{times:?}");
    for w in times.windows(2) {
        assert!(w[0] <= w[1], "out of order: {} then {}", w[0], w[1]);
    }
    let info = Command::new("capinfos")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("capinfos runs");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Strict time order:") && l.trim_end().ends_with("True")),
        "{info}"
    );
    let _ = std::fs::remove_file(&path);
}
