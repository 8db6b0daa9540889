//! The table's posture: how full it is, its size against the kernel's own default for this RAM
//! and against its buckets, its TCP timeouts, the kernel's pressure counters over the window,
//! and the advice that follows from them.

use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    sizing::{self, Sizing},
    sysctl,
    text::opt,
};
use crate::{kernel::preflight, node::kstat};

/// Utilisation at which the table is under pressure: the alert operators put on
/// `node_nf_conntrack_entries / node_nf_conntrack_entries_limit`.
pub const HIGH_UTILISATION: f64 = 0.75;

/// `nf_conntrack_max / nf_conntrack_buckets` of the kernel's own sizing since Linux 5.15 (4
/// before; see [`sizing`]). Each entry is hashed twice (original and reply tuple), so at 1 a
/// full table averages two entries per chain: a larger ratio means longer chains walked by
/// every packet's lookup.
pub const DEFAULT_MAX_PER_BUCKET: f64 = 1.0;

/// Seconds an idle established entry must outlive: Linux's default `tcp_keepalive_time`
/// (7200 s of idle before the first keepalive probe) plus four minutes of margin.
pub const KEEPALIVE_S: u64 = 7440;

/// How far `nf_conntrack_max` may be from the kernel's own default and still be `at` it: the
/// RAM read now is not quite the RAM the kernel sized the table from (see [`sizing`]).
const DEFAULT_TOLERANCE: f64 = 0.10;

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

/// `nf_conntrack_max` against the kernel's own default for this RAM (within 10%: at).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VsDefault {
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
    /// The running kernel's release (`uname -r`), whose version decides its default sizing.
    pub kernel: Option<String>,
    /// Bytes a page, which the kernel rounds the buckets to (0: unknown, taken as 4096).
    #[serde(skip)]
    pub page_size: u64,
    /// The table this kernel sizes for this RAM by itself, and the formula (by version).
    pub kernel_default: Option<Sizing>,
    /// `max` against `kernel_default`: `below` means something lowered it.
    pub max_vs_kernel_default: Option<VsDefault>,
    /// The incident write-ups' RAM / 16384 / (word bits / 32), for reference: not a default
    /// of any kernel above 1 GiB of RAM.
    pub writeups: Option<Sizing>,
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

pub fn vs_default(max: u64, default: u64) -> VsDefault {
    let (m, d) = (max as f64, default as f64);
    if m < d * (1.0 - DEFAULT_TOLERANCE) {
        VsDefault::Below
    } else if m > d * (1.0 + DEFAULT_TOLERANCE) {
        VsDefault::Above
    } else {
        VsDefault::At
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
            kernel: Some(preflight::kernel_release()).filter(|r| !r.is_empty()),
            // SAFETY: sysconf reads a constant of the running system.
            page_size: u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0),
            tcp_timeouts: TcpTimeouts::read(),
            tcp_loose: sysctl("nf_conntrack_tcp_loose").map(|v| v as u8),
            window_s,
            deltas,
            ..Self::default()
        }
    }

    /// The running kernel's (major, minor), when its release was read.
    pub fn version(&self) -> Option<(u32, u32)> {
        let v = preflight::parse_version(self.kernel.as_deref()?);
        (v.0 > 0).then_some(v)
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
        let page = if self.page_size == 0 {
            4096
        } else {
            self.page_size
        };
        // The kernel's word size is taken to be ct-trace's own: a 32-bit ct-trace on a 64-bit
        // kernel is not a build anyone ships.
        self.kernel_default = self
            .ram_bytes
            .zip(self.version())
            .map(|(r, v)| sizing::kernel_default(r, usize::BITS, page, v));
        self.max_vs_kernel_default = self
            .max
            .zip(self.kernel_default.as_ref())
            .map(|(m, d)| vs_default(m, d.max));
        self.writeups = self
            .ram_bytes
            .map(|r| sizing::writeups_max(r, usize::BITS))
            .filter(|w| w.max > 0);
        self.verdict = table_verdict(self.pressure, self.deltas.as_ref());
    }
}

/// The table's findings in words, each with the fix that applies.
pub fn table_advice(t: &Table) -> Vec<String> {
    let mut out = capacity_advice(t);
    out.extend(below_default_advice(t));
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

/// The fix for a table under pressure, by how `nf_conntrack_max` compares with the kernel's
/// own default for this RAM. The write-ups' formula is offered as a labelled size only when
/// the table is under pressure and already at its default, never as the default it falls short
/// of.
fn raise_advice(t: &Table) -> String {
    let scope =
        "nf_conntrack_max is set in the init namespace and limits each namespace's own entries";
    let Some(d) = &t.kernel_default else {
        return format!("raise nf_conntrack_max (and nf_conntrack_buckets to match); {scope}.");
    };
    if t.max_vs_kernel_default == Some(VsDefault::Below) {
        return format!(
            "raise nf_conntrack_max at least back to this kernel's own default for this RAM ({}): sysctl -w net.netfilter.nf_conntrack_max={}; {scope}.",
            d.max, d.max
        );
    }
    let raise = match (&t.writeups, t.max) {
        (Some(w), Some(m)) if w.max > m => format!(
            "raise it (a few hundred bytes of kernel memory an entry), e.g. to {} ({}), with nf_conntrack_buckets to match; {scope}",
            w.max, w.formula
        ),
        _ => format!("raise it further, with nf_conntrack_buckets to match; {scope}"),
    };
    format!(
        "nf_conntrack_max is already at or above this kernel's own default for this RAM ({}): shorten the timeouts of closing states (nf_conntrack_tcp_timeout_time_wait, _close_wait, _fin_wait), spread the busiest flows over more nodes, or, if the load is real, {raise}.",
        d.max
    )
}

/// `nf_conntrack_max` below the kernel's own default for this RAM: something lowered it.
pub(super) fn below_default_advice(t: &Table) -> Option<String> {
    if t.max_vs_kernel_default != Some(VsDefault::Below) {
        return None;
    }
    let d = t.kernel_default.as_ref()?;
    Some(format!(
        "nf_conntrack_max={} is below this kernel's own default for this RAM ({}: {}): something lowered it (a sysctl file, a container runtime, a test), so new flows are refused or evict unreplied ones sooner than by default. Unless that was meant: sysctl -w net.netfilter.nf_conntrack_max={}.",
        t.max?, d.max, d.formula, d.max
    ))
}

pub(super) fn chain_advice(t: &Table) -> Option<String> {
    let r = t.max_per_bucket.filter(|r| *r > DEFAULT_MAX_PER_BUCKET)?;
    Some(format!(
        "nf_conntrack_max is {r:.1}x nf_conntrack_buckets (the kernel's own sizing is 1x since Linux 5.15, 4x before): a full table averages {:.0} entries per hash chain instead of 2, walked by every packet's lookup; sysctl -w net.netfilter.nf_conntrack_buckets={} (8 bytes a bucket).",
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
