use std::collections::HashMap;

use super::{
    table::{below_default_advice, chain_advice, timeout_advice},
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

/// The three rulesets doctor reads, each read or failing with `error`.
fn rulesets(read: [bool; 3], error: &str) -> Vec<Ruleset> {
    let cmds = [
        ("iptables-save -c", "ipv4"),
        ("ip6tables-save -c", "ipv6"),
        ("nft list ruleset", "all"),
    ];
    (cmds.iter().zip(read))
        .map(|((command, family), read)| Ruleset {
            command: command.to_string(),
            family,
            read,
            error: (!read).then(|| error.to_string()),
        })
        .collect()
}

const DENIED: &str = "exit status: 4: iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)";

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
        counters_source: None,
        who: None,
        drop_rules: Some(vec![]),
        kube_proxy: None,
        rules_read: RulesRead::All,
        rulesets: rulesets([true; 3], ""),
        cap_net_admin: true,
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
    p.drop_rules = Some(iptables_drop_rules(
        "[0:0] -A FORWARD -m conntrack --ctstate INVALID -j DROP",
        "ipv4",
        "iptables",
    ));
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
fn unread_rulesets_decide_nothing() {
    // No CAP_NET_ADMIN: nothing read, so neither exposed nor protected by a rule.
    let mut p = posture();
    p.drop_rules = None;
    p.rulesets = rulesets([false; 3], DENIED);
    p.cap_net_admin = false;
    judge(&mut p);
    assert_eq!(p.verdict, "unknown");
    let a = p.advice.join("\n");
    assert!(
        a.contains("no ruleset could be read") && a.contains("CAP_NET_ADMIN"),
        "{a}"
    );
    assert!(!a.contains("EXPOSED"), "{a}");
    assert!(
        a.contains("1. sysctl"),
        "the fixes still apply if nothing drops: {a}"
    );
    // With the capability but a tool failing: the command and its error are named.
    p.cap_net_admin = true;
    judge(&mut p);
    let a = p.advice.join("\n");
    assert!(a.contains("`iptables-save -c`: exit status: 4"), "{a}");
    // iptables read and empty, nft not: still unknown, not exposed.
    p.rulesets = rulesets([true, true, false], "nft is not installed");
    p.drop_rules = None;
    judge(&mut p);
    assert_eq!(p.verdict, "unknown");
    assert!(
        p.advice[0].contains("not all could be read"),
        "{:?}",
        p.advice
    );
    assert!(
        p.advice[0].contains("nft is not installed"),
        "{:?}",
        p.advice
    );
    // A rule found in what was read protects; IPv6 is unknown, not "no such rule".
    p.rulesets = rulesets([true, false, false], DENIED);
    p.drop_rules = Some(iptables_drop_rules(
        "[0:0] -A FORWARD -m conntrack --ctstate INVALID -j DROP",
        "ipv4",
        "iptables",
    ));
    judge(&mut p);
    assert_eq!(p.verdict, "protected-rule");
    let a = p.advice.join("\n");
    assert!(
        a.contains("whether IPv6 packets are dropped too is unknown"),
        "{a}"
    );
    assert!(!a.contains("no such rule for IPv6"), "{a}");
    // Liberal tracking decides without any rule.
    p.tcp_be_liberal = Some(1);
    p.drop_rules = None;
    judge(&mut p);
    assert_eq!(p.verdict, "protected-liberal");
    // JSON: an unknown list is null, and each ruleset says why it was not read.
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["drop_rules"], serde_json::Value::Null);
    assert_eq!(json["rulesets"][1]["read"], false);
    assert_eq!(json["rulesets"][1]["error"], DENIED);
    assert!(json["rulesets"][0].get("error").is_none());
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
fn max_against_the_kernels_own_default() {
    assert_eq!(vs_default(1000, 1000), VsDefault::At);
    assert_eq!(vs_default(901, 1000), VsDefault::At);
    assert_eq!(vs_default(899, 1000), VsDefault::Below);
    assert_eq!(vs_default(1101, 1000), VsDefault::Above);
    let meminfo = "MemTotal:       24684092 kB\nMemFree:         1000 kB\n";
    assert_eq!(mem_total(meminfo), Some(24684092 * 1024));
    assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    assert_eq!(mem_total("MemTotal: lots kB\n"), None);
    // This build machine: 23.5 GiB, 6.18, max 262144. The kernel's own default, not "below"
    // the write-ups' 771377.
    let mut t = Table {
        max: Some(262_144),
        buckets: Some(262_144),
        ram_bytes: Some(24684092 * 1024),
        kernel: Some("6.18.44-fc".into()),
        ..Default::default()
    };
    t.derive();
    assert_eq!(t.version(), Some((6, 18)));
    assert_eq!(t.max_vs_kernel_default, Some(VsDefault::At));
    let d = t.kernel_default.as_ref().unwrap();
    assert_eq!((d.max, d.buckets), (262_144, Some(262_144)));
    assert!(d.formula.starts_with("Linux 5.15+"), "{}", d.formula);
    let w = t.writeups.as_ref().unwrap();
    assert_eq!(w.max, 771_377);
    assert!(
        w.formula.contains("RAM/16384/(word bits/32)"),
        "{}",
        w.formula
    );
    assert!(below_default_advice(&t).is_none());
    assert!(table_advice(&t).is_empty(), "{:?}", table_advice(&t));
    let mut out = vec![];
    write_table(&mut out, &t).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("262144 is at this kernel's own default for 23.5 GiB of RAM on 6.18.44-fc: max 262144, buckets 262144 (Linux 5.15+"),
        "{text}"
    );
    assert!(text.contains("771377 (the write-ups' formula"), "{text}");
    assert!(!text.contains("below"), "{text}");
    // The same node on 5.10: 65536 buckets, max 4x; the ratio is that kernel's own.
    t.kernel = Some("5.10.0-32-amd64".into());
    t.buckets = Some(65_536);
    t.derive();
    assert_eq!(t.max_vs_kernel_default, Some(VsDefault::At));
    assert_eq!(t.kernel_default.as_ref().unwrap().buckets, Some(65_536));
    // Lowered below the kernel's own default: said, with the default to go back to.
    t.kernel = Some("6.1.0".into());
    t.max = Some(65_536);
    t.buckets = Some(262_144);
    t.derive();
    assert_eq!(t.max_vs_kernel_default, Some(VsDefault::Below));
    let a = below_default_advice(&t).unwrap();
    assert!(a.contains("nf_conntrack_max=65536 is below this kernel's own default for this RAM (262144: Linux 5.15+"), "{a}");
    // Kernel or RAM unknown: no default, no judgement.
    t.kernel = None;
    t.derive();
    assert_eq!(
        (t.kernel_default.as_ref(), t.max_vs_kernel_default),
        (None, None)
    );
    assert!(below_default_advice(&t).is_none());
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
        kernel: Some("6.12.0".into()),
        ..Default::default()
    };
    t.derive();
    assert_eq!(t.verdict, TableVerdict::Ok);
    // Roomy, but lowered below the kernel's own default for 8 GiB: that is said.
    assert_eq!(table_advice(&t).len(), 1, "{:?}", table_advice(&t));
    // Nearly full, and below the kernel's own default for 8 GiB (262144 on 64-bit since
    // 5.15): raise it back to that.
    t.entries = Some(9000);
    t.derive();
    assert_eq!(t.max_vs_kernel_default, Some(VsDefault::Below));
    let a = table_advice(&t).join("\n");
    assert!(a.contains("90%") && a.contains("75% alert"), "{a}");
    assert!(
        a.contains("at least back to this kernel's own default for this RAM (262144)"),
        "{a}"
    );
    assert!(a.contains("nf_conntrack_max=262144"), "{a}");
    // Full by the counters alone, with max already what the RAM allows: no higher max.
    t.entries = Some(10);
    t.ram_bytes = Some(16 * gib);
    t.max = Some(262144);
    t.buckets = Some(262144);
    t.window_s = 1.0;
    t.deltas = Some(Deltas::between(&counters(0, 0, 0), &counters(20, 60, 0)));
    t.derive();
    assert_eq!(
        (t.verdict, t.max_vs_kernel_default),
        (TableVerdict::Full, Some(VsDefault::At))
    );
    let a = table_advice(&t).join("\n");
    assert!(
        a.contains("the table is full") && a.contains("dropped 20"),
        "{a}"
    );
    // The kernel's default is not "too small": a larger size is offered only because the
    // table is full, labelled with the formula it comes from.
    assert!(
        a.contains("already at or above this kernel's own default"),
        "{a}"
    );
    assert!(a.contains("e.g. to 524288 (the write-ups' formula"), "{a}");
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
