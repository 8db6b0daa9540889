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

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{self, Write},
    process::Command,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{cli::DoctorArgs, kstat, report::Format};

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

/// Utilisation at which the table is under pressure: the alert operators put on
/// `node_nf_conntrack_entries / node_nf_conntrack_entries_limit`.
pub const HIGH_UTILISATION: f64 = 0.75;

/// `nf_conntrack_max / nf_conntrack_buckets` of the kernel's own sizing. Since Linux 5.15
/// (commit d532bcd0b269 "netfilter: conntrack: sanitize table size default settings", in the
/// stable trees too) `nf_conntrack_init_start()` in net/netfilter/nf_conntrack_core.c sets
/// `nf_conntrack_max = max_factor * nf_conntrack_htable_size` with `max_factor = 1` when the
/// kernel sized the hash itself (on every word size: 64-bit only raises the bucket cap to 262144
/// above 4 GiB of RAM), and 8 when `hashsize=` was given; before 5.15 the default factor was 4.
/// Each entry is hashed twice (original and reply tuple), so at factor 1 a full table averages
/// two entries per chain: a larger ratio means longer chains walked by every packet's lookup.
pub const DEFAULT_MAX_PER_BUCKET: f64 = 1.0;

/// Seconds an idle established entry must outlive: Linux's default `tcp_keepalive_time`
/// (7200 s of idle before the first keepalive probe) plus four minutes of margin.
pub const KEEPALIVE_S: u64 = 7440;

/// How far `nf_conntrack_max` may be from the RAM formula's value and still be `at` it.
const RAM_TOLERANCE: f64 = 0.10;

/// How full the namespace's table is (`entries / max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pressure {
    /// Below 75%.
    Ok,
    /// At or above 75%: the usual alert.
    High,
    /// At the limit: new flows evict unreplied ones (early_drop) or are dropped.
    Full,
}

/// `nf_conntrack_max` against what the node's RAM allows by the usual formula (within 10%: at).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxVsRam {
    Below,
    At,
    Above,
}

/// The table's verdict: `pressure` at 75%, `full` at the limit or when the kernel dropped or
/// evicted for room during the window; `unknown` when neither could be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableVerdict {
    Ok,
    Pressure,
    Full,
    #[default]
    Unknown,
}

/// The names the JSON output uses, for the text output.
fn name(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// `nf_conntrack_tcp_timeout_*` of the namespace (seconds): how long an entry in each state lives
/// without a packet. An idle flow whose entry expires loses its NAT with it.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct TcpTimeouts {
    pub established: Option<u64>,
    pub close_wait: Option<u64>,
    pub fin_wait: Option<u64>,
    pub time_wait: Option<u64>,
    pub syn_sent: Option<u64>,
    pub syn_recv: Option<u64>,
    pub unacknowledged: Option<u64>,
}

impl TcpTimeouts {
    fn read() -> Self {
        let t = |state: &str| sysctl(&format!("nf_conntrack_tcp_timeout_{state}"));
        Self {
            established: t("established"),
            close_wait: t("close_wait"),
            fin_wait: t("fin_wait"),
            time_wait: t("time_wait"),
            syn_sent: t("syn_sent"),
            syn_recv: t("syn_recv"),
            unacknowledged: t("unacknowledged"),
        }
    }

    fn fields(&self) -> [(&'static str, Option<u64>); 7] {
        [
            ("established", self.established),
            ("close_wait", self.close_wait),
            ("fin_wait", self.fin_wait),
            ("time_wait", self.time_wait),
            ("syn_sent", self.syn_sent),
            ("syn_recv", self.syn_recv),
            ("unacknowledged", self.unacknowledged),
        ]
    }
}

/// Growth of the kernel's pressure counters of the namespace (`/proc/net/stat/nf_conntrack`)
/// over the window; a counter the kernel does not have is `None`.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Deltas {
    /// Packets conntrack dropped: no room left (early_drop found nothing to evict), or a lost
    /// insert race (counted in `insert_failed` too).
    pub drop: Option<u64>,
    /// Unreplied entries evicted to make room: only happens at the limit.
    pub early_drop: Option<u64>,
    /// Entries that could not be confirmed: a lost insert race, or a hash chain too long.
    pub insert_failed: Option<u64>,
    pub invalid: Option<u64>,
    /// Insert races resolved by merging the entries (UDP, DNS): column `clashres`.
    pub clash_resolve: Option<u64>,
}

impl Deltas {
    pub fn between(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> Self {
        let d = |col: &str| Some(after.get(col)?.saturating_sub(*before.get(col)?));
        Self {
            drop: d("drop"),
            early_drop: d("early_drop"),
            insert_failed: d("insert_failed"),
            invalid: d("invalid"),
            clash_resolve: d("clashres"),
        }
    }

    /// Whether the kernel ran out of room during the window: it evicted entries, or it dropped
    /// more packets than lost insert races explain.
    pub fn table_was_full(&self) -> bool {
        let n = |v: Option<u64>| v.unwrap_or(0);
        n(self.early_drop) > 0 || n(self.drop) > n(self.insert_failed)
    }

    fn fields(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("drop", self.drop),
            ("early_drop", self.early_drop),
            ("insert_failed", self.insert_failed),
            ("invalid", self.invalid),
            ("clash_resolve", self.clash_resolve),
        ]
    }
}

/// The conntrack table of the namespace doctor runs in. `max` and `buckets` are global (set in
/// the init namespace only), but `max` limits each namespace's own `entries`.
#[derive(Debug, Default, Serialize)]
pub struct Table {
    pub entries: Option<u64>,
    pub max: Option<u64>,
    /// `entries / max`.
    pub utilisation: Option<f64>,
    pub pressure: Option<Pressure>,
    pub buckets: Option<u64>,
    /// `max / buckets`: the kernel's own sizing is 1 ([`DEFAULT_MAX_PER_BUCKET`]).
    pub max_per_bucket: Option<f64>,
    /// Whether a full table has longer hash chains than the kernel's own sizing gives.
    pub long_chains: Option<bool>,
    /// The node's RAM (`MemTotal`), which the kernel sizes the table from.
    pub ram_bytes: Option<u64>,
    /// RAM / 16384 / (word bits / 32): the usual sizing for this node's RAM.
    pub recommended_max: Option<u64>,
    pub max_vs_ram: Option<MaxVsRam>,
    pub tcp_timeouts: TcpTimeouts,
    /// `nf_conntrack_tcp_loose`: whether a TCP flow without an entry is picked up mid-stream.
    pub tcp_loose: Option<u8>,
    /// Seconds the counters were sampled over (`--window`); 0: not sampled.
    pub window_s: f64,
    /// Counter growth over the window; `None` when not sampled or unreadable.
    pub deltas: Option<Deltas>,
    pub verdict: TableVerdict,
}

pub fn utilisation(entries: u64, max: u64) -> Option<f64> {
    (max > 0).then(|| entries as f64 / max as f64)
}

pub fn pressure(utilisation: f64) -> Pressure {
    if utilisation >= 1.0 {
        Pressure::Full
    } else if utilisation >= HIGH_UTILISATION {
        Pressure::High
    } else {
        Pressure::Ok
    }
}

/// The documented sizing for RAM (the write-up's formula, from the kernel's old conntrack
/// documentation): one entry per 16 KiB on 32-bit, per 32 KiB on 64-bit.
pub fn recommended_max(ram_bytes: u64, word_bits: u32) -> u64 {
    ram_bytes / 16384 / u64::from((word_bits / 32).max(1))
}

pub fn max_vs_ram(max: u64, recommended: u64) -> MaxVsRam {
    let (m, r) = (max as f64, recommended as f64);
    if m < r * (1.0 - RAM_TOLERANCE) {
        MaxVsRam::Below
    } else if m > r * (1.0 + RAM_TOLERANCE) {
        MaxVsRam::Above
    } else {
        MaxVsRam::At
    }
}

pub fn max_per_bucket(max: u64, buckets: u64) -> Option<f64> {
    (buckets > 0).then(|| max as f64 / buckets as f64)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim();
    kib.parse::<u64>().ok()?.checked_mul(1024)
}

pub fn table_verdict(pressure: Option<Pressure>, deltas: Option<&Deltas>) -> TableVerdict {
    if pressure == Some(Pressure::Full) || deltas.is_some_and(Deltas::table_was_full) {
        return TableVerdict::Full;
    }
    match pressure {
        Some(Pressure::High) => TableVerdict::Pressure,
        Some(_) => TableVerdict::Ok,
        None => TableVerdict::Unknown,
    }
}

impl Table {
    /// Reads the namespace's table; `deltas` were sampled over `window_s` seconds.
    fn read(deltas: Option<Deltas>, window_s: f64) -> Self {
        Self {
            entries: sysctl("nf_conntrack_count"),
            max: sysctl("nf_conntrack_max"),
            buckets: sysctl("nf_conntrack_buckets"),
            ram_bytes: fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total(&m)),
            tcp_timeouts: TcpTimeouts::read(),
            tcp_loose: sysctl("nf_conntrack_tcp_loose").map(|v| v as u8),
            window_s,
            deltas,
            ..Self::default()
        }
    }

    /// Fills in what follows from the facts read (entries, max, buckets, RAM, deltas).
    pub fn derive(&mut self) {
        self.utilisation = self
            .entries
            .zip(self.max)
            .and_then(|(e, m)| utilisation(e, m));
        self.pressure = self.utilisation.map(pressure);
        self.max_per_bucket = self
            .max
            .zip(self.buckets)
            .and_then(|(m, b)| max_per_bucket(m, b));
        self.long_chains = self.max_per_bucket.map(|r| r > DEFAULT_MAX_PER_BUCKET);
        self.recommended_max = self
            .ram_bytes
            .map(|r| recommended_max(r, usize::BITS))
            .filter(|r| *r > 0);
        self.max_vs_ram = self
            .max
            .zip(self.recommended_max)
            .map(|(m, r)| max_vs_ram(m, r));
        self.verdict = table_verdict(self.pressure, self.deltas.as_ref());
    }
}

/// The table's findings in words, each with the fix that applies.
pub fn table_advice(t: &Table) -> Vec<String> {
    let mut out = capacity_advice(t);
    out.extend(chain_advice(t));
    out.extend(timeout_advice(t));
    out
}

fn capacity_advice(t: &Table) -> Vec<String> {
    let (e, m) = (opt(t.entries), opt(t.max));
    let pct = t
        .utilisation
        .map_or("unknown".into(), |u| format!("{:.0}%", u * 100.0));
    let first = match (&t.deltas, t.pressure) {
        (Some(d), _) if d.table_was_full() => format!(
            "the table is full: in {:.1} s conntrack dropped {} packets and evicted {} unreplied entries (early_drop) to make room ({e}/{m} entries, {pct}); new flows lose packets until there is room, an evicted one loses its NAT.",
            t.window_s,
            opt(d.drop),
            opt(d.early_drop)
        ),
        (_, Some(Pressure::Full)) => format!(
            "the table is full: {e}/{m} entries ({pct}); new flows evict unreplied ones (early_drop) or are dropped."
        ),
        (_, Some(Pressure::High)) => format!(
            "conntrack table {e}/{m} entries ({pct}): at or above the usual 75% alert, new connections will soon be dropped."
        ),
        _ => return vec![],
    };
    vec![first, raise_advice(t)]
}

/// The fix for a table under pressure, by how `nf_conntrack_max` compares with the node's RAM.
fn raise_advice(t: &Table) -> String {
    let scope =
        "nf_conntrack_max is set in the init namespace and limits each namespace's own entries";
    match (t.max_vs_ram, t.recommended_max) {
        (Some(MaxVsRam::Below), Some(r)) => format!(
            "raise nf_conntrack_max and nf_conntrack_buckets to what this node's RAM allows (RAM/16384/(word bits/32) = {r}): sysctl -w net.netfilter.nf_conntrack_max={r} net.netfilter.nf_conntrack_buckets={r}; {scope}."
        ),
        (Some(_), Some(r)) => format!(
            "nf_conntrack_max is already at or above what this node's RAM allows ({r}): raising it further costs kernel memory beyond the usual sizing; spread the busiest flows over nodes with more RAM or fewer replicas each, or shorten the timeouts of closing states (nf_conntrack_tcp_timeout_time_wait, _close_wait, _fin_wait)."
        ),
        _ => format!("raise nf_conntrack_max (and nf_conntrack_buckets to match); {scope}."),
    }
}

fn chain_advice(t: &Table) -> Option<String> {
    let r = t.max_per_bucket.filter(|r| *r > DEFAULT_MAX_PER_BUCKET)?;
    Some(format!(
        "nf_conntrack_max is {r:.1}x nf_conntrack_buckets (the kernel's own sizing is 1x since Linux 5.15): a full table averages {:.0} entries per hash chain instead of 2, walked by every packet's lookup; sysctl -w net.netfilter.nf_conntrack_buckets={} (8 bytes a bucket).",
        2.0 * r,
        t.max?
    ))
}

fn timeout_advice(t: &Table) -> Option<String> {
    let est = t.tcp_timeouts.established.filter(|s| *s < KEEPALIVE_S)?;
    let then = if t.tcp_loose == Some(0) {
        "INVALID (nf_conntrack_tcp_loose=0): without a drop rule it leaves un-NATed and the connection is reset, with one the connection hangs"
    } else {
        "picked up mid-stream as a new entry without the NAT (nf_conntrack_tcp_loose=1) and the connection is reset"
    };
    Some(format!(
        "nf_conntrack_tcp_timeout_established={est}s is shorter than TCP keepalive's default ({KEEPALIVE_S}s: 7200 s of idle before the first probe): an idle connection loses its entry and its NAT first, and its next packet is {then}. Raise it (the kernel's default is 432000) or use keepalives shorter than {est}s."
    ))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

/// INVALID drop rules in every ruleset doctor can read, kube-proxy's mode, and whether any
/// ruleset could be read.
fn read_rules() -> (Vec<Rule>, Option<&'static str>, bool) {
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

/// The counters' growth from `before` (read at `t0`) to `window` after `t0`; `None` when not
/// sampled (a zero window) or unreadable.
fn sample(before: Option<&HashMap<String, u64>>, window: Duration, t0: Instant) -> Option<Deltas> {
    let before = before.filter(|_| !window.is_zero())?;
    std::thread::sleep(window.saturating_sub(t0.elapsed()));
    kstat::read()
        .ok()
        .map(|after| Deltas::between(before, &after))
}

/// The posture of the namespace doctor runs in; the kernel's counters are sampled over `window`
/// (the rulesets are read meanwhile).
pub fn inspect(window: Duration) -> Posture {
    let t0 = Instant::now();
    let before = kstat::read().ok();
    let (drop_rules, kube_proxy, rules_read) = read_rules();
    let deltas = sample(before.as_ref(), window, t0);
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

fn row(w: &mut impl Write, label: &str, value: impl std::fmt::Display) -> io::Result<()> {
    writeln!(w, "  {label:<37}{value}")
}

fn write_table(w: &mut impl Write, t: &Table) -> io::Result<()> {
    let pct = t
        .utilisation
        .map_or("unknown".into(), |u| format!("{:.1}%", u * 100.0));
    row(
        w,
        "table pressure",
        format!(
            "{pct} of nf_conntrack_max: {} (a global limit on this namespace's entries)",
            opt(t.pressure.map(name))
        ),
    )?;
    let chains = if t.long_chains == Some(true) {
        ": long hash chains when full"
    } else {
        ""
    };
    row(
        w,
        "table max per bucket",
        format!(
            "{} (the kernel's own sizing: {DEFAULT_MAX_PER_BUCKET}){chains}",
            opt(t.max_per_bucket.map(|r| format!("{r:.2}")))
        ),
    )?;
    let gib = t
        .ram_bytes
        .map(|b| format!("{:.1}", b as f64 / f64::from(1u32 << 30)));
    row(
        w,
        "table max vs RAM",
        format!(
            "{}: {} GiB of RAM allows {}",
            opt(t.max_vs_ram.map(name)),
            opt(gib),
            opt(t.recommended_max)
        ),
    )?;
    let timeouts: Vec<String> = (t.tcp_timeouts.fields().iter())
        .map(|(k, v)| format!("{k} {}", opt(*v)))
        .collect();
    row(
        w,
        "tcp timeouts (s)",
        format!("{}; tcp_loose {}", timeouts.join(", "), opt(t.tcp_loose)),
    )?;
    let deltas = match &t.deltas {
        _ if t.window_s == 0.0 => "not sampled (--window 0)".to_string(),
        None => "unknown".to_string(),
        Some(d) => {
            let d: Vec<String> = (d.fields().iter())
                .map(|(k, v)| format!("{k} +{}", opt(*v)))
                .collect();
            format!("over {} s: {}", t.window_s, d.join(", "))
        }
    };
    row(w, "table counter deltas", deltas)?;
    row(w, "table verdict", name(t.verdict))
}

pub fn run_doctor(format: Format, window: Duration, w: &mut impl Write) -> io::Result<()> {
    let p = inspect(window);
    if format == Format::Json {
        return writeln!(w, "{}", serde_json::to_string(&p).unwrap_or_default());
    }
    writeln!(w, "netns {}", p.netns)?;
    let u8s = |v: Option<u8>| opt(v.map(u64::from));
    row(w, "nf_conntrack_tcp_be_liberal", u8s(p.tcp_be_liberal))?;
    row(
        w,
        "nf_conntrack_tcp_ignore_invalid_rst",
        u8s(p.tcp_ignore_invalid_rst),
    )?;
    row(
        w,
        "conntrack table",
        format!(
            "{} / {} entries ({} buckets)",
            opt(p.entries),
            opt(p.max),
            opt(p.buckets)
        ),
    )?;
    write_table(w, &p.table)?;
    let counters: Vec<String> = p.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
    row(w, "kernel counters", counters.join(", "))?;
    row(w, "kube-proxy", p.kube_proxy.unwrap_or("not seen"))?;
    if p.drop_rules.is_empty() {
        row(w, "INVALID drop rules", "none")?;
    }
    for r in &p.drop_rules {
        row(
            w,
            "INVALID drop rule",
            format!(
                "{} {}: {} (packets {})",
                r.source,
                r.family,
                r.rule,
                opt(r.packets)
            ),
        )?;
    }
    writeln!(w, "verdict: {}", p.verdict)?;
    for a in &p.advice {
        writeln!(w, "  {a}")?;
    }
    Ok(())
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
            table: Table {
                entries: Some(10),
                max: Some(100),
                buckets: Some(100),
                tcp_timeouts: TcpTimeouts {
                    established: Some(432000),
                    ..Default::default()
                },
                ..Default::default()
            },
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
        p.table.entries = Some(80);
        judge(&mut p);
        assert_eq!(p.verdict, "protected-rule", "the table does not change it");
        assert_eq!(p.table.verdict, TableVerdict::Pressure);
        assert!(p.advice.iter().any(|a| a.contains("80%")), "{:?}", p.advice);
    }

    #[test]
    fn utilisation_classifies_at_the_alert_and_the_limit() {
        assert_eq!(utilisation(3, 4), Some(0.75));
        assert_eq!(
            utilisation(1, 0),
            None,
            "no limit read: unknown, not a division"
        );
        assert_eq!(pressure(0.0), Pressure::Ok);
        assert_eq!(pressure(0.7499), Pressure::Ok);
        assert_eq!(pressure(0.75), Pressure::High);
        assert_eq!(pressure(0.99), Pressure::High);
        assert_eq!(pressure(1.0), Pressure::Full);
        assert_eq!(name(Pressure::High), "high");
        assert_eq!(name(TableVerdict::Full), "full");
    }

    #[test]
    fn ram_formula_and_its_band() {
        // 16 GiB: 1 entry per 16 KiB on 32-bit, per 32 KiB on 64-bit.
        let ram = 16u64 << 30;
        assert_eq!(recommended_max(ram, 32), 1 << 20);
        assert_eq!(recommended_max(ram, 64), 1 << 19);
        assert_eq!(recommended_max(0, 64), 0);
        assert_eq!(max_vs_ram(1000, 1000), MaxVsRam::At);
        assert_eq!(max_vs_ram(901, 1000), MaxVsRam::At);
        assert_eq!(max_vs_ram(899, 1000), MaxVsRam::Below);
        assert_eq!(max_vs_ram(1101, 1000), MaxVsRam::Above);
        let meminfo = "MemTotal:       24684092 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24684092 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn bucket_ratio_against_the_kernels_sizing() {
        assert_eq!(max_per_bucket(262144, 262144), Some(1.0));
        assert_eq!(max_per_bucket(1200, 300), Some(4.0));
        assert_eq!(max_per_bucket(1, 0), None);
        let mut t = Table {
            max: Some(262144),
            buckets: Some(262144),
            ..Default::default()
        };
        t.derive();
        assert_eq!(t.long_chains, Some(false));
        assert!(chain_advice(&t).is_none());
        // The incident's test cluster: max = 4 x buckets.
        t.buckets = Some(65536);
        t.derive();
        assert_eq!(t.long_chains, Some(true));
        let a = chain_advice(&t).unwrap();
        assert!(
            a.contains("4.0x") && a.contains("averages 8 entries"),
            "{a}"
        );
        assert!(a.contains("nf_conntrack_buckets=262144"), "{a}");
    }

    fn counters(drop: u64, early_drop: u64, insert_failed: u64) -> HashMap<String, u64> {
        [
            ("drop", drop),
            ("early_drop", early_drop),
            ("insert_failed", insert_failed),
            ("invalid", 5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn deltas_and_what_they_say_about_room() {
        let d = Deltas::between(&counters(10, 0, 2), &counters(10, 0, 2));
        assert_eq!(d.drop, Some(0));
        assert_eq!(d.clash_resolve, None, "no clashres column: unknown");
        assert!(!d.table_was_full());
        // Lost insert races drop packets too: not a full table.
        let d = Deltas::between(&counters(10, 0, 2), &counters(13, 0, 5));
        assert_eq!((d.drop, d.insert_failed), (Some(3), Some(3)));
        assert!(!d.table_was_full());
        assert!(Deltas::between(&counters(10, 0, 2), &counters(14, 0, 5)).table_was_full());
        assert!(Deltas::between(&counters(0, 0, 0), &counters(0, 1, 0)).table_was_full());
        assert_eq!(table_verdict(None, None), TableVerdict::Unknown);
        assert_eq!(table_verdict(Some(Pressure::Ok), None), TableVerdict::Ok);
        assert_eq!(
            table_verdict(Some(Pressure::High), None),
            TableVerdict::Pressure
        );
        assert_eq!(
            table_verdict(Some(Pressure::Full), None),
            TableVerdict::Full
        );
        let full = Deltas::between(&counters(0, 0, 0), &counters(20, 60, 0));
        assert_eq!(
            table_verdict(Some(Pressure::Ok), Some(&full)),
            TableVerdict::Full
        );
        assert_eq!(table_verdict(None, Some(&full)), TableVerdict::Full);
    }

    #[test]
    fn advice_names_the_fix_that_applies() {
        let gib = 1u64 << 30;
        let mut t = Table {
            entries: Some(1000),
            max: Some(10000),
            buckets: Some(10000),
            ram_bytes: Some(8 * gib),
            ..Default::default()
        };
        t.derive();
        assert_eq!(t.verdict, TableVerdict::Ok);
        assert!(table_advice(&t).is_empty(), "{:?}", table_advice(&t));
        // Nearly full, and below what 8 GiB allows (262144 on 64-bit): raise it to that.
        t.entries = Some(9000);
        t.derive();
        assert_eq!(t.max_vs_ram, Some(MaxVsRam::Below));
        let a = table_advice(&t).join("\n");
        assert!(a.contains("90%") && a.contains("75% alert"), "{a}");
        assert!(a.contains("nf_conntrack_max=262144"), "{a}");
        // Full by the counters alone, with max already what the RAM allows: no higher max.
        t.entries = Some(10);
        t.max = Some(262144);
        t.buckets = Some(262144);
        t.window_s = 1.0;
        t.deltas = Some(Deltas::between(&counters(0, 0, 0), &counters(20, 60, 0)));
        t.derive();
        assert_eq!(
            (t.verdict, t.max_vs_ram),
            (TableVerdict::Full, Some(MaxVsRam::At))
        );
        let a = table_advice(&t).join("\n");
        assert!(
            a.contains("the table is full") && a.contains("dropped 20"),
            "{a}"
        );
        assert!(a.contains("already at or above"), "{a}");
        // Nothing readable: no advice, no panic.
        let mut t = Table::default();
        t.derive();
        assert_eq!(t.verdict, TableVerdict::Unknown);
        assert!(table_advice(&t).is_empty());
        let mut out = vec![];
        write_table(&mut out, &t).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("table pressure                       unknown"),
            "{text}"
        );
    }

    #[test]
    fn short_established_timeouts_cost_idle_flows_their_nat() {
        let mut t = Table::default();
        assert!(timeout_advice(&t).is_none(), "unknown: nothing to say");
        t.tcp_timeouts.established = Some(432000);
        assert!(timeout_advice(&t).is_none());
        t.tcp_timeouts.established = Some(3600);
        let a = timeout_advice(&t).unwrap();
        assert!(a.contains("=3600s") && a.contains("mid-stream"), "{a}");
        t.tcp_loose = Some(0);
        assert!(timeout_advice(&t).unwrap().contains("INVALID"));
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("0"), Ok(Duration::ZERO));
        assert_eq!(parse_window("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_window("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_window("-1").is_err());
        assert!(parse_window("soon").is_err());
    }
}
