//! A full conntrack table, the incident write-ups' reproduction in miniature: a table of 40
//! entries (global sysctls, restored on drop), half-open flows through the Service's DNAT to a
//! backend that never answers, then more new flows. ct-trace names the refused flows
//! (`table_full`) and the evicted ones (`evicted`), and its counts equal the kernel's `drop`
//! and `early_drop` deltas.
//!
//! Alone in its test binary: the limit applies to every namespace's table while it is set.

use integration_tests::{
    kernel_at_least, need_root, poll, python, scripts, CtTrace, GlobalSysctl, Topology, CLIENT,
    SERVICE,
};

const MAX: u64 = 40;
const SYNS: usize = 120;

#[test]
fn a_full_table_gives_table_full_and_evicted_events_equal_to_the_kernel() {
    if !need_root("a_full_table_gives_table_full_and_evicted_events_equal_to_the_kernel") {
        return;
    }
    let t = Topology::ipv4_only();
    // The backend never answers: every flow stays half-open (not ASSURED: evictable).
    t.server
        .exec("iptables -A INPUT -p tcp --dport 8080 --syn -j DROP");
    let _max = GlobalSysctl::set("net.netfilter.nf_conntrack_max", &MAX.to_string());
    // Few buckets, so early_drop (which scans a few buckets) finds victims, as in the write-ups.
    let _buckets = GlobalSysctl::set("net.netfilter.nf_conntrack_buckets", "16");
    let ct = CtTrace::start(Some(&t.node), &[]);
    let drop0 = t.node.kernel_counter("drop");
    let early0 = t.node.kernel_counter("early_drop");
    let ports = t.client.exec(&format!(
        "{} {} syns {SERVICE} 80 {SYNS} 1",
        python(),
        scripts().join("held.py").display()
    ));
    // The SYNs still in flight through the node: until its drop counters stop moving.
    let settled = poll::counters_settled(&t.node, &["drop", "early_drop"]);
    let (drops, early) = (settled[0] - drop0, settled[1] - early0);
    let out = ct.stop();
    assert!(
        drops > 0 && early > 0,
        "the table was full: drop +{drops}, early_drop +{early}"
    );
    let ports: Vec<String> = ports.split_whitespace().map(String::from).collect();
    assert_eq!(ports.len(), SYNS);

    let full = out.of_kind("table_full");
    assert_eq!(
        full.len() as u64,
        drops,
        "one table_full per kernel drop: {full:#?}"
    );
    for e in &full {
        assert_eq!(e["src"], CLIENT, "{e}");
        assert_eq!(e["dst"], SERVICE, "{e}");
        assert_eq!(e["dport"], 80, "{e}");
        assert_eq!(e["flags"], "SYN", "{e}");
        assert_eq!(e["max"], MAX, "{e}");
        assert!(
            ports.contains(&e["sport"].to_string()),
            "a refused flow of the test: {e}"
        );
    }
    let evicted = out.of_kind("evicted");
    assert!(!evicted.is_empty(), "evictions are shown");
    for e in &evicted {
        let entry = &e["entry"];
        assert_eq!(entry["orig_dst"], format!("{SERVICE}:80"), "{e}");
        assert_eq!(entry["assured"], false, "{e}");
        // Destroy events carry the TCP state from 5.11 (86d21fc74745); before, it is null
        // and ct-trace says so on stderr.
        if kernel_at_least(5, 11) {
            assert_eq!(entry["tcp_state"], "SYN_SENT", "{e}");
        } else {
            assert_eq!(entry["tcp_state"], serde_json::Value::Null, "{e}");
            assert!(out.stderr.contains("carry no TCP state"), "{}", out.stderr);
        }
    }
    let table = &out.summary()["table"];
    let n = |k: &str| {
        table[k]
            .as_u64()
            .unwrap_or_else(|| panic!("table.{k}: {table}"))
    };
    let tf = &table["table_full"];
    let tf_n = |k: &str| tf[k].as_u64().unwrap();
    assert_eq!(tf_n("counted"), drops, "{table}");
    assert_eq!(n("kernel_drop"), drops, "{table}");
    assert_eq!(
        tf_n("counted"),
        tf_n("shown") + tf_n("suppressed") + tf_n("filtered") + tf_n("lost") + tf_n("unprinted"),
        "{table}"
    );
    let ev = &table["evicted"];
    assert_eq!(ev["kernel"], early, "{table}");
    assert_eq!(ev["shown"], evicted.len() as u64, "{table}");
    // Every flow here was opened while ct-trace listened: each eviction has its event.
    assert_eq!(
        ev["shown"], early,
        "one evicted per kernel early_drop: {table}"
    );
    assert_eq!(ev["unseen"], 0, "{table}");
    eprintln!("table: {table}");
}
