//! `--metrics`, the watched namespace's table (issue 22 part 3): a namespace's table is filled
//! through ctnetlink (`conntrack -I`, as the kernel would have created them) with 30 entries to a
//! Service kube-proxy's rules name and 12 to another address. A scrape must give each Service's
//! count exactly as `conntrack -L` lists them, `other` the rest with `--metrics-top-services 1`,
//! every series labelled with the namespace's inode, and the kernel's statistics counters as
//! `/proc/net/stat/nf_conntrack` of the namespace sums them, read before and after (ten scrapes
//! in a row, beside another namespace's table growing; the scrapes' loopback packets are
//! untracked, so only `ignore` moves meanwhile), also through ctnetlink where the procfs file is
//! hidden.
//!
//! Everything runs in a namespace the test created; every wait is bounded.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use integration_tests::{
    need_root,
    table::{self, insert, load_rules, Flow, KUBE_PROXY_RULES},
    CtTrace, Netns,
};

/// The table: 30 entries to the Service kube-proxy's rules name, 12 to another address; with
/// the `service` label ct-trace gives each.
const FLOWS: [(Flow, &str); 2] = [
    (
        Flow {
            n: 30,
            proto: "tcp",
            client: "10.0.0.1",
            port: 10_000,
            service: "10.96.0.10:80",
            backend: "10.77.2.2:8080",
            state: "ESTABLISHED",
            extra: "-u ASSURED",
        },
        "shop/web:http",
    ),
    (
        Flow {
            n: 12,
            proto: "tcp",
            client: "10.0.0.1",
            port: 11_000,
            service: "10.96.0.11:80",
            backend: "10.77.3.3:8080",
            state: "ESTABLISHED",
            extra: "-u ASSURED",
        },
        "10.96.0.11:80/tcp",
    ),
];

/// The families of the kernel's statistics and the column each is read from.
const STATS: [(&str, &str); 9] = [
    ("found", "found"),
    ("invalid", "invalid"),
    ("ignore", "ignore"),
    ("insert", "insert"),
    ("insert_failed", "insert_failed"),
    ("drop", "drop"),
    ("early_drop", "early_drop"),
    ("error", "icmp_error"),
    ("search_restart", "search_restart"),
];

fn filled() -> Netns {
    let ns = Netns::new("mtable");
    load_rules(&ns, KUBE_PROXY_RULES);
    // The scrapes' own connections (loopback) are left untracked: the table holds the known
    // flows alone, whatever the number of scrapes (their packets count as `ignore`).
    ns.exec("iptables -t raw -A OUTPUT -o lo -j NOTRACK && iptables -t raw -A PREROUTING -i lo -j NOTRACK");
    for (f, _) in FLOWS {
        insert(&ns, f, 0);
    }
    ns
}

/// `conntrack -L` of the namespace by Service address (`addr:port/proto`).
fn conntrack_l(ns: &Netns) -> BTreeMap<String, u64> {
    let [by_service, ..] = table::conntrack_l(ns);
    by_service
}

/// One scrape (classic text): sample (`name{labels}`) -> value.
fn scrape(ns: &Netns, ct: &mut CtTrace) -> BTreeMap<String, f64> {
    let addr = ct.metrics_addr();
    let body = ns.exec(&format!("curl -sS --max-time 10 http://{addr}/metrics"));
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

fn by_service(m: &BTreeMap<String, f64>, netns: u64) -> BTreeMap<String, u64> {
    let prefix = format!("ct_trace_conntrack_entries_by_service{{netns=\"{netns}\",service=\"");
    m.iter()
        .filter_map(|(k, v)| {
            let s = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((s.to_string(), *v as u64))
        })
        .collect()
}

#[test]
fn the_table_by_service_and_the_kernels_statistics_of_the_watched_namespace() {
    if !need_root("the_table_by_service_and_the_kernels_statistics_of_the_watched_namespace") {
        return;
    }
    let ns = filled();
    let netns = ns.inode();
    let listed = conntrack_l(&ns);
    assert_eq!(
        listed,
        BTreeMap::from([
            ("10.96.0.10:80/tcp".to_string(), 30),
            ("10.96.0.11:80/tcp".to_string(), 12)
        ])
    );

    let mut ct = CtTrace::start(Some(&ns), &["--metrics", "127.0.0.1:0"]);
    // The first scrape waits for the dump it starts: no retry needed, but bounded anyway.
    let t0 = Instant::now();
    let m = loop {
        let m = scrape(&ns, &mut ct);
        if by_service(&m, netns).get("shop/web:http") == Some(&30)
            || t0.elapsed() > Duration::from_secs(15)
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let want: BTreeMap<String, u64> = FLOWS
        .iter()
        .map(|(f, label)| (label.to_string(), listed[&format!("{}/tcp", f.service)]))
        .chain([("other".to_string(), 0)])
        .collect();
    assert_eq!(by_service(&m, netns), want, "against conntrack -L");
    assert_eq!(conntrack_l(&ns), listed, "the scrapes added no entry");
    let gauge = |m: &BTreeMap<String, f64>, name: &str| {
        m.get(&format!("{name}{{netns=\"{netns}\"}}"))
            .copied()
            .unwrap_or_else(|| panic!("no {name} of netns {netns}"))
    };
    assert_eq!(gauge(&m, "ct_trace_conntrack_entries"), 42.0);
    assert!(gauge(&m, "ct_trace_conntrack_entries_limit") > 0.0);

    // Ten scrapes in a row: each of the kernel's counters lies between the readings around the
    // scrape, and equals them when nothing moved the counters in between.
    // Beside them, another namespace's table grows by an entry a scrape: none of it is the
    // watched namespace's.
    let unrelated = Netns::new("mtable-other");
    for i in 0..10 {
        unrelated.exec(&format!(
            "conntrack -I -p tcp -s 10.0.0.9 -d 10.96.0.10 --sport {} --dport 80 --state ESTABLISHED -t 600 2>/dev/null",
            20_000 + i
        ));
        let before: Vec<u64> = STATS.iter().map(|(_, k)| ns.kernel_counter(k)).collect();
        let m = scrape(&ns, &mut ct);
        let after: Vec<u64> = STATS.iter().map(|(_, k)| ns.kernel_counter(k)).collect();
        for (j, (name, kernel)) in STATS.iter().enumerate() {
            let got = gauge(&m, &format!("ct_trace_conntrack_stat_{name}_total")) as u64;
            assert!(
                (before[j]..=after[j]).contains(&got),
                "scrape {i}: {name} {got}, kernel's {kernel} {} .. {}",
                before[j],
                after[j]
            );
            if before[j] == after[j] {
                assert_eq!(got, before[j], "scrape {i}: {name}");
            }
        }
        // 42 entries were inserted in this namespace, none since.
        assert_eq!(after[3], 42, "insert");
    }
    assert_eq!(
        unrelated.kernel_counter("insert"),
        10,
        "the unrelated namespace's"
    );
    drop(ct.stop());

    // One Service named, the other summed under `other`.
    let mut ct = CtTrace::start(
        Some(&ns),
        &["--metrics", "127.0.0.1:0", "--metrics-top-services", "1"],
    );
    let m = scrape(&ns, &mut ct);
    assert_eq!(
        by_service(&m, netns),
        BTreeMap::from([("shop/web:http".to_string(), 30), ("other".to_string(), 12)])
    );
    drop(ct.stop());

    // Where /proc/net/stat/nf_conntrack does not exist (Ubuntu's kernels): the same counters
    // through ctnetlink, which no longer reports `ignore` (5.14+): absent, never a made-up 0.
    let mut ct = CtTrace::start_without_procfs(&ns, &["--metrics", "127.0.0.1:0"]);
    let before: Vec<u64> = STATS.iter().map(|(_, k)| ns.kernel_counter(k)).collect();
    let m = scrape(&ns, &mut ct);
    let after: Vec<u64> = STATS.iter().map(|(_, k)| ns.kernel_counter(k)).collect();
    assert_eq!(by_service(&m, netns), want, "through ctnetlink");
    for (j, (name, _)) in STATS.iter().enumerate() {
        let got = m.get(&format!(
            "ct_trace_conntrack_stat_{name}_total{{netns=\"{netns}\"}}"
        ));
        match got {
            Some(v) => assert!((before[j]..=after[j]).contains(&(*v as u64)), "{name}: {v}"),
            None => assert_eq!(*name, "ignore", "only `ignore` may be absent"),
        }
    }
    drop(ct.stop());
}
