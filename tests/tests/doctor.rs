//! `ct-trace doctor` reads a namespace's real posture: the sysctl and the rules the test sets,
//! and its conntrack table as the test fills it.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use integration_tests::{
    bin, need_root, python, Background, GlobalSysctl, Netns, Topology, CLIENT, SERVER,
};
use serde_json::Value;

/// The tests that read or change the global `nf_conntrack_max` run one at a time.
static GLOBAL_TABLE: Mutex<()> = Mutex::new(());

fn doctor(ns: &Netns, args: &str) -> Value {
    let out = ns.exec(&format!("{} doctor -o json {args}", bin().display()));
    serde_json::from_str(out.trim()).expect("doctor prints one JSON object")
}

fn global(name: &str) -> u64 {
    let path = format!("/proc/sys/net/netfilter/{name}");
    let v = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    v.trim().parse().expect("a number")
}

fn advice(p: &Value) -> String {
    let a = p["advice"].as_array().expect("advice is a list");
    a.iter()
        .map(|a| a.as_str().expect("advice is text"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn doctor_verdicts_follow_liberal_tracking_and_drop_rules() {
    if !need_root("doctor_verdicts_follow_liberal_tracking_and_drop_rules") {
        return;
    }
    let t = Topology::new();
    let p = doctor(&t.node, "--window 0");
    assert_eq!(p["netns"], t.node.inode());
    assert_eq!(p["tcp_be_liberal"], 0);
    assert_eq!(p["verdict"], "exposed", "{p:#}");
    assert!(p["drop_rules"].as_array().unwrap().is_empty());

    t.drop_invalid();
    let p = doctor(&t.node, "--window 0");
    assert_eq!(p["verdict"], "protected-rule", "{p:#}");
    let rules = p["drop_rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["family"] == "ipv4" && r["rule"].as_str().unwrap().contains("INVALID")),
        "{p:#}"
    );
    assert!(rules.iter().any(|r| r["family"] == "ipv6"), "{p:#}");

    let t2 = Topology::new();
    t2.node
        .exec("sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=1");
    let p = doctor(&t2.node, "--window 0");
    assert_eq!(p["tcp_be_liberal"], 1);
    assert_eq!(p["verdict"], "protected-liberal", "{p:#}");

    // The text report says it in words.
    let text = t
        .node
        .exec(&format!("{} doctor --window 0", bin().display()));
    assert!(text.contains("verdict: protected-rule"), "{text}");
}

/// The table's sizing, timeouts and counter deltas were all read, as numbers.
fn assert_numbers(table: &Value) {
    assert!(table["max_per_bucket"].as_f64().is_some(), "{table:#}");
    assert!(
        table["recommended_max"].as_u64().unwrap_or(0) > 0,
        "{table:#}"
    );
    assert!(
        ["below", "at", "above"].contains(&table["max_vs_ram"].as_str().unwrap_or("")),
        "{table:#}"
    );
    for state in [
        "established",
        "close_wait",
        "fin_wait",
        "time_wait",
        "syn_sent",
        "syn_recv",
        "unacknowledged",
    ] {
        assert!(
            table["tcp_timeouts"][state].as_u64().is_some(),
            "{state}: {table:#}"
        );
    }
    assert!(table["tcp_loose"].as_u64().is_some(), "{table:#}");
    for counter in ["drop", "early_drop", "insert_failed", "invalid"] {
        assert!(
            table["deltas"][counter].as_u64().is_some(),
            "{counter}: {table:#}"
        );
    }
}

#[test]
fn doctor_reports_a_roomy_table_and_its_timeouts() {
    if !need_root("doctor_reports_a_roomy_table_and_its_timeouts") {
        return;
    }
    let _one_at_a_time = GLOBAL_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::new();
    let p = doctor(&t.node, "--window 0.2");
    let table = &p["table"];
    assert_eq!(table["pressure"], "ok", "{table:#}");
    assert_eq!(table["verdict"], "ok", "{table:#}");
    // The limit and the buckets are global; the entries are the node namespace's own.
    assert_eq!(table["max"], global("nf_conntrack_max"), "{table:#}");
    assert_eq!(
        table["buckets"],
        global("nf_conntrack_buckets"),
        "{table:#}"
    );
    assert_eq!(p["max"], table["max"], "the old field keeps its meaning");
    let entries = table["entries"].as_u64().expect("entries");
    assert!(entries < 20, "a fresh namespace's table: {table:#}");
    assert!(table["utilisation"].as_f64().expect("utilisation") < 0.75);
    assert_eq!(table["window_s"], 0.2);
    assert_numbers(table);
    let a = advice(&p);
    assert!(
        !a.contains("the table is full") && !a.contains("75% alert"),
        "{a}"
    );

    // Timeouts are the namespace's own: one shorter than keepalive is advice.
    t.node
        .exec("sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=3600");
    let p = doctor(&t.node, "--window 0");
    assert_eq!(p["table"]["tcp_timeouts"]["established"], 3600);
    assert_eq!(
        p["table"]["deltas"],
        Value::Null,
        "--window 0 samples nothing"
    );
    assert!(advice(&p).contains("keepalive"), "{p:#}");

    let text = t
        .node
        .exec(&format!("{} doctor --window 0", bin().display()));
    for line in [
        "table pressure",
        "table max per bucket",
        "table max vs RAM",
        "tcp timeouts (s)                     established 3600,",
        "table counter deltas                 not sampled",
        "table verdict                        ok",
    ] {
        assert!(text.contains(line), "no `{line}`:\n{text}");
    }
}

#[test]
fn doctor_sees_a_nearly_full_table() {
    if !need_root("doctor_sees_a_nearly_full_table") {
        return;
    }
    let _one_at_a_time = GLOBAL_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::new();
    // Restored on drop, also when the test fails; the limit then applies to every namespace's
    // own table, the node's included.
    let _max = GlobalSysctl::set("net.netfilter.nf_conntrack_max", "40");
    // One UDP datagram per source port, client -> server through the node: one entry each at
    // the node, never ASSURED (nothing listens on the server's port 9). Bounded: 300 datagrams,
    // 10 ms apart, so some still arrive while doctor samples the counters.
    let _sender = Background::start(
        &t.client,
        &format!(
            "{} -c \"import socket,time\nfor p in range(20000,20300):\n  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n  s.bind(('{CLIENT}',p))\n  s.sendto(b'x',('{SERVER}',9))\n  s.close()\n  time.sleep(0.01)\"",
            python()
        ),
    );
    let t0 = Instant::now();
    while t.node.kernel_counter("entries") < 36 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the node's table did not fill: {} entries",
            t.node.kernel_counter("entries")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = doctor(&t.node, "--window 1");
    let table = &p["table"];
    assert_eq!(table["max"], 40, "{table:#}");
    assert!(table["entries"].as_u64().unwrap() >= 36, "{table:#}");
    assert!(
        table["pressure"] == "high" || table["pressure"] == "full",
        "{table:#}"
    );
    // Datagrams kept coming at the limit: conntrack dropped them or evicted for them.
    let d = &table["deltas"];
    assert!(
        d["drop"].as_u64().unwrap() + d["early_drop"].as_u64().unwrap() > 0,
        "{table:#}"
    );
    assert_eq!(table["verdict"], "full", "{table:#}");
    let advice = advice(&p);
    assert!(advice.contains("the table is full"), "{advice}");
    assert!(advice.contains("nf_conntrack_max"), "{advice}");

    let text = t
        .node
        .exec(&format!("{} doctor --window 0", bin().display()));
    assert!(
        text.contains("table verdict                        full")
            || text.contains("table verdict                        pressure"),
        "{text}"
    );
    assert!(text.contains("of nf_conntrack_max: "), "{text}");
}
