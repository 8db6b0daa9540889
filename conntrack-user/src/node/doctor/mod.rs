//! `ct-trace doctor`: the conntrack posture of the network namespace it runs in, and whether the
//! resets ct-trace watches for would be prevented there. Reads sysctls, the kernel's conntrack
//! counters and the iptables/nftables rulesets; changes nothing.
//!
//! The three known fixes (Kubernetes issue 74839) and their trade-offs:
//! 1. `net.netfilter.nf_conntrack_tcp_be_liberal=1`: out-of-window packets are no longer marked
//!    INVALID (only out-of-window RSTs are), so nothing leaks un-NATed; conntrack also stops
//!    vouching for the window of what it lets through.
//! 2. A rule dropping `ctstate INVALID` (kube-proxy's iptables mode does this from 1.15): the
//!    packet is dropped and TCP retransmits; the nftables mode of kube-proxy does not add it.
//! 3. A larger table (`nf_conntrack_max`, buckets) for table pressure: more kernel memory.
//!
//! The table's own posture (`table`): how full it is, how it is sized against the node's RAM and
//! its hash buckets, the TCP timeouts that decide how long an idle flow keeps its entry (and its
//! NAT), and the kernel's pressure counters over a short window (`--window`). A flow whose entry
//! was dropped, evicted or timed out loses its NAT without any INVALID verdict on the way in.
//!
//! By file: `rules` (the INVALID drop rules in the rulesets), `table` (the table's posture and
//! its advice), `text` (the report as text or JSON); `judge` here weighs them.

mod rules;
mod table;
#[cfg(test)]
mod tests;
mod text;

use std::{
    collections::BTreeMap,
    fs, io,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use self::{
    rules::{iptables_drop_rules, nft_drop_rules, Rule},
    table::{
        max_per_bucket, max_vs_ram, mem_total, pressure, recommended_max, table_advice,
        table_verdict, utilisation, Deltas, MaxVsRam, Pressure, Table, TableVerdict, TcpTimeouts,
        DEFAULT_MAX_PER_BUCKET, HIGH_UTILISATION, KEEPALIVE_S,
    },
    text::run_doctor,
};
use crate::{cli::DoctorArgs, kstat};

#[derive(Debug, Serialize)]
pub struct Posture {
    pub netns: u32,
    pub tcp_be_liberal: Option<u8>,
    pub tcp_ignore_invalid_rst: Option<u8>,
    pub log_invalid: Option<u8>,
    pub entries: Option<u64>,
    pub max: Option<u64>,
    pub buckets: Option<u64>,
    pub counters: BTreeMap<String, u64>,
    pub drop_rules: Vec<Rule>,
    /// `iptables`, `nftables`, or absent when no kube-proxy chains are visible.
    pub kube_proxy: Option<&'static str>,
    /// False when no ruleset could be read (iptables/nft missing, or no CAP_NET_ADMIN).
    pub rules_read: bool,
    /// `protected-liberal`, `protected-rule`, `exposed`, or `unknown` (rules unreadable).
    pub verdict: &'static str,
    /// The conntrack table's size, pressure and timeouts (its findings are in `advice` too).
    pub table: Table,
    /// The Services and endpoints kube-proxy's rules name here (what ct-trace's events would
    /// carry as `service_name`).
    pub service_names: crate::node::services::NamesReport,
    pub advice: Vec<String>,
}

fn sysctl(name: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The posture of the namespace doctor runs in; the kernel's counters are sampled over `window`
/// (the rulesets are read meanwhile).
pub fn inspect(window: Duration) -> Posture {
    let t0 = Instant::now();
    let before = kstat::read().ok();
    let (drop_rules, kube_proxy, rules_read) = rules::read_rules();
    let deltas = table::sample(before.as_ref(), window, t0);
    let table = Table::read(deltas, window.as_secs_f64());
    let mut p = Posture {
        netns: kstat::netns_inode("self").unwrap_or(0),
        tcp_be_liberal: sysctl("nf_conntrack_tcp_be_liberal").map(|v| v as u8),
        tcp_ignore_invalid_rst: sysctl("nf_conntrack_tcp_ignore_invalid_rst").map(|v| v as u8),
        log_invalid: sysctl("nf_conntrack_log_invalid").map(|v| v as u8),
        entries: table.entries,
        max: table.max,
        buckets: table.buckets,
        counters: before
            .map(|m| {
                m.into_iter()
                    .filter(|(k, _)| {
                        ["invalid", "drop", "early_drop", "insert_failed"].contains(&k.as_str())
                    })
                    .collect()
            })
            .unwrap_or_default(),
        drop_rules,
        kube_proxy,
        rules_read,
        verdict: "exposed",
        table,
        service_names: crate::node::services::NamesReport::read(),
        advice: vec![],
    };
    judge(&mut p);
    p
}

/// The verdicts (INVALID exposure, and the table's) and the advice, from the facts.
pub fn judge(p: &mut Posture) {
    let v4_rule = p.drop_rules.iter().any(|r| r.family != "ipv6");
    let v6_rule = p.drop_rules.iter().any(|r| r.family != "ipv4");
    p.advice.clear();
    if p.tcp_be_liberal == Some(1) {
        p.verdict = "protected-liberal";
        p.advice.push(
            "nf_conntrack_tcp_be_liberal=1: out-of-window TCP packets are not marked INVALID, so they keep their NAT; resets from this cause are prevented. Trade-off: conntrack no longer checks the TCP window of what it passes.".into(),
        );
    } else if v4_rule {
        p.verdict = "protected-rule";
        p.advice.push(format!(
            "a rule drops packets conntrack marks INVALID ({}): they never leave un-NATed and TCP retransmits instead of resetting.",
            p.drop_rules.iter().map(|r| format!("{} {}: {}", r.source, r.family, r.rule)).collect::<Vec<_>>().join("; ")
        ));
        if !v6_rule {
            p.advice.push("no such rule for IPv6: dual-stack traffic is still exposed (ip6tables -A FORWARD -m conntrack --ctstate INVALID -j DROP).".into());
        }
    } else if !p.rules_read {
        p.verdict = "unknown";
        p.advice.push("the iptables and nftables rulesets could not be read (run as root, with iptables-save or nft installed): whether INVALID packets are dropped is unknown.".into());
    } else {
        p.verdict = "exposed";
        p.advice.push("EXPOSED: nothing drops packets conntrack marks INVALID and tracking is strict, so an out-of-window reply leaves with the pod's address instead of the Service's and the client resets the connection (Kubernetes issue 74839). Fixes:".into());
        p.advice.push("1. sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1 (simplest; conntrack stops vouching for TCP windows)".into());
        p.advice.push("2. iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP (and ip6tables; kube-proxy >= 1.15 in iptables mode adds it, its nftables mode does not)".into());
        p.advice.push(
            "3. if the table is under pressure, a larger nf_conntrack_max (more kernel memory)"
                .into(),
        );
    }
    p.table.derive();
    p.advice.extend(table_advice(&p.table));
}

/// `--window`: seconds, or a duration like 500ms; 0 samples nothing.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    if s.parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    crate::cli::parse_duration(s)
}

pub fn run(args: DoctorArgs) -> anyhow::Result<std::process::ExitCode> {
    match run_doctor(args.output, args.window, &mut io::stdout().lock()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(std::process::ExitCode::SUCCESS),
    }
}
