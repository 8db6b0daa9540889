//! A storm of destroy events: three bursts of 12,000 half-open flows (raw SYNs from the client
//! through the Service's DNAT to a backend that drops them) into a table of 512 entries, each
//! burst over in well under a second, so conntrack's `early_drop` evicts 10,000+ entries a
//! burst and ctnetlink sends a destroy event for each while ct-trace's destroy watcher sleeps,
//! parses and reads the kernel's counters. Between bursts the burst's leftovers are deleted with
//! `conntrack -D` (deletions by a process, never evictions), so each burst evicts only its own
//! flows, told apart by their source ports.
//!
//! What a user sees must equal the kernel: one `evicted` event per `early_drop` of each burst,
//! each naming a flow of that burst, none twice; the summary's `table.evicted` with `kernel` ==
//! `shown`, `unseen` 0 and `overflows` 0. Should the kernel overflow the watcher's socket, the
//! overflow must be counted and the missing events be exactly the `unseen` ones. Beside
//! unrelated bulk traffic through the same node (its entry must not be lost) and IPv6 chatter.
//!
//! Alone in its test binary: `nf_conntrack_max` and `nf_conntrack_buckets` are global (restored
//! on drop, also when the test fails). Traffic stays in the test's namespaces; every wait is
//! bounded.

use std::{collections::HashSet, time::Instant};

use integration_tests::{
    flood_bin, in_vm, kernel_at_least, need_root, poll, CtTrace, GlobalSysctl, Topology, CLIENT,
    SERVICE,
};

const MAX: u64 = 512;
/// Few buckets for the table (the hash table is shared by every namespace): `early_drop` scans
/// at most 8 buckets from the new flow's, and evicts every unassured entry of the bucket it
/// finds one in, so with ~16 entries a bucket a new flow always finds room.
const BUCKETS: &str = "64";
const BURSTS: u16 = 3;

/// Flows a burst: enough for 10,000+ evictions each on the host, fewer under TCG.
fn syns() -> u16 {
    if in_vm() {
        3_000
    } else {
        14_000
    }
}

/// The source port of an `orig_src` of `CLIENT:PORT`.
fn client_port(e: &serde_json::Value) -> u16 {
    let src = e["entry"]["orig_src"].as_str().unwrap_or_default();
    let port = src
        .strip_prefix(&format!("{CLIENT}:"))
        .unwrap_or_else(|| panic!("an entry of the client: {e}"));
    port.parse().unwrap_or_else(|_| panic!("a port: {e}"))
}

#[test]
fn a_storm_of_evictions_is_counted_as_the_kernel_counts_it() {
    if !need_root("a_storm_of_evictions_is_counted_as_the_kernel_counts_it") {
        return;
    }
    let started = Instant::now();
    let syns = syns();
    let t = Topology::ipv4_only();
    // The backend never answers: every flow stays half-open (not ASSURED: evictable).
    t.server
        .exec("iptables -A INPUT -p tcp --dport 8080 --syn -j DROP");
    let _max = GlobalSysctl::set("net.netfilter.nf_conntrack_max", &MAX.to_string());
    let _buckets = GlobalSysctl::set("net.netfilter.nf_conntrack_buckets", BUCKETS);
    let ct = CtTrace::start(Some(&t.node), &[]);
    let _chatter = t.ipv6_chatter();
    // Bulk through the same node (another Service port), established before the first burst:
    // its entries are ASSURED, never evicted, and must survive the storms.
    let _bulk = t.bulk(if in_vm() { 60 } else { 20 });
    poll::connected(&t.client, 5201, 3);

    let mut kernel = Vec::new();
    for b in 0..BURSTS {
        let first = 1025 + b * syns;
        let early0 = t.node.kernel_counter("early_drop");
        let drop0 = t.node.kernel_counter("drop");
        let t0 = Instant::now();
        // Two senders at once, one a CPU: the storm's softirqs compete with the watcher.
        let flood = |from: u16| {
            format!(
                "{} --syn --first-port {from} {CLIENT} {SERVICE} {}",
                flood_bin().display(),
                syns / 2
            )
        };
        let sent = t.client.exec(&format!(
            "{} & a=$!; {} & b=$!; wait $a && wait $b",
            flood(first),
            flood(first + syns / 2)
        ));
        let sent_in = t0.elapsed();
        let settled = poll::counters_settled(&t.node, &["early_drop", "drop"]);
        let (early, drops) = (settled[0] - early0, settled[1] - drop0);
        // What the burst left in the table goes by a process's hand: deletions, not evictions.
        let deleted = t.node.exec(&format!(
            "conntrack -D -p tcp --orig-dst {SERVICE} --dport 80 2>&1 >/dev/null"
        ));
        eprintln!(
            "burst {b}: {} ({sent_in:.2?}); early_drop +{early}, drop +{drops}; {}",
            sent.trim().replace('\n', ", "),
            deleted.trim()
        );
        let least = if in_vm() { 2_000 } else { 10_000 };
        assert!(
            early >= least,
            "burst {b}: a storm of {least}+ evictions, the kernel evicted {early}"
        );
        kernel.push((first..first + syns, early));
    }
    let out = ct.stop();

    let evicted = out.of_kind("evicted");
    let mut ports = HashSet::new();
    for e in &evicted {
        let entry = &e["entry"];
        assert_eq!(entry["orig_dst"], format!("{SERVICE}:80"), "{e}");
        assert_eq!(entry["assured"], false, "{e}");
        if kernel_at_least(5, 11) {
            assert_eq!(entry["tcp_state"], "SYN_SENT", "{e}");
        }
        assert!(ports.insert(client_port(e)), "evicted twice: {e}");
    }
    let table = &out.summary()["table"];
    eprintln!("table: {table}");
    let ev = &table["evicted"];
    let n = |k: &str| {
        ev[k]
            .as_u64()
            .unwrap_or_else(|| panic!("table.evicted.{k}: {table}"))
    };
    let total: u64 = kernel.iter().map(|(_, e)| e).sum();
    assert_eq!(n("kernel"), total, "the kernel's early_drop delta: {table}");
    assert_eq!(n("shown"), evicted.len() as u64, "{table}");
    assert_eq!(n("kernel"), n("shown") + n("unseen"), "{table}");
    let uncertain = evicted.iter().filter(|e| e["certain"] == false).count();
    assert_eq!(n("inferred"), uncertain as u64, "{table}");
    // Per burst: its flows' evictions against the kernel's early_drop delta of the burst.
    let mut missing = 0;
    for (b, (range, early)) in kernel.iter().enumerate() {
        let seen = ports.iter().filter(|p| range.contains(p)).count() as u64;
        eprintln!("burst {b}: {seen} evicted shown, kernel early_drop +{early}");
        assert!(seen <= *early, "burst {b}: {seen} shown > {early}: {table}");
        missing += early - seen;
    }
    assert_eq!(ports.len() as u64, n("shown"), "every eviction in a burst");
    assert_eq!(missing, n("unseen"), "{table}");
    if n("overflows") == 0 {
        // Every flow was opened while ct-trace listened: each eviction has its event.
        assert_eq!(n("unseen"), 0, "events lost without an overflow: {table}");
    } else {
        // The kernel dropped events for the socket: said so, and exactly those are unseen.
        eprintln!("the destroy socket overflowed: {table}");
        assert!(n("unseen") > 0, "an overflow loses events: {table}");
    }
    // The bulk's entry stayed: nothing of it picked up mid-stream.
    assert!(
        out.of_kind("midstream").is_empty(),
        "{:#?}",
        out.of_kind("midstream")
    );
    eprintln!("took {:.1?}", started.elapsed());
}
