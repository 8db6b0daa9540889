//! kube-proxy's iptables mode, read from `iptables-save -t nat` (and `ip6tables-save`).
//!
//! The shape followed is that of kube-proxy 1.28 to 1.34, `syncProxyRules()` and
//! `writeServiceToEndpointRules()` in kubernetes/kubernetes pkg/proxy/iptables/proxier.go
//! (`svcPortNameString` is `ServicePortName.String()`, "namespace/name:portname", with an empty
//! port name for an unnamed port):
//!
//! ```text
//! -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
//! -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 external IP" ... -d 192.168.99.11 --dport 80 -j KUBE-EXT-XPGD46QRK7WJZT7O
//! -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP" ... -d 1.2.3.4 --dport 80 -j KUBE-EXT-... (or KUBE-FW-...)
//! -A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-XPGD46QRK7WJZT7O
//! -A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O
//! -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic ... -j KUBE-SEP-SXIVWICOYRO3J4NJ
//! -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
//! ```
//!
//! iptables-save prints the matches in its own order (`-d 172.30.0.41/32 -p tcp -m comment
//! --comment "..." -m tcp --dport 80`), and iptables-nft quotes every comment where legacy
//! iptables quotes only those with spaces: the parser reads options wherever they are.
//!
//! With more than 1000 endpoints kube-proxy drops the comments of the KUBE-SVC-* -> KUBE-SEP-*
//! and KUBE-SEP-* rules (`appendServiceCommentLocked()`, "largeClusterMode"), so an endpoint's
//! name is also followed from the KUBE-SERVICES rule through the chains that jump to its
//! KUBE-SEP-* chain. The comments of the KUBE-SERVICES rules are always written.

use std::collections::{BTreeSet, HashMap};

use super::{host_addr, proto_number, reach, Builder, Key};

/// The suffixes kube-proxy appends to a name in the comments of KUBE-SERVICES rules.
const SERVICE_SUFFIXES: [&str; 3] = [" cluster IP", " external IP", " loadbalancer IP"];
/// Chains of one Service port or endpoint, through which names are followed.
const SERVICE_CHAINS: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// Splits a rule into words, keeping quoted strings whole (`"a \"b\""` -> `a "b"`).
/// Unbalanced quotes end the rule where the line ends.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return out;
        };
        let mut w = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            w.push(n);
                        }
                    }
                    '"' => break,
                    c => w.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
        }
        out.push(w);
    }
}

/// What one `-A` rule says that matters here.
#[derive(Default, Debug)]
struct Rule {
    chain: String,
    dst: Option<String>,
    proto: Option<String>,
    dport: Option<String>,
    comment: Option<String>,
    target: Option<String>,
    to_destination: Option<String>,
}

fn rule(line: &str) -> Option<Rule> {
    let w = words(line.strip_prefix("-A ")?);
    let mut it = w.into_iter();
    let mut r = Rule {
        chain: it.next()?,
        ..Rule::default()
    };
    let mut negated = false;
    while let Some(opt) = it.next() {
        if opt == "!" {
            negated = true;
            continue;
        }
        let slot = match opt.as_str() {
            "-d" | "--destination" => &mut r.dst,
            "-p" | "--protocol" => &mut r.proto,
            "--dport" | "--destination-port" => &mut r.dport,
            "--comment" => &mut r.comment,
            "-j" | "--jump" | "-g" | "--goto" => &mut r.target,
            "--to-destination" => &mut r.to_destination,
            _ => {
                negated = false;
                continue;
            }
        };
        let value = it.next();
        // `! -d 10.0.0.0/8` matches everything else: not the Service's address.
        if !negated {
            *slot = value;
        }
        negated = false;
    }
    Some(r)
}

/// `10.180.0.1:80`, `[fd00::1]:80`.
fn endpoint(s: &str) -> Option<(std::net::IpAddr, u16)> {
    let sa: std::net::SocketAddr = s.parse().ok()?;
    Some((sa.ip(), sa.port()))
}

/// Adds the Services and endpoints of one `iptables-save` output. Lines that are not
/// kube-proxy's, or not understood, are skipped.
pub fn parse_iptables_save(save: &str, b: &mut Builder) {
    // Names by chain, from the rules that name them; jumps between a Service's chains; the
    // DNAT target of each endpoint chain.
    let mut seeds: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut jumps: HashMap<String, Vec<String>> = HashMap::new();
    let mut dnat: HashMap<String, Key> = HashMap::new();
    for line in save.lines() {
        let line = line.trim();
        if line.starts_with(":KUBE-SERVICES ") || line == ":KUBE-SERVICES" {
            b.modes().iptables = true;
        }
        let Some(r) = rule(line) else {
            continue;
        };
        let target = r.target.as_deref().unwrap_or("");
        let proto = r.proto.as_deref().and_then(proto_number);
        if r.chain == "KUBE-SERVICES" {
            let Some(comment) = &r.comment else {
                continue;
            };
            let Some(name) = SERVICE_SUFFIXES
                .iter()
                .find_map(|s| comment.strip_suffix(s))
            else {
                continue;
            };
            let addr = r.dst.as_deref().and_then(host_addr);
            let port = r.dport.as_deref().and_then(|p| p.parse().ok());
            if let (Some(addr), Some(port), Some(proto)) = (addr, port, proto) {
                b.service(Key::new(addr, port, proto), name);
            }
            if SERVICE_CHAINS.iter().any(|p| target.starts_with(p)) {
                seeds
                    .entry(target.to_string())
                    .or_default()
                    .insert(name.to_string());
            }
            continue;
        }
        let in_service_chain = SERVICE_CHAINS.iter().any(|p| r.chain.starts_with(p));
        if r.chain == "KUBE-NODEPORTS" || r.chain.starts_with("KUBE-SEP-") {
            // The comment of these rules is the bare name (no spaces in a valid one).
            if let Some(c) = r.comment.as_deref().filter(|c| !c.contains(' ')) {
                if r.chain.starts_with("KUBE-SEP-") {
                    seeds
                        .entry(r.chain.clone())
                        .or_default()
                        .insert(c.to_string());
                } else {
                    let port = r.dport.as_deref().and_then(|p| p.parse().ok());
                    if let (Some(port), Some(proto)) = (port, proto) {
                        b.nodeport(port, proto, c);
                    }
                    if SERVICE_CHAINS.iter().any(|p| target.starts_with(p)) {
                        seeds
                            .entry(target.to_string())
                            .or_default()
                            .insert(c.to_string());
                    }
                }
            }
        }
        if in_service_chain && SERVICE_CHAINS.iter().any(|p| target.starts_with(p)) {
            jumps
                .entry(r.chain.clone())
                .or_default()
                .push(target.to_string());
        }
        if r.chain.starts_with("KUBE-SEP-") && target == "DNAT" {
            let to = r.to_destination.as_deref().and_then(endpoint);
            if let (Some((addr, port)), Some(proto)) = (to, proto) {
                dnat.insert(r.chain.clone(), Key::new(addr, port, proto));
            }
        }
    }
    // Each endpoint chain's names: its own comment when kube-proxy wrote one, else the names
    // that reach it through the jumps (breadth first, bounded).
    let reached = reach(&seeds, &jumps);
    let mut endpoints: Vec<(&String, &Key)> = dnat.iter().collect();
    // Rule order does not matter to the result; sorting keeps the bound's cut deterministic.
    endpoints.sort();
    for (chain, key) in endpoints {
        let own = seeds.get(chain.as_str());
        let names = own
            .map(|s| s.iter().map(String::as_str).collect::<Vec<_>>())
            .or_else(|| {
                reached
                    .get(chain.as_str())
                    .map(|s| s.iter().copied().collect())
            });
        for n in names.into_iter().flatten() {
            b.backend(*key, n);
        }
    }
}
