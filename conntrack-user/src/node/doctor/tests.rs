use std::collections::HashMap;

use super::{
    table::{chain_advice, timeout_advice},
    text::{name, write_table},
    *,
};

#[test]
fn finds_invalid_drop_rules_with_counters() {
    let save = "*filter\n:FORWARD ACCEPT [0:0]\n[7:420] -A FORWARD -m conntrack --ctstate INVALID -j DROP\n[0:0] -A FORWARD -j ACCEPT\nCOMMIT\n";
    let r = iptables_drop_rules(save, "ipv4", "iptables");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].packets, Some(7));
    assert_eq!(
        r[0].rule,
        "-A FORWARD -m conntrack --ctstate INVALID -j DROP"
    );
    let nft = "table inet filter {\n\tchain forward {\n\t\tct state invalid counter packets 3 bytes 180 drop\n\t}\n}\n";
    let r = nft_drop_rules(nft, "");
    assert_eq!((r.len(), r[0].packets, r[0].family), (1, Some(3), "inet"));
    let managed = "table ip filter {\n\tchain FORWARD {\n\t\tct state invalid counter packets 0 bytes 0 drop\n\t}\n}\n";
    let warning = "# Warning: table ip filter is managed by iptables-nft, do not touch!\n";
    assert!(
        nft_drop_rules(managed, warning).is_empty(),
        "counted once, through iptables-save"
    );
    assert_eq!(nft_drop_rules(managed, "")[0].family, "ipv4");
}

fn posture() -> Posture {
    Posture {
        netns: 1,
        tcp_be_liberal: Some(0),
        tcp_ignore_invalid_rst: Some(0),
        log_invalid: Some(0),
        entries: Some(10),
        max: Some(100),
        buckets: Some(25),
        counters: Default::default(),
        drop_rules: vec![],
        kube_proxy: None,
        rules_read: true,
        verdict: "",
        table: Table {
            entries: Some(10),
            max: Some(100),
            buckets: Some(100),
            tcp_timeouts: TcpTimeouts {
                established: Some(432000),
                ..Default::default()
            },
            ..Default::default()
        },
        service_names: crate::node::services::NamesReport::of(&Default::default()),
        advice: vec![],
    }
}

#[test]
fn verdicts_follow_the_fixes() {
    let mut p = posture();
    judge(&mut p);
    assert_eq!(p.verdict, "exposed");
    p.tcp_be_liberal = Some(1);
    judge(&mut p);
    assert_eq!(p.verdict, "protected-liberal");
    p.tcp_be_liberal = Some(0);
    p.drop_rules = iptables_drop_rules(
        "[0:0] -A FORWARD -m conntrack --ctstate INVALID -j DROP",
        "ipv4",
        "iptables",
    );
    judge(&mut p);
    assert_eq!(p.verdict, "protected-rule");
    assert!(
        p.advice.iter().any(|a| a.contains("IPv6")),
        "{:?}",
        p.advice
    );
    p.table.entries = Some(80);
    judge(&mut p);
    assert_eq!(p.verdict, "protected-rule", "the table does not change it");
    assert_eq!(p.table.verdict, TableVerdict::Pressure);
    assert!(p.advice.iter().any(|a| a.contains("80%")), "{:?}", p.advice);
}

#[test]
fn utilisation_classifies_at_the_alert_and_the_limit() {
    assert_eq!(utilisation(3, 4), Some(0.75));
    assert_eq!(
        utilisation(1, 0),
        None,
        "no limit read: unknown, not a division"
    );
    assert_eq!(pressure(0.0), Pressure::Ok);
    assert_eq!(pressure(0.7499), Pressure::Ok);
    assert_eq!(pressure(0.75), Pressure::High);
    assert_eq!(pressure(0.99), Pressure::High);
    assert_eq!(pressure(1.0), Pressure::Full);
    assert_eq!(name(Pressure::High), "high");
    assert_eq!(name(TableVerdict::Full), "full");
}

#[test]
fn ram_formula_and_its_band() {
    // 16 GiB: 1 entry per 16 KiB on 32-bit, per 32 KiB on 64-bit.
    let ram = 16u64 << 30;
    assert_eq!(recommended_max(ram, 32), 1 << 20);
    assert_eq!(recommended_max(ram, 64), 1 << 19);
    assert_eq!(recommended_max(0, 64), 0);
    assert_eq!(max_vs_ram(1000, 1000), MaxVsRam::At);
    assert_eq!(max_vs_ram(901, 1000), MaxVsRam::At);
    assert_eq!(max_vs_ram(899, 1000), MaxVsRam::Below);
    assert_eq!(max_vs_ram(1101, 1000), MaxVsRam::Above);
    let meminfo = "MemTotal:       24684092 kB\nMemFree:         1000 kB\n";
    assert_eq!(mem_total(meminfo), Some(24684092 * 1024));
    assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    assert_eq!(mem_total("MemTotal: lots kB\n"), None);
}

#[test]
fn bucket_ratio_against_the_kernels_sizing() {
    assert_eq!(max_per_bucket(262144, 262144), Some(1.0));
    assert_eq!(max_per_bucket(1200, 300), Some(4.0));
    assert_eq!(max_per_bucket(1, 0), None);
    let mut t = Table {
        max: Some(262144),
        buckets: Some(262144),
        ..Default::default()
    };
    t.derive();
    assert_eq!(t.long_chains, Some(false));
    assert!(chain_advice(&t).is_none());
    // The incident's test cluster: max = 4 x buckets.
    t.buckets = Some(65536);
    t.derive();
    assert_eq!(t.long_chains, Some(true));
    let a = chain_advice(&t).unwrap();
    assert!(
        a.contains("4.0x") && a.contains("averages 8 entries"),
        "{a}"
    );
    assert!(a.contains("nf_conntrack_buckets=262144"), "{a}");
}

fn counters(drop: u64, early_drop: u64, insert_failed: u64) -> HashMap<String, u64> {
    [
        ("drop", drop),
        ("early_drop", early_drop),
        ("insert_failed", insert_failed),
        ("invalid", 5),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn deltas_and_what_they_say_about_room() {
    let d = Deltas::between(&counters(10, 0, 2), &counters(10, 0, 2));
    assert_eq!(d.drop, Some(0));
    assert_eq!(d.clash_resolve, None, "no clashres column: unknown");
    assert!(!d.table_was_full());
    // Lost insert races drop packets too: not a full table.
    let d = Deltas::between(&counters(10, 0, 2), &counters(13, 0, 5));
    assert_eq!((d.drop, d.insert_failed), (Some(3), Some(3)));
    assert!(!d.table_was_full());
    assert!(Deltas::between(&counters(10, 0, 2), &counters(14, 0, 5)).table_was_full());
    assert!(Deltas::between(&counters(0, 0, 0), &counters(0, 1, 0)).table_was_full());
    assert_eq!(table_verdict(None, None), TableVerdict::Unknown);
    assert_eq!(table_verdict(Some(Pressure::Ok), None), TableVerdict::Ok);
    assert_eq!(
        table_verdict(Some(Pressure::High), None),
        TableVerdict::Pressure
    );
    assert_eq!(
        table_verdict(Some(Pressure::Full), None),
        TableVerdict::Full
    );
    let full = Deltas::between(&counters(0, 0, 0), &counters(20, 60, 0));
    assert_eq!(
        table_verdict(Some(Pressure::Ok), Some(&full)),
        TableVerdict::Full
    );
    assert_eq!(table_verdict(None, Some(&full)), TableVerdict::Full);
}

#[test]
fn advice_names_the_fix_that_applies() {
    let gib = 1u64 << 30;
    let mut t = Table {
        entries: Some(1000),
        max: Some(10000),
        buckets: Some(10000),
        ram_bytes: Some(8 * gib),
        ..Default::default()
    };
    t.derive();
    assert_eq!(t.verdict, TableVerdict::Ok);
    assert!(table_advice(&t).is_empty(), "{:?}", table_advice(&t));
    // Nearly full, and below what 8 GiB allows (262144 on 64-bit): raise it to that.
    t.entries = Some(9000);
    t.derive();
    assert_eq!(t.max_vs_ram, Some(MaxVsRam::Below));
    let a = table_advice(&t).join("\n");
    assert!(a.contains("90%") && a.contains("75% alert"), "{a}");
    assert!(a.contains("nf_conntrack_max=262144"), "{a}");
    // Full by the counters alone, with max already what the RAM allows: no higher max.
    t.entries = Some(10);
    t.max = Some(262144);
    t.buckets = Some(262144);
    t.window_s = 1.0;
    t.deltas = Some(Deltas::between(&counters(0, 0, 0), &counters(20, 60, 0)));
    t.derive();
    assert_eq!(
        (t.verdict, t.max_vs_ram),
        (TableVerdict::Full, Some(MaxVsRam::At))
    );
    let a = table_advice(&t).join("\n");
    assert!(
        a.contains("the table is full") && a.contains("dropped 20"),
        "{a}"
    );
    assert!(a.contains("already at or above"), "{a}");
    // Nothing readable: no advice, no panic.
    let mut t = Table::default();
    t.derive();
    assert_eq!(t.verdict, TableVerdict::Unknown);
    assert!(table_advice(&t).is_empty());
    let mut out = vec![];
    write_table(&mut out, &t).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("table pressure                       unknown"),
        "{text}"
    );
}

#[test]
fn short_established_timeouts_cost_idle_flows_their_nat() {
    let mut t = Table::default();
    assert!(timeout_advice(&t).is_none(), "unknown: nothing to say");
    t.tcp_timeouts.established = Some(432000);
    assert!(timeout_advice(&t).is_none());
    t.tcp_timeouts.established = Some(3600);
    let a = timeout_advice(&t).unwrap();
    assert!(a.contains("=3600s") && a.contains("mid-stream"), "{a}");
    t.tcp_loose = Some(0);
    assert!(timeout_advice(&t).unwrap().contains("INVALID"));
}

#[test]
fn windows_parse() {
    assert_eq!(parse_window("0"), Ok(Duration::ZERO));
    assert_eq!(parse_window("0.5"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_window("250ms"), Ok(Duration::from_millis(250)));
    assert!(parse_window("-1").is_err());
    assert!(parse_window("soon").is_err());
}
