//! The INVALID posture's rules: which iptables and nftables rules drop packets in ctstate
//! INVALID, and whether kube-proxy's chains are there.

use std::process::Command;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Rule {
    pub family: &'static str,
    pub source: &'static str,
    pub rule: String,
    /// Packets the rule matched so far, when the tool reports counters.
    pub packets: Option<u64>,
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

/// INVALID drop rules in every ruleset doctor can read, kube-proxy's mode, and whether any
/// ruleset could be read.
pub(super) fn read_rules() -> (Vec<Rule>, Option<&'static str>, bool) {
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
    (drop_rules, kube_proxy, rules_read)
}
