//! A namespace's conntrack table filled with known flows (`conntrack -I` through ctnetlink, as
//! the kernel would have created them), kube-proxy's rules naming a Service, and `conntrack -L`
//! grouped as `ct-trace top` groups it: what `top`, `top_live` and `metrics_table` compare
//! ct-trace's figures with.

use std::collections::BTreeMap;

use crate::Netns;

/// kube-proxy's iptables rules naming the Service 10.96.0.10:80 `shop/web:http`, answered by
/// 10.77.2.2:8080 (`syncProxyRules()`, pkg/proxy/iptables/proxier.go: the cluster IP's rule
/// carries the name).
pub const KUBE_PROXY_RULES: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-OJWW7NSBVZTDHXNW - [0:0]
:KUBE-SEP-2TGWM7QRKWQVRJTE - [0:0]
-A KUBE-SERVICES -m comment --comment \"shop/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-OJWW7NSBVZTDHXNW
-A KUBE-SVC-OJWW7NSBVZTDHXNW -m comment --comment \"shop/web:http -> 10.77.2.2:8080\" -j KUBE-SEP-2TGWM7QRKWQVRJTE
-A KUBE-SEP-2TGWM7QRKWQVRJTE -m comment --comment shop/web:http -m tcp -p tcp -j DNAT --to-destination 10.77.2.2:8080
COMMIT
";

/// Loads iptables rules (`iptables-restore --noflush`) into the namespace.
pub fn load_rules(ns: &Netns, rules: &str) {
    let path = std::env::temp_dir().join(format!("ctt-rules-{}.rules", ns.name));
    std::fs::write(&path, rules).unwrap();
    ns.exec(&format!("iptables-restore --noflush < {}", path.display()));
    let _ = std::fs::remove_file(&path);
}

/// One kind of flow: `n` entries from `client` (ports from `port`) to `service`, answered by
/// `backend`, in `state` (TCP), with `conntrack -I`'s `extra` flags.
#[derive(Clone, Copy)]
pub struct Flow {
    pub n: u32,
    pub proto: &'static str,
    pub client: &'static str,
    pub port: u32,
    pub service: &'static str,
    pub backend: &'static str,
    pub state: &'static str,
    pub extra: &'static str,
}

/// Inserts `n` entries of one kind of flow, client ports from `port`.
pub fn insert(ns: &Netns, f: Flow, from: u32) {
    let Flow {
        n,
        proto,
        client,
        port,
        service,
        backend,
        state,
        extra,
    } = f;
    let (sip, sport) = service.split_once(':').unwrap();
    let (bip, bport) = backend.split_once(':').unwrap();
    let state = if state.is_empty() {
        String::new()
    } else {
        format!("--state {state}")
    };
    ns.exec(&format!(
        "for p in $(seq {} {}); do conntrack -I -p {proto} -s {client} -d {sip} --sport $p --dport {sport} -r {bip} -q {client} --reply-port-src {bport} --reply-port-dst $p {state} -t 600 {extra} 2>/dev/null || exit 1; done",
        port + from,
        port + from + n - 1
    ));
}

/// `conntrack -L` grouped as `top` groups: (service, backend, client, state) -> entries.
pub fn conntrack_l(ns: &Netns) -> [BTreeMap<String, u64>; 4] {
    let mut g: [BTreeMap<String, u64>; 4] = Default::default();
    for line in ns.exec("conntrack -L 2>/dev/null").lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let field = |k: &str, nth: usize| {
            w.iter()
                .filter_map(|x| x.strip_prefix(k))
                .nth(nth)
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                .to_string()
        };
        let proto = w[0];
        let state = if proto == "tcp" { w[3] } else { proto };
        let keys = [
            format!("{}:{}/{proto}", field("dst=", 0), field("dport=", 0)),
            format!("{}:{}/{proto}", field("src=", 1), field("sport=", 1)),
            field("src=", 0),
            state.to_string(),
        ];
        for (i, k) in keys.into_iter().enumerate() {
            *g[i].entry(k).or_default() += 1;
        }
    }
    g
}
