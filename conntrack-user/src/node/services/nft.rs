//! kube-proxy's nftables mode, read from `nft -j list table ip kube-proxy` (and `ip6`).
//!
//! The shape followed is that of kube-proxy 1.29 to 1.34, `syncProxyRules()`,
//! `servicePortChainNameBase()` and `servicePortEndpointChainNameBase()` in
//! kubernetes/kubernetes pkg/proxy/nftables/proxier.go. One table per family, `ip kube-proxy`
//! and `ip6 kube-proxy`:
//!
//! ```text
//! map service-ips {
//!     type ipv4_addr . inet_proto . inet_service : verdict
//!     elements = { 172.30.0.41 . tcp . 80 comment "ns1/svc1:p80" : goto service-ULMVA6XW-ns1/svc1/tcp/p80, ... }
//! }
//! chain service-ULMVA6XW-ns1/svc1/tcp/p80 {
//!     numgen random mod 2 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80, 1 : goto ... }
//! }
//! chain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 {
//!     ip saddr 10.180.0.1 jump mark-for-masquerade
//!     meta l4proto tcp dnat to 10.180.0.1:80
//! }
//! ```
//!
//! The element comment (`svcPortNameString`) is written by the early nftables versions; later
//! ones (with `nftElementStorage`) write it only on `no-endpoint-services` elements. The chain
//! names carry the name in every version: `PREFIX-HASH8-namespace/name/protocol/portname`, the
//! endpoint ones with `__ADDRESS/PORT` after it (IPv6 colons written as dots). A name longer
//! than nftables allows is cut and ends in `...` (`hashAndTruncate()`): such a chain name is not
//! used. The DNAT address itself is read from the `dnat` statement, never from the chain name.
//!
//! JSON is read rather than the text form: its structure does not change with nft's
//! pretty-printing, and the text form's sets and comments would need a second grammar.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use serde_json::Value;

use super::{proto_number, reach, Builder, Key};

/// Prefixes of the chains of one Service port (`service-`: cluster policy, `local-`: local
/// policy, `external-`, `firewall-`) and of one endpoint.
const SERVICE_PREFIXES: [&str; 4] = ["service-", "local-", "external-", "firewall-"];
const ENDPOINT_PREFIX: &str = "endpoint-";

/// `namespace/name:portname` from a chain name, when it is whole.
pub(super) fn name_of_chain(chain: &str) -> Option<String> {
    let rest = SERVICE_PREFIXES
        .iter()
        .chain(std::iter::once(&ENDPOINT_PREFIX))
        .find_map(|p| chain.strip_prefix(p))?;
    // The hash: eight base32 characters and a dash.
    let (hash, base) = rest.split_once('-')?;
    if hash.len() != 8 || base.ends_with("...") {
        return None;
    }
    let base = base.split_once("__").map_or(base, |(svc, _)| svc);
    let mut parts = base.split('/');
    let (ns, name, proto, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ns.is_empty() || name.is_empty() || proto_number(proto).is_none() {
        return None;
    }
    Some(format!("{ns}/{name}:{port}"))
}

/// Every `goto`/`jump` target anywhere inside a rule's expressions (verdicts, vmaps).
fn targets<'a>(v: &'a Value, out: &mut Vec<&'a str>, depth: usize) {
    if depth > 16 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "goto" || k == "jump" {
                    if let Some(t) = x.get("target").and_then(Value::as_str) {
                        out.push(t);
                    }
                } else {
                    targets(x, out, depth + 1);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| targets(x, out, depth + 1)),
        _ => {}
    }
}

fn port_of(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn proto_of(v: &Value) -> Option<u8> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        Value::String(s) => proto_number(s),
        _ => None,
    }
}

/// One `service-ips` element: `[key, verdict]`, the key `{"concat": [addr, proto, port]}` or,
/// with a comment, `{"elem": {"val": {"concat": ...}, "comment": "ns/name:port"}}`.
fn service_element(e: &Value) -> Option<(Key, Option<&str>, Option<&str>)> {
    let pair = e.as_array()?;
    let (key, verdict) = (pair.first()?, pair.get(1)?);
    let (val, comment) = match key.get("elem") {
        Some(el) => (el.get("val")?, el.get("comment").and_then(Value::as_str)),
        None => (key, None),
    };
    let c = val.get("concat")?.as_array()?;
    let addr: IpAddr = c.first()?.as_str()?.parse().ok()?;
    let key = Key::new(addr, port_of(c.get(2)?)?, proto_of(c.get(1)?)?);
    let mut t = vec![];
    targets(verdict, &mut t, 0);
    Some((key, comment, t.first().copied()))
}

/// One `service-nodeports` element: `[{"concat": [proto, port]}, verdict]` (the key wrapped in
/// `{"elem": {"val": ..., "comment": ...}}` when it has a comment), named by its comment or
/// by the chain it goes to.
fn nodeport_element(e: &Value) -> Option<(u16, u8, String)> {
    let pair = e.as_array()?;
    let (key, verdict) = (pair.first()?, pair.get(1)?);
    let (val, comment) = match key.get("elem") {
        Some(el) => (el.get("val")?, el.get("comment").and_then(Value::as_str)),
        None => (key, None),
    };
    let c = val.get("concat")?.as_array()?;
    let (proto, port) = (proto_of(c.first()?)?, port_of(c.get(1)?)?);
    let mut t = vec![];
    targets(verdict, &mut t, 0);
    let name = comment
        .map(str::to_string)
        .or_else(|| t.first().and_then(|c| name_of_chain(c)))?;
    Some((port, proto, name))
}

/// The `dnat` of an endpoint chain's rule, with the protocol it matches.
fn dnat_of(expr: &[Value]) -> Option<(IpAddr, u16, u8)> {
    let mut proto = None;
    for x in expr {
        if let Some(m) = x.get("match") {
            let meta = m.get("left").and_then(|l| l.get("meta"));
            if meta.and_then(|m| m.get("key")).and_then(Value::as_str) == Some("l4proto") {
                proto = m.get("right").and_then(proto_of);
            }
        }
        if let Some(d) = x.get("dnat") {
            let addr: IpAddr = d.get("addr")?.as_str()?.parse().ok()?;
            return Some((addr, port_of(d.get("port")?)?, proto?));
        }
    }
    None
}

/// Adds the Services and endpoints of one `nft -j list table ... kube-proxy` output. Anything
/// that is not JSON, or not kube-proxy's, is skipped.
pub fn parse_nft_json(json: &[u8], b: &mut Builder) {
    let Ok(doc) = serde_json::from_slice::<Value>(json) else {
        log::debug!("service names: nft printed something that is not JSON");
        return;
    };
    let Some(items) = doc.get("nftables").and_then(Value::as_array) else {
        return;
    };
    let mut seeds: HashMap<&str, BTreeSet<String>> = HashMap::new();
    let mut jumps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut dnat: Vec<(&str, Key)> = vec![];
    for item in items {
        if let Some(t) = item.get("table") {
            if t.get("name").and_then(Value::as_str) == Some("kube-proxy") {
                b.modes().nftables = true;
            }
        }
        if let Some(m) = item.get("map") {
            if m.get("name").and_then(Value::as_str) == Some("service-nodeports") {
                for e in m
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some((port, proto, name)) = nodeport_element(e) {
                        b.nodeport(port, proto, &name);
                    }
                }
                continue;
            }
            if m.get("name").and_then(Value::as_str) != Some("service-ips") {
                continue;
            }
            for e in m
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some((key, comment, target)) = service_element(e) else {
                    continue;
                };
                let name = comment
                    .map(str::to_string)
                    .or_else(|| target.and_then(name_of_chain));
                if let Some(n) = &name {
                    b.service(key, n);
                    if let Some(t) = target {
                        seeds.entry(t).or_default().insert(n.clone());
                    }
                }
            }
        }
        if let Some(r) = item.get("rule") {
            let (Some(chain), Some(expr)) = (
                r.get("chain").and_then(Value::as_str),
                r.get("expr").and_then(Value::as_array),
            ) else {
                continue;
            };
            let mut t = vec![];
            targets(r.get("expr").unwrap_or(&Value::Null), &mut t, 0);
            if !t.is_empty() {
                jumps.entry(chain).or_default().extend(t);
            }
            if chain.starts_with(ENDPOINT_PREFIX) {
                if let Some((addr, port, proto)) = dnat_of(expr) {
                    dnat.push((chain, Key::new(addr, port, proto)));
                }
            }
        }
    }
    // Names reach an endpoint chain from the map elements that name its Service.
    let reached = reach(&seeds, &jumps);
    dnat.sort();
    for (chain, key) in dnat {
        match reached.get(chain) {
            Some(names) => names.iter().for_each(|n| b.backend(key, n)),
            None => {
                if let Some(n) = name_of_chain(chain) {
                    b.backend(key, &n);
                }
            }
        }
    }
}
