//! What `top`'s tests share: flows inserted into a namespace's table with `conntrack -I`, and
//! `conntrack -L` grouped as `top` groups.

// Each test file uses its own part.
#![allow(dead_code)]

use std::collections::BTreeMap;

use integration_tests::Netns;
use serde_json::Value;

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

pub const FLOWS: [Flow; 4] = [
    Flow {
        n: 30,
        proto: "tcp",
        client: "10.0.0.1",
        port: 10000,
        service: "10.96.0.10:80",
        backend: "10.77.2.2:8080",
        state: "ESTABLISHED",
        extra: "-u ASSURED",
    },
    Flow {
        n: 20,
        proto: "tcp",
        client: "10.0.0.99",
        port: 20000,
        service: "10.96.0.11:80",
        backend: "10.77.3.3:8080",
        state: "TIME_WAIT",
        extra: "",
    },
    Flow {
        n: 10,
        proto: "tcp",
        client: "10.0.0.2",
        port: 30000,
        service: "10.96.0.12:80",
        backend: "10.77.9.9:8080",
        state: "SYN_SENT",
        extra: "",
    },
    Flow {
        n: 5,
        proto: "udp",
        client: "10.0.0.3",
        port: 40000,
        service: "10.96.0.53:53",
        backend: "10.77.4.4:53",
        state: "",
        extra: "",
    },
];

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

pub fn groups(v: &Value) -> BTreeMap<String, u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_string(),
                g["entries"].as_u64().unwrap(),
            )
        })
        .collect()
}
