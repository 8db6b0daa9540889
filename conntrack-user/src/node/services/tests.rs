//! The parsers on kube-proxy's own shapes. The fixtures were made by loading kube-proxy's
//! restore input (iptables mode) and ruleset (nftables mode, element comments in the IPv4
//! table as early versions write them, none in the IPv6 table as later ones do) into a scratch
//! namespace and saving them back with iptables-save 1.8.9 (nf_tables) and `nft -j` 1.0.6.

use std::net::SocketAddr;

use super::*;

const IPT4: &str = include_str!("fixtures/iptables-save-nat.txt");
const IPT6: &str = include_str!("fixtures/ip6tables-save-nat.txt");
const NFT4: &[u8] = include_bytes!("fixtures/kube-proxy-ip.json");
const NFT6: &[u8] = include_bytes!("fixtures/kube-proxy-ip6.json");

const TCP: u8 = 6;
const UDP: u8 = 17;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn key(s: &str, proto: u8) -> Key {
    let a = sa(s);
    Key::new(a.ip(), a.port(), proto)
}

fn iptables(texts: &[&str]) -> ServiceNames {
    let mut b = Builder::default();
    for t in texts {
        parse_iptables_save(t, &mut b);
    }
    b.finish()
}

fn nft(jsons: &[&[u8]]) -> ServiceNames {
    let mut b = Builder::default();
    for j in jsons {
        parse_nft_json(j, &mut b);
    }
    b.finish()
}

/// What both modes must say about the same cluster (IPv4 part).
fn assert_v4_cluster(n: &ServiceNames) {
    let name = |svc: &str, proto| n.name(Some(sa(svc)), None, proto);
    assert_eq!(name("172.30.0.41:80", TCP), Some("ns1/svc1:p80"));
    // A second port of the same Service has its own name.
    assert_eq!(name("172.30.0.41:443", TCP), Some("ns1/svc1:https"));
    assert_eq!(name("172.30.0.42:80", TCP), Some("ns2/svc2:p80"));
    // External and load-balancer addresses name the Service too.
    assert_eq!(name("192.168.99.22:80", TCP), Some("ns2/svc2:p80"));
    assert_eq!(name("1.2.3.4:80", TCP), Some("ns2/svc2:p80"));
    // The protocol is part of the key.
    assert_eq!(
        name("172.30.0.10:53", UDP),
        Some("kube-system/kube-dns:dns")
    );
    assert_eq!(name("172.30.0.10:53", TCP), None);
    // A port the Service does not have, an address that is no Service.
    assert_eq!(name("172.30.0.41:81", TCP), None);
    assert_eq!(name("10.0.0.1:80", TCP), None);

    // A Service with two endpoints: both named.
    for ep in ["10.180.0.1:80", "10.180.0.2:80"] {
        assert!(
            n.backend_names(key(ep, TCP))
                .iter()
                .any(|x| &**x == "ns1/svc1:p80"),
            "{ep}: {:?}",
            n.backend_names(key(ep, TCP))
        );
    }
    assert_eq!(
        n.name(None, Some(sa("10.180.0.1:8443")), TCP),
        Some("ns1/svc1:https")
    );
    assert_eq!(
        n.name(None, Some(sa("10.180.0.3:53")), UDP),
        Some("kube-system/kube-dns:dns")
    );
    // 10.180.0.2:80 serves two Services: both kept, the Service address decides, and without it
    // the answer is the first name in order (not the order of the rules).
    let both: Vec<&str> = n
        .backend_names(key("10.180.0.2:80", TCP))
        .iter()
        .map(|x| &**x)
        .collect();
    assert_eq!(both, ["ns1/svc1:p80", "ns2/svc2:p80"]);
    let svc2 = Some(sa("172.30.0.42:80"));
    let ep2 = Some(sa("10.180.0.2:80"));
    assert_eq!(n.name(svc2, ep2, TCP), Some("ns2/svc2:p80"));
    assert_eq!(n.name(None, ep2, TCP), Some("ns1/svc1:p80"));
    // Through ns2/svc2's NodePort on the node's own address: that Service, not the first name.
    assert_eq!(
        n.name(Some(sa("192.168.0.2:3001")), ep2, TCP),
        Some("ns2/svc2:p80")
    );
    // A Service address not in the rules falls back to the backend; a NodePort is never taken
    // for a Service address.
    assert_eq!(
        n.name(Some(sa("192.168.0.2:3002")), ep2, TCP),
        Some("ns1/svc1:p80")
    );
    assert_eq!(
        n.name(Some(sa("192.168.0.2:3001")), Some(sa("10.180.0.1:80")), TCP),
        Some("ns1/svc1:p80")
    );
    assert_eq!(n.name(Some(sa("192.168.0.2:3001")), None, TCP), None);
}

#[test]
fn iptables_mode_names_services_and_endpoints() {
    let n = iptables(&[IPT4, IPT6]);
    assert!(n.modes.iptables && !n.modes.nftables);
    assert_v4_cluster(&n);
    // With more than 1000 endpoints kube-proxy writes no comment on the endpoint chains: the
    // name comes from the KUBE-SERVICES rule through the jumps.
    assert_eq!(
        n.name(None, Some(sa("10.180.0.4:8080")), TCP),
        Some("ns3/big:")
    );
    assert_eq!(
        n.name(Some(sa("172.30.0.43:80")), None, TCP),
        Some("ns3/big:")
    );
    // IPv6, from ip6tables-save.
    assert_eq!(
        n.name(Some(sa("[fd00:10:96::1]:80")), None, TCP),
        Some("ns6/web:http")
    );
    for ep in ["[fd00:10:244::5]:8080", "[fd00:10:244::6]:8080"] {
        assert_eq!(
            n.name(None, Some(sa(ep)), TCP),
            Some("ns6/web:http"),
            "{ep}"
        );
    }
    // 6 Service ports (svc1 p80 and https, svc2, dns, big, web), 8 addresses (7 IPv4, 1 IPv6),
    // 7 endpoints.
    assert_eq!(n.counts(), (6, 8, 7));
}

/// Legacy iptables-save quotes a comment only when it has spaces; nothing else changes.
#[test]
fn iptables_legacy_quoting() {
    let legacy: String = IPT4
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split("--comment \"").collect();
            match w.as_slice() {
                [a, b] => match b.split_once('"') {
                    Some((c, rest)) if !c.contains(' ') => format!("{a}--comment {c}{rest}\n"),
                    _ => format!("{l}\n"),
                },
                _ => format!("{l}\n"),
            }
        })
        .collect();
    assert!(legacy.contains("--comment ns1/svc1:p80 -m tcp -j DNAT"));
    let n = iptables(&[&legacy]);
    assert_v4_cluster(&n);
}

#[test]
fn iptables_negations_and_wider_prefixes_are_not_services() {
    let save = "\
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES ! -d 10.0.0.1/32 -p tcp -m comment --comment \"ns/a:p cluster IP\" -m tcp --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SERVICES -d 10.0.0.0/24 -p tcp -m comment --comment \"ns/b:p cluster IP\" -m tcp --dport 80 -j KUBE-SVC-BBBBBBBBBBBBBBBB
-A KUBE-SERVICES -d 10.0.0.3/32 -p tcp -m comment --comment \"ns/c:p has no endpoints\" -m tcp --dport 80 -j REJECT
COMMIT
";
    let n = iptables(&[save]);
    assert!(n.modes.iptables);
    assert!(n.is_empty(), "{n:?}");
}

#[test]
fn nftables_mode_names_services_and_endpoints() {
    let n = nft(&[NFT4, NFT6]);
    assert!(n.modes.nftables && !n.modes.iptables);
    assert_v4_cluster(&n);
    // No element comments in the IPv6 table (later kube-proxy): the chain names carry the name,
    // also for an unnamed port.
    assert_eq!(
        n.name(Some(sa("[fd00:10:96::1]:80")), None, TCP),
        Some("ns6/web:http")
    );
    assert_eq!(
        n.name(Some(sa("[fd00:10:96::1]:8443")), None, TCP),
        Some("ns6/web:")
    );
    let ep5: Vec<&str> = n
        .backend_names(key("[fd00:10:244::5]:8080", TCP))
        .iter()
        .map(|x| &**x)
        .collect();
    assert_eq!(ep5, ["ns6/web:http"]);
    assert_eq!(
        n.name(None, Some(sa("[fd00:10:244::6]:8080")), TCP),
        Some("ns6/web:http")
    );
    assert_eq!(
        n.name(None, Some(sa("[fd00:10:244::5]:8443")), TCP),
        Some("ns6/web:")
    );
}

#[test]
fn chain_names() {
    let c = nft::name_of_chain;
    assert_eq!(
        c("service-ULMVA6XW-ns1/svc1/tcp/p80").as_deref(),
        Some("ns1/svc1:p80")
    );
    assert_eq!(
        c("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80").as_deref(),
        Some("ns1/svc1:p80")
    );
    assert_eq!(
        c("endpoint-OKX4QW3Z-ns6/web/tcp/http__fd00.10.244..5/8080").as_deref(),
        Some("ns6/web:http")
    );
    assert_eq!(
        c("external-MHHHYRWA-my-ns/my-svc/udp/").as_deref(),
        Some("my-ns/my-svc:")
    );
    // Cut by kube-proxy (too long), not kube-proxy's, malformed.
    assert_eq!(c("service-ULMVA6XW-ns1/svc1/tc..."), None);
    assert_eq!(c("services"), None);
    assert_eq!(c("mark-for-masquerade"), None);
    assert_eq!(c("service-SHORT-ns/a/tcp/p"), None);
    assert_eq!(c("service-ULMVA6XW-ns/a/icmp/p"), None);
    assert_eq!(c("service-ULMVA6XW-ns/a/tcp/p/extra"), None);
}

#[test]
fn garbage_never_panics_and_names_nothing() {
    let garbage: [&str; 9] = [
        "",
        "-A",
        "-A KUBE-SERVICES",
        "-A KUBE-SERVICES -m comment --comment \"unterminated cluster IP -d 10.0.0.1 --dport 80",
        "-A KUBE-SERVICES -m comment --comment \"x cluster IP\" -p tcp -d 10.0.0.1/32 --dport 99999 -j KUBE-SVC-X",
        "-A KUBE-SERVICES -m comment --comment \"x cluster IP\" -p bogus -d 10.0.0.1/32 --dport 80 -j KUBE-SVC-X",
        "-A KUBE-SEP-X -p tcp -j DNAT --to-destination not-an-address",
        "-A KUBE-SEP-X -p tcp -j DNAT --to-destination",
        "\u{0}\u{ff}\"\\",
    ];
    for g in garbage {
        let n = iptables(&[g]);
        assert!(n.is_empty(), "{g:?}: {n:?}");
    }
    for g in [
        &b""[..],
        b"{",
        b"[]",
        b"{\"nftables\": 3}",
        b"{\"nftables\": [{\"map\": {\"name\": \"service-ips\", \"elem\": [[1, 2], [{\"concat\": [\"x\", \"tcp\", 80]}, {}], [{\"concat\": [\"10.0.0.1\", \"tcp\", 70000]}, {\"goto\": {\"target\": \"service-ULMVA6XW-a/b/tcp/p\"}}]]}}]}",
        b"{\"nftables\": [{\"rule\": {\"chain\": \"endpoint-5OJB2KTY-a/b/tcp/p__1.2.3.4/80\", \"expr\": [{\"dnat\": {\"addr\": \"1.2.3.4\", \"port\": 80}}]}}]}",
    ] {
        let n = nft(&[g]);
        assert!(n.is_empty(), "{}: {n:?}", String::from_utf8_lossy(g));
    }
    // Text where JSON was expected, and the reverse.
    assert!(nft(&[IPT4.as_bytes()]).is_empty());
    let n = iptables(&[&String::from_utf8_lossy(NFT4)]);
    assert!(n.is_empty());
}

#[test]
fn no_rules_no_names() {
    let n = Rulesets::default().parse(MAX_ENTRIES);
    assert!(n.is_empty());
    assert_eq!(n.modes, Modes::default());
    let r = NamesReport::of(&n);
    assert_eq!(r.kube_proxy, Some(vec![]), "every ruleset read: none here");
    assert_eq!(r.rules_read, RulesRead::All);
    assert_eq!((r.services, r.addresses, r.endpoints), (0, 0, 0));
}

#[test]
fn unreadable_rules_are_unknown_names_not_none() {
    let why = "`iptables-save -t nat`: exit status: 4: Permission denied (you must be root)";
    let mut rules = Rulesets {
        unread: vec![why.to_string(); Rulesets::READINGS],
        ..Default::default()
    };
    let r = NamesReport::of(&rules.parse(MAX_ENTRIES));
    assert_eq!(
        r.kube_proxy, None,
        "nothing read: unknown, not an empty list"
    );
    assert_eq!(r.rules_read, RulesRead::Nothing);
    assert_eq!(r.unread.len(), Rulesets::READINGS);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["kube_proxy"], serde_json::Value::Null);
    assert_eq!(json["rules_read"], "none");
    // iptables read (and naming Services), nft not: what was found stands.
    rules.unread.truncate(2);
    rules.iptables[0] = Some(IPT4.as_bytes().to_vec());
    let r = NamesReport::of(&rules.parse(MAX_ENTRIES));
    assert_eq!(r.kube_proxy, Some(vec!["iptables"]));
    assert_eq!(r.rules_read, RulesRead::Partial);
}

#[test]
fn the_index_is_bounded() {
    let mut b = Builder::with_limit(5);
    parse_iptables_save(IPT4, &mut b);
    let n = b.finish();
    let (_, addrs, endpoints) = n.counts();
    let backends: usize = n.backends.values().map(Vec::len).sum();
    let nodeports: usize = n.nodeports.values().map(Vec::len).sum();
    assert_eq!(addrs + backends + nodeports, 5);
    assert!(endpoints <= 5);
    // 7 addresses, 6 endpoint names (10.180.0.2:80 has two) and a NodePort in the fixture.
    assert_eq!(n.over_limit, 7 + 6 + 1 - 5);
}

#[test]
fn the_lookup_is_swapped_whole() {
    let l = ServiceLookup::default();
    assert_eq!(l.name(Some(sa("172.30.0.41:80")), None, TCP), None);
    l.set(iptables(&[IPT4]));
    assert_eq!(
        l.name(Some(sa("172.30.0.41:80")), None, TCP).as_deref(),
        Some("ns1/svc1:p80")
    );
    // A packet of unknown direction: its destination as a Service, or either end as a backend.
    assert_eq!(
        l.name_of_packet(sa("10.180.0.1:80"), sa("10.0.0.9:4000"), TCP)
            .as_deref(),
        Some("ns1/svc1:p80")
    );
    assert_eq!(
        l.name_of_packet(sa("10.0.0.9:4000"), sa("10.180.0.3:53"), UDP)
            .as_deref(),
        Some("kube-system/kube-dns:dns")
    );
    assert_eq!(
        l.name_of_packet(sa("10.0.0.9:4000"), sa("172.30.0.42:80"), TCP)
            .as_deref(),
        Some("ns2/svc2:p80")
    );
    let snap = l.snapshot();
    l.set(ServiceNames::default());
    // A snapshot taken before stays whole.
    assert_eq!(
        snap.name(Some(sa("172.30.0.41:80")), None, TCP),
        Some("ns1/svc1:p80")
    );
    assert!(l.snapshot().is_empty());
}
