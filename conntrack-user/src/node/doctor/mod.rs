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
//! Rulesets it could not read (no CAP_NET_ADMIN, a tool missing) are reported as unread, with
//! the command and its error, never as "no rules": the verdict is then `unknown` unless what
//! was read (or `nf_conntrack_tcp_be_liberal`) already decides it.
//!
//! The table's own posture (`table`): how full it is, how it is sized against the kernel's own
//! default for the node's RAM (`sizing`) and its hash buckets, the TCP timeouts that decide how long an idle flow keeps its entry (and its
//! NAT), and the kernel's pressure counters over a short window (`--window`). A flow whose entry
//! was dropped, evicted or timed out loses its NAT without any INVALID verdict on the way in.
//!
//! By file: `rules` (the INVALID drop rules in the rulesets), `table` (the table's posture and
//! its advice), `sizing` (the kernel's default table size and the write-ups' formula), `text`
//! (the report as text or JSON); `judge` here weighs them.

mod rules;
mod sizing;
mod table;
#[cfg(test)]
mod tests;
mod text;
mod who;

use std::{
    collections::BTreeMap,
    fs, io,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use self::{
    rules::{iptables_drop_rules, nft_drop_rules, Rule, Ruleset},
    sizing::{default_factor, kernel_default, writeups_max, Sizing},
    table::{
        max_per_bucket, mem_total, pressure, table_advice, table_verdict, utilisation, vs_default,
        Deltas, Pressure, Table, TableVerdict, TcpTimeouts, VsDefault, DEFAULT_MAX_PER_BUCKET,
        HIGH_UTILISATION, KEEPALIVE_S,
    },
    text::run_doctor,
    who::Who,
};
use crate::{
    cli::DoctorArgs,
    node::kstat,
    node::tools::{self, RulesRead},
};

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
    /// Where `counters` were read: `procfs` or `ctnetlink` (kernels without
    /// `/proc/net/stat/nf_conntrack`); null when neither could be read.
    pub counters_source: Option<kstat::Source>,
    /// The INVALID drop rules found; `None` (`null`: unknown) when none was found and some
    /// ruleset could not be read. An empty list means every ruleset was read and has none.
    pub drop_rules: Option<Vec<Rule>>,
    /// `iptables` or `nftables` when kube-proxy's chains are seen; `unknown` when they are not
    /// and some ruleset could not be read; absent when every ruleset was read and has none.
    pub kube_proxy: Option<&'static str>,
    /// `all`, `partial` or `none` of the rulesets were read.
    pub rules_read: RulesRead,
    /// Each ruleset read (or not, and why).
    pub rulesets: Vec<Ruleset>,
    /// Whether doctor had CAP_NET_ADMIN, without which no ruleset can be read.
    pub cap_net_admin: bool,
    /// `protected-liberal`, `protected-rule`, `exposed`, or `unknown` (rulesets unread).
    pub verdict: &'static str,
    /// The conntrack table's size, pressure and timeouts (its findings are in `advice` too).
    pub table: Table,
    /// The Services and endpoints kube-proxy's rules name here (what ct-trace's events would
    /// carry as `service_name`).
    pub service_names: crate::node::services::NamesReport,
    /// Who fills the table, when it is above 75% or refusing flows: the heaviest Services,
    /// backends, clients and states; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who: Option<Who>,
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
    let found = rules::read_rules();
    let rules_read = rules::rules_read(&found.rulesets);
    let known = rules_read == RulesRead::All;
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
        counters_source: kstat::source(),
        drop_rules: (known || !found.drop_rules.is_empty()).then_some(found.drop_rules),
        kube_proxy: found.kube_proxy.or((!known).then_some("unknown")),
        rules_read,
        rulesets: found.rulesets,
        cap_net_admin: tools::has_cap_net_admin(),
        verdict: "unknown",
        table,
        service_names: crate::node::services::NamesReport::read(),
        who: None,
        advice: vec![],
    };
    judge(&mut p);
    if who::wanted(&p.table) {
        p.who = who::read();
        if let Some(w) = &p.who {
            p.advice.extend(who::advice(w));
        }
    }
    p
}

/// The three fixes, for `exposed` and for an `unknown` that may be exposed.
const FIXES: [&str; 3] = [
    "1. sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1 (simplest; conntrack stops vouching for TCP windows)",
    "2. iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP (and ip6tables; kube-proxy >= 1.15 in iptables mode adds it, its nftables mode does not)",
    "3. if the table is under pressure, a larger nf_conntrack_max (more kernel memory)",
];

/// Why some rulesets could not be read, in one clause: the missing capability when that is
/// the cause (the text's rulesets row and `rulesets` in JSON carry each command's error), else
/// each command and its error.
fn unread_why(p: &Posture) -> String {
    if p.cap_net_admin {
        rules::unread(&p.rulesets).join("; ")
    } else {
        "doctor has no CAP_NET_ADMIN, which reading netfilter rulesets needs: run it as root or grant it".into()
    }
}

/// The verdicts (INVALID exposure, and the table's) and the advice, from the facts. A rule
/// found decides `protected-rule`; only rulesets that were all read can decide `exposed`.
pub fn judge(p: &mut Posture) {
    let found = p.drop_rules.as_deref().unwrap_or_default();
    let v4_rule = found.iter().any(|r| r.family != "ipv6");
    let v6_rule = found.iter().any(|r| r.family != "ipv4");
    let read = rules::rules_read(&p.rulesets);
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
            found.iter().map(|r| format!("{} {}: {}", r.source, r.family, r.rule)).collect::<Vec<_>>().join("; ")
        ));
        if !v6_rule && rules::family_read(&p.rulesets, "ipv6") {
            p.advice.push("no such rule for IPv6: dual-stack traffic is still exposed (ip6tables -A FORWARD -m conntrack --ctstate INVALID -j DROP).".into());
        } else if !v6_rule {
            p.advice.push(format!(
                "whether IPv6 packets are dropped too is unknown: {}.",
                unread_why(p)
            ));
        }
    } else if read != RulesRead::All {
        p.verdict = "unknown";
        let which = if read == RulesRead::Nothing {
            "no ruleset could be read"
        } else {
            "no INVALID drop rule in the rulesets read, but not all could be read"
        };
        p.advice.push(format!(
            "{which}: {}. Whether anything drops packets conntrack marks INVALID is unknown; if nothing does and tracking is strict, an out-of-window reply leaves un-NATed and the client resets the connection (Kubernetes issue 74839). The fixes:",
            unread_why(p)
        ));
        p.advice.extend(FIXES.map(String::from));
    } else {
        p.verdict = "exposed";
        p.advice.push("EXPOSED: nothing drops packets conntrack marks INVALID and tracking is strict, so an out-of-window reply leaves with the pod's address instead of the Service's and the client resets the connection (Kubernetes issue 74839). Fixes:".into());
        p.advice.extend(FIXES.map(String::from));
    }
    p.table.derive();
    p.advice.extend(table_advice(&p.table));
}

pub fn run(args: DoctorArgs) -> anyhow::Result<std::process::ExitCode> {
    match run_doctor(args.output, args.window, &mut io::stdout().lock()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(std::process::ExitCode::SUCCESS),
    }
}
