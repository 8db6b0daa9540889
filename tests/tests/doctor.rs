//! `ct-trace doctor` reads a namespace's real posture: the sysctl and the rules the test sets,
//! and its conntrack table as the test fills it.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use integration_tests::{
    bin, kernel_at_least, need_root, python, Background, GlobalSysctl, Netns, Topology, CLIENT,
    SERVER,
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

/// Runs doctor in `ns` as root but without CAP_NET_ADMIN (dropped from the bounding set, so
/// the binary execs without it), which neither iptables-save nor nft can read rulesets without.
fn doctor_without_net_admin(ns: &Netns, args: &str) -> String {
    ns.exec(&format!(
        "setpriv --inh-caps=-all --bounding-set=-net_admin {} doctor {args}",
        bin().display()
    ))
}

/// Regression: without CAP_NET_ADMIN doctor printed "INVALID drop rules none", "no kube-proxy
/// rules" and (before that) `exposed`, for rulesets it had not been able to read. In a
/// namespace that has an INVALID drop rule, it must say it could not read them, and why.
#[test]
fn doctor_without_cap_net_admin_says_it_could_not_read_the_rules() {
    if !need_root("doctor_without_cap_net_admin_says_it_could_not_read_the_rules") {
        return;
    }
    let ns = Netns::new("nocap");
    ns.exec("iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
    ns.exec("ip6tables -A FORWARD -m conntrack --ctstate INVALID -j DROP");

    let p: Value = serde_json::from_str(doctor_without_net_admin(&ns, "-o json --window 0").trim())
        .expect("doctor prints one JSON object");
    assert_eq!(p["cap_net_admin"], false, "{p:#}");
    assert_eq!(
        p["verdict"], "unknown",
        "neither exposed nor protected: {p:#}"
    );
    assert_eq!(
        p["drop_rules"],
        Value::Null,
        "unknown, not an empty list: {p:#}"
    );
    assert_eq!(p["rules_read"], "none", "{p:#}");
    assert_eq!(p["kube_proxy"], "unknown", "{p:#}");
    let rulesets = p["rulesets"].as_array().expect("rulesets");
    assert_eq!(rulesets.len(), 3, "{p:#}");
    for r in rulesets {
        assert_eq!(r["read"], false, "{p:#}");
        let e = r["error"].as_str().expect("why it was not read");
        assert!(
            e.contains("Permission denied") || e.contains("Operation not permitted"),
            "{p:#}"
        );
    }
    let names = &p["service_names"];
    assert_eq!(names["kube_proxy"], Value::Null, "{names:#}");
    assert_eq!(names["rules_read"], "none", "{names:#}");
    assert!(!names["unread"].as_array().unwrap().is_empty(), "{names:#}");
    let a = advice(&p);
    assert!(a.contains("CAP_NET_ADMIN") && !a.contains("EXPOSED"), "{a}");

    let text = doctor_without_net_admin(&ns, "--window 0");
    assert!(
        !text.contains("INVALID drop rules                   none"),
        "{text}"
    );
    assert!(!text.contains("no kube-proxy rules"), "{text}");
    for line in [
        "INVALID drop rules                   unknown: could not read the rulesets (no CAP_NET_ADMIN: `iptables-save -c`, `ip6tables-save -c`, `nft list ruleset` failed)",
        "rulesets read                        none: no CAP_NET_ADMIN; `iptables-save -c`: exit status: 4: ",
        "service names                        unknown: kube-proxy's rules could not be read (no CAP_NET_ADMIN",
        "kube-proxy                           unknown",
        "verdict: unknown",
    ] {
        assert!(text.contains(line), "no `{line}`:\n{text}");
    }

    // The same namespace with the capability: the rule is there, in text and JSON.
    let p = doctor(&ns, "--window 0");
    assert_eq!(p["cap_net_admin"], true, "{p:#}");
    assert_eq!(p["rules_read"], "all", "{p:#}");
    assert_eq!(p["verdict"], "protected-rule", "{p:#}");
    let rules = p["drop_rules"].as_array().expect("rules, read");
    assert!(rules.iter().any(|r| r["family"] == "ipv4"), "{p:#}");
    assert!(rules.iter().any(|r| r["family"] == "ipv6"), "{p:#}");
    assert_eq!(
        p["service_names"]["kube_proxy"],
        serde_json::json!([]),
        "{p:#}"
    );
    let text = ns.exec(&format!("{} doctor --window 0", bin().display()));
    assert!(
        text.contains("INVALID drop rule                    iptables ipv4: -A FORWARD -m conntrack --ctstate INVALID -j DROP"),
        "{text}"
    );
    assert!(text.contains("verdict: protected-rule"), "{text}");
}

/// The table's sizing, timeouts and counter deltas were all read, as numbers.
fn assert_numbers(table: &Value) {
    assert!(table["max_per_bucket"].as_f64().is_some(), "{table:#}");
    // Both sizes for this RAM, each with the formula it comes from.
    let (default, writeups) = (&table["kernel_default"], &table["writeups"]);
    assert!(default["max"].as_u64().unwrap_or(0) >= 1024, "{table:#}");
    assert!(
        default["buckets"].as_u64().unwrap_or(0) >= 1024,
        "{table:#}"
    );
    assert!(writeups["max"].as_u64().unwrap_or(0) > 0, "{table:#}");
    assert!(table["kernel"].as_str().is_some(), "{table:#}");
    let expected = if kernel_at_least(5, 15) {
        "Linux 5.15+"
    } else {
        "Linux <5.15"
    };
    assert!(
        default["formula"]
            .as_str()
            .unwrap_or("")
            .starts_with(expected),
        "{table:#}"
    );
    assert!(
        writeups["formula"]
            .as_str()
            .unwrap_or("")
            .contains("RAM/16384/(word bits/32)"),
        "{table:#}"
    );
    assert!(
        ["below", "at", "above"].contains(&table["max_vs_kernel_default"].as_str().unwrap_or("")),
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
    // Who fills it: the one client's UDP flows to the server's port 9, and their fix.
    let who = &p["who"];
    let top = |g: &str| {
        (
            who[g][0]["key"].as_str().unwrap_or_default().to_string(),
            who[g][0]["entries"].as_u64().unwrap_or(0),
        )
    };
    let entries = who["entries"].as_u64().unwrap();
    assert!(entries >= 36, "{who:#}");
    assert_eq!(top("by_client"), (CLIENT.to_string(), entries), "{who:#}");
    assert_eq!(top("by_state"), ("udp".to_string(), entries), "{who:#}");
    assert_eq!(
        top("by_service"),
        (format!("{SERVER}:9/udp"), entries),
        "{who:#}"
    );
    assert!(advice.contains("is in state udp"), "{advice}");
    assert!(advice.contains("nf_conntrack_udp_timeout"), "{advice}");
    assert!(
        advice.contains(&format!(
            "one client holds 100% of the table ({entries} entries): {CLIENT}"
        )),
        "{advice}"
    );

    let text = t
        .node
        .exec(&format!("{} doctor --window 0", bin().display()));
    assert!(
        text.contains("table verdict                        full")
            || text.contains("table verdict                        pressure"),
        "{text}"
    );
    assert!(text.contains("of nf_conntrack_max: "), "{text}");
    assert!(
        text.contains(&format!("fills it: clients                    {CLIENT} ")),
        "{text}"
    );
}
