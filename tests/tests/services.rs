//! Service names without an API server: the node namespace carries the Service's DNAT in
//! kube-proxy's own shape (its iptables mode, or its nftables mode), and every attribution and
//! INVALID event ct-trace prints names the Service `shop/web:http` exactly as kube-proxy's
//! rules write it; `ct-trace doctor` says which mode it found. Without kube-proxy's rules the
//! same events come, unnamed, and nothing fails.
//!
//! The harness's own DNAT rules are replaced by kube-proxy's, so the name comes from the very
//! rules that carry the traffic. Traffic stays in the namespaces the tests create.

use std::time::{Duration, Instant};

use conntrack_user::node::services::REFRESH;
use integration_tests::{
    bin, in_vm, need_root, python, scripts, CtTrace, Output, Topology, CLIENT,
};
use serde_json::Value;

/// The Service port the rules name (`ServicePortName.String()`).
const NAME: &str = "shop/web:http";

/// The harness's Service in one family: its cluster IP, an external IP, the backend.
struct Family {
    cluster_ip: &'static str,
    external_ip: &'static str,
    backend_ip: &'static str,
    /// `ip:port` as DNAT writes it (`[addr]:port` for IPv6).
    backend: &'static str,
    metrics_backend: &'static str,
}

const V4: Family = Family {
    cluster_ip: "10.96.0.10",
    external_ip: "192.168.99.10",
    backend_ip: "10.77.2.2",
    backend: "10.77.2.2:8080",
    metrics_backend: "10.77.2.2:9090",
};
const V6: Family = Family {
    cluster_ip: "fd96::10",
    external_ip: "fd99::10",
    backend_ip: "fd77:2::2",
    backend: "[fd77:2::2]:8080",
    metrics_backend: "[fd77:2::2]:9090",
};

/// kube-proxy's iptables mode for the harness's Service (10.96.0.10:80 and [fd96::10]:80 ->
/// the server's 8080), as kube-proxy 1.28+ hands it to iptables-restore (`syncProxyRules()`,
/// kubernetes/kubernetes pkg/proxy/iptables/proxier.go): KUBE-SERVICES with the cluster IP, an
/// external IP and a NodePort of the same Service port, a second Service port, the KUBE-SVC-*
/// chain and its KUBE-SEP-* endpoint chain with the DNAT.
fn iptables_rules(f: &Family) -> String {
    let Family {
        cluster_ip: ip,
        external_ip: ext,
        backend_ip: be_ip,
        backend: be,
        metrics_backend: mbe,
    } = f;
    format!(
        "*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-OJWW7NSBVZTDHXNW - [0:0]
:KUBE-EXT-OJWW7NSBVZTDHXNW - [0:0]
:KUBE-SEP-2TGWM7QRKWQVRJTE - [0:0]
:KUBE-SVC-UVBN3LDXOKK6ZCR4 - [0:0]
:KUBE-SEP-HKG5ADZGTXGJUS2J - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODEPORTS -m comment --comment {NAME} -m tcp -p tcp --dport 30080 -j KUBE-EXT-OJWW7NSBVZTDHXNW
-A KUBE-SERVICES -m comment --comment \"{NAME} cluster IP\" -m tcp -p tcp -d {ip} --dport 80 -j KUBE-SVC-OJWW7NSBVZTDHXNW
-A KUBE-SERVICES -m comment --comment \"{NAME} external IP\" -m tcp -p tcp -d {ext} --dport 80 -j KUBE-EXT-OJWW7NSBVZTDHXNW
-A KUBE-SERVICES -m comment --comment \"shop/web:metrics cluster IP\" -m tcp -p tcp -d {ip} --dport 9090 -j KUBE-SVC-UVBN3LDXOKK6ZCR4
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-OJWW7NSBVZTDHXNW -m comment --comment \"masquerade traffic for {NAME} external destinations\" -j KUBE-MARK-MASQ
-A KUBE-EXT-OJWW7NSBVZTDHXNW -j KUBE-SVC-OJWW7NSBVZTDHXNW
-A KUBE-SVC-OJWW7NSBVZTDHXNW -m comment --comment \"{NAME} -> {be}\" -j KUBE-SEP-2TGWM7QRKWQVRJTE
-A KUBE-SEP-2TGWM7QRKWQVRJTE -m comment --comment {NAME} -s {be_ip} -j KUBE-MARK-MASQ
-A KUBE-SEP-2TGWM7QRKWQVRJTE -m comment --comment {NAME} -m tcp -p tcp -j DNAT --to-destination {be}
-A KUBE-SVC-UVBN3LDXOKK6ZCR4 -m comment --comment \"shop/web:metrics -> {mbe}\" -j KUBE-SEP-HKG5ADZGTXGJUS2J
-A KUBE-SEP-HKG5ADZGTXGJUS2J -m comment --comment shop/web:metrics -m tcp -p tcp -j DNAT --to-destination {mbe}
COMMIT
"
    )
}

/// kube-proxy's nftables mode for the same Service (`syncProxyRules()`, kubernetes/kubernetes
/// pkg/proxy/nftables/proxier.go): the `ip kube-proxy` table with the element comments early
/// versions write, the `ip6 kube-proxy` table without them (later versions), where the name
/// comes from the chain names.
fn nft_rules() -> String {
    let table = |f: &Family, family: &str, ipx: &str, ep_chain: &str, comment: &str| {
        let Family {
            cluster_ip: svc,
            external_ip: ext,
            backend_ip: ep_addr,
            backend: ep,
            ..
        } = f;
        let addr_type = if ipx == "ip" {
            "ipv4_addr"
        } else {
            "ipv6_addr"
        };
        format!(
            "table {family} kube-proxy {{
\tcomment \"rules for kube-proxy\"
\tmap service-ips {{
\t\ttype {addr_type} . inet_proto . inet_service : verdict
\t\tcomment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"
\t\telements = {{ {svc} . tcp . 80 {comment}: goto service-ZGTQKBNH-shop/web/tcp/http,
\t\t\t     {ext} . tcp . 80 {comment}: goto external-ZGTQKBNH-shop/web/tcp/http }}
\t}}
\tmap service-nodeports {{
\t\ttype inet_proto . inet_service : verdict
\t\telements = {{ tcp . 30080 : goto external-ZGTQKBNH-shop/web/tcp/http }}
\t}}
\tchain nat-prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}}
\tchain mark-for-masquerade {{
\t\tmark set mark or 0x4000
\t}}
\tchain services {{
\t\t{ipx} daddr . meta l4proto . th dport vmap @service-ips
\t}}
\tchain external-ZGTQKBNH-shop/web/tcp/http {{
\t\tjump mark-for-masquerade
\t\tgoto service-ZGTQKBNH-shop/web/tcp/http
\t}}
\tchain service-ZGTQKBNH-shop/web/tcp/http {{
\t\tnumgen random mod 1 vmap {{ 0 : goto endpoint-{ep_chain} }}
\t}}
\tchain endpoint-{ep_chain} {{
\t\t{ipx} saddr {ep_addr} jump mark-for-masquerade
\t\tmeta l4proto tcp dnat to {ep}
\t}}
}}
"
        )
    };
    table(
        &V4,
        "ip",
        "ip",
        "4AWEQXCT-shop/web/tcp/http__10.77.2.2/8080",
        &format!("comment \"{NAME}\" "),
    ) + &table(
        &V6,
        "ip6",
        "ip6",
        "SPQ7V2LF-shop/web/tcp/http__fd77.2..2/8080",
        "",
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rules {
    /// The harness's plain DNAT rules: no kube-proxy.
    None,
    Iptables,
    Nftables,
}

/// Builds the topology with the Service's DNAT in the given shape.
fn topology(rules: Rules) -> Topology {
    let t = Topology::new();
    if rules == Rules::None {
        return t;
    }
    // The harness's DNAT rules go: kube-proxy's carry the traffic.
    t.node
        .exec("iptables -t nat -F PREROUTING && ip6tables -t nat -F PREROUTING");
    match rules {
        Rules::Iptables => {
            let dir = std::env::temp_dir();
            for (cmd, text) in [
                ("iptables-restore", iptables_rules(&V4)),
                ("ip6tables-restore", iptables_rules(&V6)),
            ] {
                let f = dir.join(format!("ctt-kube-proxy-{}-{cmd}", t.node.name));
                std::fs::write(&f, text).unwrap();
                t.node.exec(&format!("{cmd} --noflush < {}", f.display()));
                let _ = std::fs::remove_file(&f);
            }
        }
        Rules::Nftables => {
            let f = std::env::temp_dir().join(format!("ctt-kube-proxy-{}.nft", t.node.name));
            std::fs::write(&f, nft_rules()).unwrap();
            t.node.exec(&format!("nft -f {}", f.display()));
            let _ = std::fs::remove_file(&f);
        }
        Rules::None => {}
    }
    t
}

/// `n` out-of-window replies through the Service (SEQ 2^30 past the window, each on a fresh
/// connection), with ct-trace in the node; returns the client ports and what ct-trace printed.
fn replies(t: &Topology, n: usize, v6: bool) -> (Vec<u64>, Output) {
    replies_to(t, CtTrace::start(Some(&t.node), &[]), n, v6)
}

/// [`replies`] with a ct-trace already running.
fn replies_to(t: &Topology, ct: CtTrace, n: usize, v6: bool) -> (Vec<u64>, Output) {
    let (ports, out, _) = replies_scraped(t, ct, n, v6, None);
    (ports, out)
}

/// [`replies_to`], then (before ct-trace stops) the text of its `--metrics` address, scraped
/// until it has the line wanted (at most 10 s): `scrape` is (address, line).
fn replies_scraped(
    t: &Topology,
    ct: CtTrace,
    n: usize,
    v6: bool,
    scrape: Option<(&str, &str)>,
) -> (Vec<u64>, Output, String) {
    let ports: Vec<u64> = t
        .segments("seq_over", n, v6)
        .iter()
        .map(|v| v["cport"].as_u64().expect("cport"))
        .collect();
    let mut metrics = String::new();
    if let Some((addr, line)) = scrape {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            metrics = t.node.exec(&format!(
                "{} {} get http://{addr}/metrics",
                python(),
                scripts().join("prom.py").display()
            ));
            if metrics.lines().any(|l| l == line) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    (ports, out, metrics)
}

/// One attribution per reply, each (and every INVALID event) with `service_name` `want`.
fn assert_named(out: &Output, ports: &[u64], want: Option<&str>, client: &str) {
    let attributions = out.of_kind("attribution");
    for p in ports {
        let c = if client.contains(':') {
            format!("[{client}]:{p}")
        } else {
            format!("{client}:{p}")
        };
        let mine: Vec<_> = attributions
            .iter()
            .filter(|a| a["client"] == c.as_str())
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "one attribution for {c}: {attributions:#?}\n{}",
            out.stderr
        );
    }
    assert_eq!(attributions.len(), ports.len(), "{attributions:#?}");
    let invalid = out.of_kind("invalid");
    assert!(invalid.len() >= ports.len(), "{:#?}", out.events);
    for e in attributions.iter().chain(invalid.iter()) {
        match want {
            Some(w) => assert_eq!(e["service_name"], w, "{e}\n{}", out.stderr),
            None => assert!(e["service_name"].is_null(), "{e}"),
        }
    }
    eprintln!("attribution: {}", attributions[0]);
}

/// `ct-trace doctor -o json` in the node: the names it found.
fn doctor(t: &Topology) -> Value {
    let out = t
        .node
        .exec(&format!("{} doctor -o json --window 0", bin().display()));
    let v: Value = serde_json::from_str(out.trim()).expect("doctor prints JSON");
    v["service_names"].clone()
}

#[test]
fn kube_proxy_iptables_rules_name_every_attribution_and_invalid_event() {
    if !need_root("kube_proxy_iptables_rules_name_every_attribution_and_invalid_event") {
        return;
    }
    let t = topology(Rules::Iptables);
    let addr = "127.0.0.1:19469";
    // The metrics count the attributed resets under the Service's name.
    let series = format!(
        "ct_trace_attributed_resets_total{{cause=\"invalid_packet\",service=\"{NAME}\"}} 5"
    );
    let ct = CtTrace::start(Some(&t.node), &["--metrics", addr]);
    let (ports, out, metrics) = replies_scraped(&t, ct, 5, false, Some((addr, &series)));
    assert!(
        out.stderr.contains("kube-proxy iptables mode"),
        "{}",
        out.stderr
    );
    assert_named(&out, &ports, Some(NAME), CLIENT);
    assert!(
        metrics.lines().any(|l| l == series),
        "{series} in\n{metrics}"
    );
    let (ports, out) = replies(&t, 3, true);
    assert_named(&out, &ports, Some(NAME), "fd77:1::2");
    let d = doctor(&t);
    assert_eq!(d["kube_proxy"], serde_json::json!(["iptables"]), "{d}");
    // shop/web:http and shop/web:metrics; cluster and external IPs in both families; the
    // endpoint of each port in both families.
    assert_eq!(d["services"], 2, "{d}");
    assert_eq!(d["addresses"], 6, "{d}");
    assert_eq!(d["endpoints"], 4, "{d}");
}

#[test]
fn kube_proxy_nftables_rules_name_every_attribution_and_invalid_event() {
    if !need_root("kube_proxy_nftables_rules_name_every_attribution_and_invalid_event") {
        return;
    }
    let t = topology(Rules::Nftables);
    let (ports, out) = replies(&t, 5, false);
    assert!(
        out.stderr.contains("kube-proxy nftables mode"),
        "{}",
        out.stderr
    );
    assert_named(&out, &ports, Some(NAME), CLIENT);
    // The IPv6 table has no element comments: the chain names carry the name.
    let (ports, out) = replies(&t, 3, true);
    assert_named(&out, &ports, Some(NAME), "fd77:1::2");
    let d = doctor(&t);
    assert_eq!(d["kube_proxy"], serde_json::json!(["nftables"]), "{d}");
    assert_eq!(d["services"], 1, "{d}");
    assert_eq!(d["addresses"], 4, "{d}");
    assert_eq!(d["endpoints"], 2, "{d}");
}

#[test]
fn without_kube_proxy_rules_the_events_come_unnamed() {
    if !need_root("without_kube_proxy_rules_the_events_come_unnamed") {
        return;
    }
    let t = topology(Rules::None);
    let (ports, out) = replies(&t, 3, false);
    assert!(
        out.stderr.contains("no kube-proxy rules in this namespace"),
        "{}",
        out.stderr
    );
    assert_named(&out, &ports, None, CLIENT);
    let d = doctor(&t);
    assert_eq!(d["kube_proxy"], serde_json::json!([]), "{d}");
    assert_eq!(d["services"], 0, "{d}");
}

/// A flow whose entry was deleted is picked up mid-stream without the Service's NAT: its
/// `midstream` event and the `entry_lost` attribution of its reset name the Service (from the
/// lost entry's Service address).
#[test]
fn lost_entries_through_kube_proxy_rules_are_named() {
    if !need_root("lost_entries_through_kube_proxy_rules_are_named") {
        return;
    }
    const FLOWS: usize = 4;
    let t = topology(Rules::Iptables);
    let ct = CtTrace::start(Some(&t.node), &[]);
    // The backend speaks after the entries were deleted (TCG is slow to run `conntrack -D`).
    let speak_after = if in_vm() { 6.0 } else { 1.5 };
    let (ports, out) = t.held_flows(ct, FLOWS, speak_after, |t| {
        t.node
            .exec("conntrack -D -p tcp --orig-dst 10.96.0.10 --dport 80 >/dev/null 2>&1");
    });
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(ports.len(), FLOWS);
    let mids = out.of_kind("midstream");
    let attributions = out.of_kind("attribution");
    assert_eq!(mids.len(), FLOWS, "{mids:#?}");
    assert_eq!(attributions.len(), FLOWS, "{attributions:#?}");
    for e in mids.iter().chain(attributions.iter()) {
        assert_eq!(e["service_name"], NAME, "{e}");
    }
    for a in &attributions {
        assert_eq!(a["cause"], "entry_lost", "{a}");
    }
    eprintln!("midstream: {}\nattribution: {}", mids[0], attributions[0]);
}

/// kube-proxy programs its rules while ct-trace runs: within one refresh (2 s, or ten times a
/// reading) the events name the Service.
#[test]
fn rules_written_after_start_are_read_within_a_refresh() {
    if !need_root("rules_written_after_start_are_read_within_a_refresh") {
        return;
    }
    let t = topology(Rules::None);
    // `-v`: ct-trace says when a reading of the rules found something new.
    let ct = CtTrace::start(Some(&t.node), &["-v"]);
    // kube-proxy's first sync replaces the plain DNAT.
    let f = std::env::temp_dir().join(format!("ctt-kube-proxy-{}-late", t.node.name));
    std::fs::write(&f, iptables_rules(&V4)).unwrap();
    t.node.exec(&format!(
        "iptables -t nat -F PREROUTING && iptables-restore --noflush < {}",
        f.display()
    ));
    let _ = std::fs::remove_file(&f);
    // The reading that names the Service is in use within one refresh and the reading itself.
    // A refresh is REFRESH or ten times as long as a reading, whichever is longer: on a busy
    // machine (or under TCG) iptables-save and nft take hundreds of ms, hence the margin.
    let within = REFRESH * if in_vm() { 15 } else { 5 };
    let took = ct.wait_stderr(within, |err| {
        err.lines().any(|l| {
            l.split("service names: ")
                .nth(1)
                .and_then(|r| r.split_once(" Service ports at "))
                .is_some_and(|(n, _)| n != "0")
        })
    });
    eprintln!("the rules were read {took:?} after kube-proxy wrote them");
    let (ports, out) = replies_to(&t, ct, 3, false);
    assert!(
        out.stderr.contains("no kube-proxy rules in this namespace"),
        "at start there were none: {}",
        out.stderr
    );
    assert_named(&out, &ports, Some(NAME), CLIENT);
}
