//! The INVALID posture's rules: which iptables and nftables rules drop packets in ctstate
//! INVALID, whether kube-proxy's chains are there, and which rulesets could be read at all (an
//! unread ruleset is unknown, never "no rules").

use serde::Serialize;

use crate::node::tools::{self, RulesRead};

#[derive(Debug, Serialize)]
pub struct Rule {
    pub family: &'static str,
    pub source: &'static str,
    pub rule: String,
    /// Packets the rule matched so far, when the tool reports counters.
    pub packets: Option<u64>,
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

/// One ruleset doctor reads, and whether it could.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    /// The command that prints it: `iptables-save -c`, `ip6tables-save -c`, `nft list ruleset`.
    pub command: String,
    /// `ipv4`, `ipv6`, or `all` (nftables: every family).
    pub family: &'static str,
    pub read: bool,
    /// Why it could not be read: not installed, or the command's exit status and first error
    /// line ("Permission denied (you must be root)" without CAP_NET_ADMIN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the rulesets say: the INVALID drop rules found, kube-proxy's mode, and what was read.
#[derive(Debug, Default)]
pub struct Found {
    pub drop_rules: Vec<Rule>,
    pub kube_proxy: Option<&'static str>,
    pub rulesets: Vec<Ruleset>,
}

pub fn rules_read(rulesets: &[Ruleset]) -> RulesRead {
    let read = rulesets.iter().filter(|r| r.read).count();
    RulesRead::of(read, rulesets.len())
}

/// Whether every ruleset that could hold a rule for `family` (`ipv4`, `ipv6`) was read.
pub fn family_read(rulesets: &[Ruleset], family: &str) -> bool {
    (rulesets.iter())
        .filter(|r| r.family == family || r.family == "all")
        .all(|r| r.read)
}

/// `` `command`: why `` of each ruleset that could not be read.
pub fn unread(rulesets: &[Ruleset]) -> Vec<String> {
    (rulesets.iter())
        .filter_map(|r| Some(format!("`{}`: {}", r.command, r.error.as_ref()?)))
        .collect()
}

/// INVALID drop rules in every ruleset doctor can read, kube-proxy's mode, and which rulesets
/// could be read.
pub(super) fn read_rules() -> Found {
    let mut found = Found::default();
    let mut note = |cmd: &str, args: &[&str], family, r: &Result<tools::Reading, String>| {
        found.rulesets.push(Ruleset {
            command: format!("{cmd} {}", args.join(" ")),
            family,
            read: r.is_ok(),
            error: r.as_ref().err().cloned(),
        })
    };
    let mut readings = vec![];
    for (cmd, family) in [("iptables-save", "ipv4"), ("ip6tables-save", "ipv6")] {
        let r = tools::run(cmd, &["-c"]);
        note(cmd, &["-c"], family, &r);
        readings.push((family, r));
    }
    let nft = tools::run("nft", &["list", "ruleset"]);
    note("nft", &["list", "ruleset"], "all", &nft);
    for (family, r) in readings {
        let Ok(r) = r else { continue };
        let save = String::from_utf8_lossy(&r.stdout);
        if save.contains(":KUBE-SERVICES") {
            found.kube_proxy = Some("iptables");
        }
        found
            .drop_rules
            .extend(iptables_drop_rules(&save, family, "iptables"));
    }
    if let Ok(r) = nft {
        let rs = String::from_utf8_lossy(&r.stdout);
        if rs.contains("table ip kube-proxy") || rs.contains("table ip6 kube-proxy") {
            found.kube_proxy = Some("nftables");
        }
        found.drop_rules.extend(nft_drop_rules(&rs, &r.stderr));
    }
    found
}
