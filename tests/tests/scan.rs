//! No false blame: a port scan pages nobody.
//!
//! Internet-facing nodes receive SYN|FIN, FIN, NULL, XMAS and ACK segments all day. conntrack
//! marks the first four INVALID (bad flag combinations) and picks ACKs up mid-stream; the hosts
//! they reach answer with resets, which the kernel matches to those packets. None of them
//! belonged to a flow conntrack was tracking: each reset is a `stray` (counted, shown with
//! `--resets all`), never an `attribution`, never in the Service metric. Meanwhile ten real
//! out-of-window replies are still ten attributions, each naming its own flow.
//!
//! The scans go through the node's DNAT (to an open and a closed Service port), straight to the
//! pod's address (open and closed port) and locally in the node (open and closed port), ten
//! segments of each kind to each port. Traffic stays in the namespaces the test creates.

use std::collections::HashMap;

use integration_tests::{
    in_vm, need_root, python, scripts, Background, CtTrace, Topology, CLIENT, SERVER, SERVICE,
};

/// ct-trace's metrics, on the node namespace's own loopback.
const METRICS: &str = "127.0.0.1:19469";

fn scan(t: &Topology, from_node: bool, dst: &str, ports: &str) -> Background {
    let ns = if from_node { &t.node } else { &t.client };
    Background::start(
        ns,
        &format!(
            "{} {} {dst} {ports} n=10",
            python(),
            scripts().join("scan.py").display()
        ),
    )
}

/// The value of a metric series in an OpenMetrics scrape (0 when absent).
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_port_scan_is_stray_resets_never_attributions_and_real_failures_still_are() {
    if !need_root("a_port_scan_is_stray_resets_never_attributions_and_real_failures_still_are") {
        return;
    }
    let t = Topology::ipv4_only();
    // The Service's other ports: 81 goes to a backend port nothing listens on, 82 to one with a
    // listener; the node itself listens on 127.0.0.1:5557, not on 5556.
    t.node.exec("iptables -t nat -A PREROUTING -d 10.96.0.10 -p tcp --dport 81 -j DNAT --to-destination 10.77.2.2:8081");
    t.node.exec("iptables -t nat -A PREROUTING -d 10.96.0.10 -p tcp --dport 82 -j DNAT --to-destination 10.77.2.2:8082");
    let listen = |ns, addr: &str, port| {
        Background::start(
            ns,
            &format!(
                "{} -c \"import socket,time\ns=socket.socket()\ns.bind(('{addr}',{port}))\ns.listen(64)\ntime.sleep(120)\"",
                python()
            ),
        )
    };
    let _pod = listen(&t.server, SERVER, 8082);
    let _local = listen(&t.node, "127.0.0.1", 5557);
    let ct = CtTrace::start(Some(&t.node), &["--resets", "all", "--metrics", METRICS]);
    let scans = [
        scan(&t, false, SERVICE, "81,82"),
        scan(&t, false, SERVER, "8081,8082"),
        scan(&t, true, "127.0.0.1", "5556,5557"),
    ];
    // Ten real failures while the scans run.
    let segs = t.segments("seq_over", 10, false);
    let limit = std::time::Duration::from_secs(if in_vm() { 600 } else { 120 });
    let sent: Vec<HashMap<String, u64>> = scans
        .into_iter()
        .map(|s| serde_json::from_str(s.wait(limit).trim()).expect("scan.py's JSON line"))
        .collect();
    for s in &sent {
        assert_eq!(s.values().sum::<u64>(), 10 * 5 * 2, "{s:?}");
    }
    // What a dashboard would scrape.
    let scrape = t.node.exec(&format!(
        "{} {} get http://{METRICS}/metrics application/openmetrics-text",
        python(),
        scripts().join("prom.py").display()
    ));
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);

    // Ten attributions, one per real failure, none for the scans.
    let attributions = out.of_kind("attribution");
    for s in &segs {
        let client = format!("{CLIENT}:{}", s["cport"]);
        let mine: Vec<_> = attributions
            .iter()
            .filter(|a| a["client"] == client.as_str())
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "one attribution for {client}: {attributions:#?}"
        );
        assert_eq!(mine[0]["backend"], format!("{SERVER}:8080"));
        assert_eq!(mine[0]["service"], format!("{SERVICE}:80"));
        assert_eq!(mine[0]["cause"], "invalid_packet");
    }
    assert_eq!(attributions.len(), 10, "{attributions:#?}");

    // Every scan segment that reached a closed port was reset and that reset is a stray: the
    // INVALID kinds to the pod's and the node's closed port (the pod's and the node's open
    // ports drop them silently, and through the Service they go nowhere without their NAT);
    // the ACKs straight to the pod and locally, to open and closed ports alike (through the
    // Service they are DNATed like any new flow, and their resets match nothing).
    let strays = out.events_of("rst_sent", |r| r["cause"] == "stray");
    let summary = out.summary();
    let tally = &summary["stray_resets"];
    assert_eq!(tally["invalid"], 4 * 10 * 2, "{tally}");
    assert_eq!(tally["midstream"], 10 * 4, "{tally}");
    assert_eq!(strays.len(), 4 * 10 * 2 + 10 * 4);
    for r in &strays {
        assert!(
            r["dport"].as_u64() != Some(80),
            "a stray names no Service: {r}"
        );
    }
    // The INVALID verdicts say whether their packet belonged to a tracked flow: the real
    // replies' did; the scans', their resets' and the clients' own resets' did not.
    let invalid = out.of_kind("invalid");
    assert!(invalid.len() >= 4 * 10 * 6 + 10, "{}", invalid.len());
    for v in invalid {
        let real = segs
            .iter()
            .any(|s| v["seq"] == s["seq"] && v["sport"] == 8080);
        assert_eq!(v["tracked"], real, "{v}");
    }
    out.reconciled_invalid();

    // The Service metric (and its alert) moved for the real failures only.
    let attributed: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("ct_trace_attributed_resets_total{"))
        .collect();
    assert_eq!(
        attributed,
        [format!(
            "ct_trace_attributed_resets_total{{cause=\"invalid_packet\",service=\"{SERVICE}:80\"}} 10"
        )],
        "{scrape}"
    );
    assert_eq!(
        sample(&scrape, "ct_trace_stray_resets_total{packet=\"invalid\"}"),
        80.0,
        "{scrape}"
    );
    assert_eq!(
        sample(&scrape, "ct_trace_stray_resets_total{packet=\"midstream\"}"),
        40.0,
        "{scrape}"
    );
}

/// `--resets caused` (the default) shows what conntrack broke: the strays are counted as
/// filtered, not shown.
#[test]
fn by_default_stray_resets_are_counted_not_shown() {
    if !need_root("by_default_stray_resets_are_counted_not_shown") {
        return;
    }
    let t = Topology::ipv4_only();
    let ct = CtTrace::start(Some(&t.node), &[]);
    let s = scan(&t, false, SERVER, "8081");
    s.wait(std::time::Duration::from_secs(if in_vm() {
        600
    } else {
        60
    }));
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.of_kind("attribution").is_empty());
    assert!(
        out.of_kind("rst_sent").is_empty(),
        "{:?}",
        out.of_kind("rst_sent")
    );
    let summary = out.summary();
    assert_eq!(summary["stray_resets"]["invalid"], 40, "{summary}");
    assert_eq!(summary["stray_resets"]["midstream"], 10, "{summary}");
    assert_eq!(summary["filtered"]["rst_sent"], 50, "{summary}");
    assert!(
        out.stderr
            .contains("50 resets answered packets of no flow conntrack was tracking"),
        "{}",
        out.stderr
    );
}
