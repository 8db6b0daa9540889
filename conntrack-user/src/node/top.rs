//! Who fills the conntrack table: one namespace's table read through ctnetlink (a dump, what
//! `conntrack -L` reads) and broken down by Service, backend, client and state, with the
//! kernel's pressure counters as rates. What `ct-trace top` shows (`output::top` renders it).
//!
//! Memory is bounded whatever the table size: a dump is folded into the groups as it arrives
//! (no entry is kept), each grouping keeps at most `cap` distinct keys (the rest are counted
//! under `other`), and the only per-entry state is the set of entry ids of the previous dump
//! (4 bytes an entry), which tells which entries are new since then.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    io,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::node::{
    caused, kstat,
    netlink::{tcp_state_name, Conntrack, Entry},
    services::ServiceNames,
};

/// The groupings, in the order `top` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// The address and port the client connected to (the Service, before DNAT).
    Service,
    /// The address and port that answers (the pod, after DNAT).
    Backend,
    /// The client's address.
    Client,
    /// The TCP state (`ESTABLISHED`, `TIME_WAIT`, ...), or the protocol for others.
    State,
}

/// One group: its key as shown, the Service's name where kube-proxy's rules give one, its
/// entries now and how many of them are new since the previous snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub entries: u64,
    /// Entries created since the previous snapshot and still in the table.
    pub new: u64,
}

/// The kernel's pressure counters over the interval, per second.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// New entries still in the table at the snapshot (from the dumps).
    pub new: f64,
    /// conntrack's own counters: INVALID verdicts, packets dropped (table full or no memory),
    /// entries evicted to make room, entries it failed to insert.
    pub invalid: Option<f64>,
    pub drop: Option<f64>,
    pub early_drop: Option<f64>,
    pub insert_failed: Option<f64>,
}

/// One snapshot of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub netns: u32,
    pub interval_s: f64,
    /// Entries the dump returned.
    pub entries: u64,
    /// `nf_conntrack_max`, and the fill (entries / max).
    pub max: Option<u64>,
    pub fill: Option<f64>,
    /// The fill at which the write-ups (and ct-trace's alert) call the table high: 0.75.
    pub alert_fill: f64,
    /// The write-ups' size for this node's RAM (RAM / 16384 / (word bits / 32)).
    pub ram_max: Option<u64>,
    pub per_s: Rates,
    /// CPU time (user + system, this thread) the snapshot's dump cost: the next waits at least
    /// this divided by the CPU budget, so a large table is read less often.
    pub dump_cpu_ms: f64,
    /// Where the rates' counters were read: `procfs` or `ctnetlink`.
    pub counters_source: Option<kstat::Source>,
    /// The groups of each grouping, heaviest first, at most `limit` each, then `other` (the
    /// rest summed) when some were left out.
    pub by_service: Vec<Group>,
    pub by_backend: Vec<Group>,
    pub by_client: Vec<Group>,
    pub by_state: Vec<Group>,
    /// Distinct keys of each grouping (`other` counts as one when the cap was reached).
    pub groups: HashMap<Grouping, usize>,
    /// The resets broken flows caused since top started, from its tracer (absent with
    /// `--no-resets` and in the doctor's one-off look).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets: Option<caused::Resets>,
}

/// The fill the write-ups alert at.
pub const ALERT_FILL: f64 = 0.75;

/// Counts by key, at most `cap` keys; the rest under `other`.
struct Tally<K> {
    map: HashMap<K, (u64, u64)>,
    other: (u64, u64),
    cap: usize,
}

impl<K: Hash + Eq> Tally<K> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            other: (0, 0),
            cap,
        }
    }

    fn add(&mut self, k: K, new: bool) {
        let len = self.map.len();
        let slot = match self.map.get_mut(&k) {
            Some(s) => s,
            None if len < self.cap => self.map.entry(k).or_default(),
            None => &mut self.other,
        };
        slot.0 += 1;
        slot.1 += u64::from(new);
    }

    /// Heaviest first (ties by key, as shown), `limit` of them, then `other`.
    fn rows(self, limit: usize, show: impl Fn(&K) -> (String, Option<String>)) -> Vec<Group> {
        let mut rows: Vec<Group> = self
            .map
            .iter()
            .map(|(k, (entries, new))| {
                let (key, name) = show(k);
                Group {
                    key,
                    name,
                    entries: *entries,
                    new: *new,
                }
            })
            .collect();
        rows.sort_by(|a, b| b.entries.cmp(&a.entries).then_with(|| a.key.cmp(&b.key)));
        let mut rest = self.other;
        for r in rows.drain(limit.min(rows.len())..) {
            rest.0 += r.entries;
            rest.1 += r.new;
        }
        if rest.0 > 0 {
            rows.push(Group {
                key: "other".into(),
                name: None,
                entries: rest.0,
                new: rest.1,
            });
        }
        rows
    }

    fn distinct(&self) -> usize {
        self.map.len() + usize::from(self.other.0 > 0)
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        _ => "other",
    }
}

/// Samples one namespace's table: the dump and the counters of the previous sample are kept
/// for the rates.
pub struct Sampler {
    ct: Conntrack,
    names: ServiceNames,
    netns: u32,
    cap: usize,
    limit: usize,
    prev_ids: HashSet<u32>,
    prev_counters: Option<HashMap<String, u64>>,
    prev_at: Instant,
    /// CPU the last dump cost, and the share of one core dumps may take.
    last_cost: Duration,
    budget: f64,
    /// The write-ups' table size for this node's RAM, as the caller computed it.
    pub ram_max: Option<u64>,
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is Linux's.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Sampler {
    /// Reads the table once (the baseline of the first snapshot's rates). `limit`: groups shown
    /// per grouping; `cap`: distinct keys kept per grouping; `budget`: the share of one core
    /// the dumps may take (0.05: 5%).
    pub fn start(names: ServiceNames, limit: usize, cap: usize, budget: f64) -> io::Result<Self> {
        let mut me = Self {
            ct: Conntrack::open()?,
            names,
            netns: kstat::netns_inode("self")?,
            cap,
            limit,
            prev_ids: HashSet::new(),
            prev_counters: None,
            prev_at: Instant::now(),
            last_cost: Duration::ZERO,
            budget: budget.clamp(0.001, 1.0),
            ram_max: None,
        };
        me.prev_counters = kstat::read().ok();
        // The baseline's cost does not pace the first snapshot: `--once` answers after
        // `--interval`, whatever the table's size; the budget holds from the second on.
        me.ct.dump(|id, _| {
            me.prev_ids.insert(id);
        })?;
        Ok(me)
    }

    /// How long to wait before the next snapshot: `interval`, or longer when the last dump
    /// cost more CPU than the budget allows in that time (a 262,144-entry table costs ~0.5 s
    /// of CPU a dump on the build machine: at 5%, one snapshot every ~10 s).
    pub fn wait(&self, interval: Duration) -> Duration {
        interval.max(self.last_cost.div_f64(self.budget))
    }

    /// One snapshot of the table as it is now, for a one-off look (the doctor): one dump, no
    /// rates, nothing new.
    pub fn now(names: ServiceNames, limit: usize) -> io::Result<Snapshot> {
        let mut me = Self {
            ct: Conntrack::open()?,
            names,
            netns: kstat::netns_inode("self")?,
            cap: 65_536,
            limit,
            prev_ids: HashSet::new(),
            prev_counters: None,
            prev_at: Instant::now(),
            last_cost: Duration::ZERO,
            budget: 1.0,
            ram_max: None,
        };
        let mut s = me.sample()?;
        // A single look has no previous dump: nothing is new, and no rate is known.
        s.per_s = Rates::default();
        for rows in [
            &mut s.by_service,
            &mut s.by_backend,
            &mut s.by_client,
            &mut s.by_state,
        ] {
            for r in rows.iter_mut() {
                r.new = 0;
            }
        }
        Ok(s)
    }

    /// A snapshot now, with rates since the previous one.
    pub fn sample(&mut self) -> io::Result<Snapshot> {
        let counters = kstat::read().ok();
        let now = Instant::now();
        let elapsed = now
            .duration_since(self.prev_at)
            .max(Duration::from_millis(1));
        let mut service = Tally::<(SocketAddr, u8)>::new(self.cap);
        let mut backend = Tally::<(SocketAddr, u8)>::new(self.cap);
        let mut client = Tally::<IpAddr>::new(self.cap);
        let mut state = Tally::<&'static str>::new(self.cap);
        let mut ids = HashSet::with_capacity(self.prev_ids.len());
        let prev = &self.prev_ids;
        let mut new_total = 0u64;
        let cpu = thread_cpu();
        let entries = self.ct.dump(|id, e: Entry| {
            let new = !prev.contains(&id);
            new_total += u64::from(new);
            ids.insert(id);
            let p = e.orig.proto;
            service.add((SocketAddr::new(e.orig.dst, e.orig.dport), p), new);
            backend.add((SocketAddr::new(e.reply.src, e.reply.sport), p), new);
            client.add(e.orig.src, new);
            let st = match (p, e.tcp_state) {
                (6, Some(s)) => tcp_state_name(s),
                _ => proto_name(p),
            };
            state.add(st, new);
        })?;
        self.last_cost = thread_cpu().saturating_sub(cpu);
        self.prev_ids = ids;
        let secs = elapsed.as_secs_f64();
        let rate = |name: &str| {
            let (a, b) = (self.prev_counters.as_ref()?, counters.as_ref()?);
            Some(b.get(name)?.saturating_sub(*a.get(name)?) as f64 / secs)
        };
        let per_s = Rates {
            new: new_total as f64 / secs,
            invalid: rate("invalid"),
            drop: rate("drop"),
            early_drop: rate("early_drop"),
            insert_failed: rate("insert_failed"),
        };
        self.prev_counters = counters;
        self.prev_at = now;
        let max = sysctl("nf_conntrack_max");
        let groups = HashMap::from([
            (Grouping::Service, service.distinct()),
            (Grouping::Backend, backend.distinct()),
            (Grouping::Client, client.distinct()),
            (Grouping::State, state.distinct()),
        ]);
        let names = &self.names;
        let addr = |(a, p): &(SocketAddr, u8)| format!("{a}/{}", proto_name(*p));
        Ok(Snapshot {
            netns: self.netns,
            interval_s: (secs * 1000.0).round() / 1000.0,
            entries,
            max,
            fill: max
                .filter(|m| *m > 0)
                .map(|m| ((entries as f64 / m as f64) * 10_000.0).round() / 10_000.0),
            alert_fill: ALERT_FILL,
            ram_max: self.ram_max,
            per_s,
            dump_cpu_ms: (self.last_cost.as_secs_f64() * 1e4).round() / 10.0,
            counters_source: kstat::source(),
            by_service: service_rows(service, self.limit, names),
            by_backend: backend.rows(self.limit, |k| {
                (
                    addr(k),
                    names.name(None, Some(k.0), k.1).map(str::to_string),
                )
            }),
            by_client: client.rows(self.limit, |a| (a.to_string(), None)),
            by_state: state.rows(self.limit, |s| (s.to_string(), None)),
            groups,
            resets: None,
        })
    }
}

/// The table by Service alone, as `top`'s `by_service` counts it (the same dump, keys and
/// names), for `--metrics`: the entries the dump returned, and the `limit` heaviest groups of at
/// most `cap` distinct keys, then `other`.
pub fn by_service(
    ct: &Conntrack,
    names: &ServiceNames,
    cap: usize,
    limit: usize,
) -> io::Result<(u64, Vec<Group>)> {
    let mut service = Tally::<(SocketAddr, u8)>::new(cap);
    let entries = ct.dump(|_, e: Entry| {
        service.add(
            (SocketAddr::new(e.orig.dst, e.orig.dport), e.orig.proto),
            false,
        );
    })?;
    Ok((entries, service_rows(service, limit, names)))
}

/// A Service's group: `addr:port/proto`, named where kube-proxy's rules name the address.
fn service_rows(t: Tally<(SocketAddr, u8)>, limit: usize, names: &ServiceNames) -> Vec<Group> {
    t.rows(limit, |(a, p)| {
        (
            format!("{a}/{}", proto_name(*p)),
            names.name(Some(*a), None, *p).map(str::to_string),
        )
    })
}

fn sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_keeps_cap_keys_and_counts_the_rest_as_other() {
        let mut t = Tally::<u32>::new(2);
        for (k, new) in [
            (1, true),
            (1, false),
            (2, false),
            (3, true),
            (3, true),
            (1, false),
        ] {
            t.add(k, new);
        }
        assert_eq!(t.distinct(), 3);
        let rows = t.rows(10, |k| (k.to_string(), None));
        let got: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|g| (g.key.as_str(), g.entries, g.new))
            .collect();
        assert_eq!(got, [("1", 3, 1), ("2", 1, 0), ("other", 2, 2)]);
    }

    #[test]
    fn rows_are_heaviest_first_and_limited() {
        let mut t = Tally::<&str>::new(100);
        for k in ["b", "a", "c", "c", "b", "c"] {
            t.add(k, false);
        }
        let rows = t.rows(2, |k| (k.to_string(), None));
        let got: Vec<(&str, u64)> = rows.iter().map(|g| (g.key.as_str(), g.entries)).collect();
        assert_eq!(got, [("c", 3), ("b", 2), ("other", 1)]);
    }
}
