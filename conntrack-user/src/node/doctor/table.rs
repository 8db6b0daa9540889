//! The table's posture: how full it is, its sizing against RAM and buckets, its TCP timeouts,
//! the kernel's pressure counters over the window, and the advice that follows from them.

use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{sysctl, text::opt};
use crate::kstat;

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

    pub(super) fn fields(&self) -> [(&'static str, Option<u64>); 7] {
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

    pub(super) fn fields(&self) -> [(&'static str, Option<u64>); 5] {
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
    pub(super) fn read(deltas: Option<Deltas>, window_s: f64) -> Self {
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

pub(super) fn chain_advice(t: &Table) -> Option<String> {
    let r = t.max_per_bucket.filter(|r| *r > DEFAULT_MAX_PER_BUCKET)?;
    Some(format!(
        "nf_conntrack_max is {r:.1}x nf_conntrack_buckets (the kernel's own sizing is 1x since Linux 5.15): a full table averages {:.0} entries per hash chain instead of 2, walked by every packet's lookup; sysctl -w net.netfilter.nf_conntrack_buckets={} (8 bytes a bucket).",
        2.0 * r,
        t.max?
    ))
}

pub(super) fn timeout_advice(t: &Table) -> Option<String> {
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

/// The counters' growth from `before` (read at `t0`) to `window` after `t0`; `None` when not
/// sampled (a zero window) or unreadable.
pub(super) fn sample(
    before: Option<&HashMap<String, u64>>,
    window: Duration,
    t0: Instant,
) -> Option<Deltas> {
    let before = before.filter(|_| !window.is_zero())?;
    std::thread::sleep(window.saturating_sub(t0.elapsed()));
    kstat::read()
        .ok()
        .map(|after| Deltas::between(before, &after))
}
