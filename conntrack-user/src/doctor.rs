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

use std::{fs, process::Command};

use serde::Serialize;

use crate::{kstat, report::Format};

#[derive(Debug, Serialize)]
pub struct Rule {
    pub family: &'static str,
    pub source: &'static str,
    pub rule: String,
    /// Packets the rule matched so far, when the tool reports counters.
    pub packets: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Posture {
    pub netns: u32,
    pub tcp_be_liberal: Option<u8>,
    pub tcp_ignore_invalid_rst: Option<u8>,
    pub log_invalid: Option<u8>,
    pub entries: Option<u64>,
    pub max: Option<u64>,
    pub buckets: Option<u64>,
    pub counters: std::collections::BTreeMap<String, u64>,
    pub drop_rules: Vec<Rule>,
    /// `iptables`, `nftables`, or absent when no kube-proxy chains are visible.
    pub kube_proxy: Option<&'static str>,
    /// `protected-liberal`, `protected-rule`, `exposed`, or `unknown` (rules unreadable).
    /// False when no ruleset could be read (iptables/nft missing, or no CAP_NET_ADMIN).
    pub rules_read: bool,
    pub verdict: &'static str,
    pub advice: Vec<String>,
}

fn sysctl(name: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// stdout and stderr of a command that succeeded.
fn command(cmd: &str, args: &[&str]) -> Option<(String, String)> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| {
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
}

/// Rules in `iptables-save -c` output that drop packets in ctstate INVALID.
pub fn iptables_drop_rules(save: &str, family: &'static str, source: &'static str) -> Vec<Rule> {
    save.lines()
        .filter(|l| {
            (l.contains("--ctstate INVALID") || l.contains("--state INVALID"))
                && l.contains("-j DROP")
        })
        .map(|l| {
            // `[packets:bytes] -A CHAIN ...`
            let packets = l
                .strip_prefix('[')
                .and_then(|r| r.split(':').next())
                .and_then(|p| p.parse().ok());
            let rule = l.split_once("] ").map_or(l, |(_, r)| r).to_string();
            Rule {
                family,
                source,
                rule,
                packets,
            }
        })
        .collect()
}

/// Rules in `nft list ruleset` output that drop `ct state invalid`. `warnings` is what nft
/// printed on stderr: it names the tables iptables-nft (Debian's default iptables) manages,
/// whose rules are already read through iptables-save and are skipped here.
pub fn nft_drop_rules(ruleset: &str, warnings: &str) -> Vec<Rule> {
    let managed: Vec<String> = warnings
        .lines()
        .filter(|l| l.contains("managed by iptables-nft"))
        .filter_map(|l| {
            let rest = l.split("table ").nth(1)?;
            let mut it = rest.split_whitespace();
            Some(format!("{} {}", it.next()?, it.next()?))
        })
        .collect();
    let mut table = String::new();
    let mut out = vec![];
    for l in ruleset.lines() {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            table = rest.trim_end_matches('{').trim().to_string();
        }
        if managed.contains(&table) {
            continue;
        }
        if t.contains("ct state invalid") && t.contains("drop") {
            let packets = t
                .split("packets ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse().ok());
            out.push(Rule {
                family: match table.split_whitespace().next() {
                    Some("ip") => "ipv4",
                    Some("ip6") => "ipv6",
                    _ => "inet",
                },
                source: "nftables",
                rule: t.to_string(),
                packets,
            });
        }
    }
    out
}

pub fn inspect() -> Posture {
    let mut drop_rules = vec![];
    let mut kube_proxy = None;
    let mut rules_read = false;
    for (cmd, family) in [("iptables-save", "ipv4"), ("ip6tables-save", "ipv6")] {
        if let Some((save, _)) = command(cmd, &["-c"]) {
            rules_read = true;
            if save.contains(":KUBE-SERVICES") {
                kube_proxy = Some("iptables");
            }
            drop_rules.extend(iptables_drop_rules(&save, family, "iptables"));
        }
    }
    if let Some((rs, warnings)) = command("nft", &["list", "ruleset"]) {
        rules_read = true;
        if rs.contains("table ip kube-proxy") || rs.contains("table ip6 kube-proxy") {
            kube_proxy = Some("nftables");
        }
        drop_rules.extend(nft_drop_rules(&rs, &warnings));
    }
    let mut p = Posture {
        netns: kstat::netns_inode("self").unwrap_or(0),
        tcp_be_liberal: sysctl("nf_conntrack_tcp_be_liberal").map(|v| v as u8),
        tcp_ignore_invalid_rst: sysctl("nf_conntrack_tcp_ignore_invalid_rst").map(|v| v as u8),
        log_invalid: sysctl("nf_conntrack_log_invalid").map(|v| v as u8),
        entries: sysctl("nf_conntrack_count"),
        max: sysctl("nf_conntrack_max"),
        buckets: sysctl("nf_conntrack_buckets"),
        counters: kstat::read()
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
        advice: vec![],
    };
    judge(&mut p);
    p
}

/// The verdict and the advice, from the facts.
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
    if let (Some(e), Some(m)) = (p.entries, p.max) {
        if m > 0 && e * 4 > m * 3 {
            p.advice.push(format!(
                "conntrack table {e}/{m} entries ({}%): above the usual 75% alert, new connections will soon be dropped; raise nf_conntrack_max.",
                e * 100 / m
            ));
        }
    }
}

pub fn run_doctor(format: Format, w: &mut impl std::io::Write) -> std::io::Result<()> {
    let p = inspect();
    if format == Format::Json {
        return writeln!(w, "{}", serde_json::to_string(&p).unwrap_or_default());
    }
    let opt = |v: Option<u64>| v.map_or("unknown".to_string(), |v| v.to_string());
    writeln!(w, "netns {}", p.netns)?;
    writeln!(
        w,
        "  nf_conntrack_tcp_be_liberal          {}",
        opt(p.tcp_be_liberal.map(u64::from))
    )?;
    writeln!(
        w,
        "  nf_conntrack_tcp_ignore_invalid_rst  {}",
        opt(p.tcp_ignore_invalid_rst.map(u64::from))
    )?;
    writeln!(
        w,
        "  conntrack table                      {} / {} entries ({} buckets)",
        opt(p.entries),
        opt(p.max),
        opt(p.buckets)
    )?;
    let counters: Vec<String> = p.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(
        w,
        "  kernel counters                      {}",
        counters.join(", ")
    )?;
    writeln!(
        w,
        "  kube-proxy                           {}",
        p.kube_proxy.unwrap_or("not seen")
    )?;
    if p.drop_rules.is_empty() {
        writeln!(w, "  INVALID drop rules                   none")?;
    }
    for r in &p.drop_rules {
        writeln!(
            w,
            "  INVALID drop rule                    {} {}: {} (packets {})",
            r.source,
            r.family,
            r.rule,
            opt(r.packets)
        )?;
    }
    writeln!(w, "verdict: {}", p.verdict)?;
    for a in &p.advice {
        writeln!(w, "  {a}")?;
    }
    Ok(())
}

pub fn run(format: Format) -> anyhow::Result<std::process::ExitCode> {
    match run_doctor(format, &mut std::io::stdout().lock()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(std::process::ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_invalid_drop_rules_with_counters() {
        let save = "*filter\n:FORWARD ACCEPT [0:0]\n[7:420] -A FORWARD -m conntrack --ctstate INVALID -j DROP\n[0:0] -A FORWARD -j ACCEPT\nCOMMIT\n";
        let r = iptables_drop_rules(save, "ipv4", "iptables");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].packets, Some(7));
        assert_eq!(
            r[0].rule,
            "-A FORWARD -m conntrack --ctstate INVALID -j DROP"
        );
        let nft = "table inet filter {\n\tchain forward {\n\t\tct state invalid counter packets 3 bytes 180 drop\n\t}\n}\n";
        let r = nft_drop_rules(nft, "");
        assert_eq!((r.len(), r[0].packets, r[0].family), (1, Some(3), "inet"));
        let managed = "table ip filter {\n\tchain FORWARD {\n\t\tct state invalid counter packets 0 bytes 0 drop\n\t}\n}\n";
        let warning = "# Warning: table ip filter is managed by iptables-nft, do not touch!\n";
        assert!(
            nft_drop_rules(managed, warning).is_empty(),
            "counted once, through iptables-save"
        );
        assert_eq!(nft_drop_rules(managed, "")[0].family, "ipv4");
    }

    fn posture() -> Posture {
        Posture {
            netns: 1,
            tcp_be_liberal: Some(0),
            tcp_ignore_invalid_rst: Some(0),
            log_invalid: Some(0),
            entries: Some(10),
            max: Some(100),
            buckets: Some(25),
            counters: Default::default(),
            drop_rules: vec![],
            kube_proxy: None,
            rules_read: true,
            verdict: "",
            advice: vec![],
        }
    }

    #[test]
    fn verdicts_follow_the_fixes() {
        let mut p = posture();
        judge(&mut p);
        assert_eq!(p.verdict, "exposed");
        p.tcp_be_liberal = Some(1);
        judge(&mut p);
        assert_eq!(p.verdict, "protected-liberal");
        p.tcp_be_liberal = Some(0);
        p.drop_rules = iptables_drop_rules(
            "[0:0] -A FORWARD -m conntrack --ctstate INVALID -j DROP",
            "ipv4",
            "iptables",
        );
        judge(&mut p);
        assert_eq!(p.verdict, "protected-rule");
        assert!(
            p.advice.iter().any(|a| a.contains("IPv6")),
            "{:?}",
            p.advice
        );
        p.entries = Some(80);
        judge(&mut p);
        assert!(p.advice.iter().any(|a| a.contains("80%")), "{:?}", p.advice);
    }
}
