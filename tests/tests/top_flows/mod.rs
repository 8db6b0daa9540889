//! What `top`'s tests share: the flows they fill a table with, and a snapshot's groups.
// Each test file uses its own part.
#![allow(dead_code)]

use std::collections::BTreeMap;

pub use integration_tests::table::{conntrack_l, insert, Flow};
use serde_json::Value;

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
