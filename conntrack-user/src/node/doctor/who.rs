//! Who fills the table, when it is nearly full or refusing flows: the heaviest Services,
//! backends, clients and states (one look through `node::top`), and the fix that fits what
//! dominates - a timeout for a state, keepalive or reuse for a client, a look at a backend
//! that does not answer, or a larger table for long-lived flows.

use serde::Serialize;

use super::table::{Table, TableVerdict, HIGH_UTILISATION};
use crate::node::{
    services::{Rulesets, MAX_ENTRIES},
    top::{Group, Sampler},
};

/// Groups shown per grouping.
const TOP: usize = 3;

/// A group dominates when it holds at least this share of the entries.
const DOMINANT: f64 = 0.5;

#[derive(Debug, Serialize)]
pub struct Who {
    pub entries: u64,
    pub by_service: Vec<Group>,
    pub by_backend: Vec<Group>,
    pub by_client: Vec<Group>,
    pub by_state: Vec<Group>,
}

/// Whether the table deserves a look at who fills it: above the write-ups' 75%, or refusing
/// or evicting flows over the window.
pub fn wanted(t: &Table) -> bool {
    t.utilisation.is_some_and(|u| u >= HIGH_UTILISATION)
        || matches!(t.verdict, TableVerdict::Full | TableVerdict::Pressure)
}

/// One look at the table (a ctnetlink dump); `None` when it cannot be read.
pub fn read() -> Option<Who> {
    let names = Rulesets::read().parse(MAX_ENTRIES);
    let s = Sampler::now(names, TOP)
        .map_err(|e| log::warn!("reading the conntrack table to say who fills it: {e}"))
        .ok()?;
    let strip = |mut v: Vec<Group>| {
        v.retain(|g| g.key != "other");
        v
    };
    Some(Who {
        entries: s.entries,
        by_service: strip(s.by_service),
        by_backend: strip(s.by_backend),
        by_client: strip(s.by_client),
        by_state: strip(s.by_state),
    })
}

fn dominant(w: &Who, rows: &[Group]) -> Option<(String, u64, u64)> {
    let g = rows.first()?;
    let share = g.entries as f64 / w.entries.max(1) as f64;
    (share >= DOMINANT).then(|| {
        let key = match &g.name {
            Some(n) => format!("{} ({n})", g.key),
            None => g.key.clone(),
        };
        (key, g.entries, (share * 100.0).round() as u64)
    })
}

/// What dominates the table, each with the fix that fits it.
pub fn advice(w: &Who) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((state, n, pct)) = dominant(w, &w.by_state) {
        let fix = match state.as_str() {
            "TIME_WAIT" => "closed connections kept 120 s: lower net.netfilter.nf_conntrack_tcp_timeout_time_wait (e.g. 30), and let the clients reuse connections (keepalive, pooling) instead of opening one per request",
            "SYN_SENT" | "SYN_RECV" => "connections that never complete: a backend that does not answer (see the backends below), or a SYN flood; lower net.netfilter.nf_conntrack_tcp_timeout_syn_sent (default 120 s)",
            "ESTABLISHED" => "long-lived connections: the table must hold them, so a larger nf_conntrack_max (and buckets); idle ones die only after nf_conntrack_tcp_timeout_established (default 5 days: 86400 or less is common)",
            "CLOSE_WAIT" | "FIN_WAIT" | "LAST_ACK" | "CLOSE" => "connections being torn down that linger: lower the matching nf_conntrack_tcp_timeout_* sysctl",
            "udp" => "UDP flows (DNS above all): lower net.netfilter.nf_conntrack_udp_timeout (default 30 s) and nf_conntrack_udp_timeout_stream, or cache DNS on the node (NodeLocal DNSCache)",
            _ => "lower that protocol's nf_conntrack timeout, or a larger nf_conntrack_max",
        };
        out.push(format!(
            "{pct}% of the table ({n} entries) is in state {state}: {fix}"
        ));
    }
    if let Some((client, n, pct)) = dominant(w, &w.by_client) {
        out.push(format!(
            "one client holds {pct}% of the table ({n} entries): {client}; make it reuse connections (keepalive, pooling) or rate-limit it"
        ));
    }
    if let Some((backend, n, pct)) = dominant(w, &w.by_backend) {
        let syn = w.by_state.first().is_some_and(|s| s.key == "SYN_SENT");
        out.push(if syn {
            format!("one backend takes {pct}% of the table ({n} entries) and connections do not complete: check {backend}, which may not answer")
        } else {
            format!("one backend takes {pct}% of the table ({n} entries): {backend}")
        });
    }
    if let Some((service, n, pct)) = dominant(w, &w.by_service) {
        out.push(format!(
            "one destination holds {pct}% of the table ({n} entries): {service}"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(key: &str, entries: u64) -> Group {
        Group {
            key: key.into(),
            name: None,
            entries,
            new: 0,
        }
    }

    #[test]
    fn the_dominant_state_and_client_get_their_fix() {
        let w = Who {
            entries: 100,
            by_service: vec![g("10.96.0.10:80/tcp", 40), g("10.96.0.11:80/tcp", 35)],
            by_backend: vec![g("10.77.2.2:8080/tcp", 40)],
            by_client: vec![g("10.0.0.99", 80)],
            by_state: vec![g("TIME_WAIT", 70), g("ESTABLISHED", 30)],
        };
        let a = advice(&w);
        assert_eq!(a.len(), 2, "{a:#?}");
        assert!(a[0].starts_with("70% of the table (70 entries) is in state TIME_WAIT"));
        assert!(a[0].contains("nf_conntrack_tcp_timeout_time_wait"));
        assert!(a[1].contains("one client holds 80% of the table (80 entries): 10.0.0.99"));
    }

    #[test]
    fn nothing_dominates_nothing_is_said() {
        let w = Who {
            entries: 100,
            by_service: vec![g("a", 30)],
            by_backend: vec![g("b", 30)],
            by_client: vec![g("c", 30)],
            by_state: vec![g("ESTABLISHED", 49)],
        };
        assert!(advice(&w).is_empty());
    }
}
