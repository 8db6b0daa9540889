//! Who fills the conntrack table: one namespace's table read through ctnetlink and broken down
//! by Service, backend, client and state, with the kernel's pressure counters as rates. What
//! `ct-trace top` shows (`output::top` renders it).
//!
//! One dump at the start (what `conntrack -L` reads), then the table is kept by ctnetlink's
//! events (`model`): NEW adds an entry to its groups, an UPDATE with a TCP state moves it to
//! that state's group, DESTROY removes it. The subscription comes before the dump, and the
//! events queued while it ran are applied after it, in order: an entry the dump listed and then
//! destroyed is removed by its destroy; one created after the dump passed its place is added by
//! its NEW; a state change during the dump ends as the last event says, which is the state now.
//! Events of entries the dump never listed (gone before it reached them) change nothing.
//!
//! Never wrong silently: an overflow of the socket (ENOBUFS: the kernel dropped events) or an
//! event that cannot be read throws away what is queued and reads a fresh dump (`resyncs`).
//! Entries created before top listened send no events when `nf_conntrack_events` is 2 (the
//! default since 5.19: see `netlink::events`): while some remain (`unwatched`), dumps check
//! the table again within `--cpu-budget`, and sooner when the model holds more entries than the
//! kernel counts (`nf_conntrack_count`: an entry ended without an event).
//!
//! Memory is bounded whatever the table size: ~30 bytes an entry (`model`), and at most `cap`
//! keys per grouping (the rest are counted under `other`).

mod model;

use std::{
    collections::HashMap,
    hash::Hash,
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

use self::model::Model;
use crate::node::{
    caused, kstat,
    netlink::{Conntrack, CtEvents, Entry, Got},
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
    /// Entries created since the previous snapshot (NEW events) that the group still holds.
    pub new: u64,
}

/// The kernel's pressure counters over the interval, per second.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Entries created (NEW events; with `nf_conntrack_events=0`, entries a dump found that the
    /// previous one did not).
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
    /// Entries in the table (the dump at the start, kept by the events since).
    pub entries: u64,
    /// `nf_conntrack_max`, and the fill (entries / max).
    pub max: Option<u64>,
    pub fill: Option<f64>,
    /// The fill at which the write-ups (and ct-trace's alert) call the table high: 0.75.
    pub alert_fill: f64,
    /// The write-ups' size for this node's RAM (RAM / 16384 / (word bits / 32)).
    pub ram_max: Option<u64>,
    pub per_s: Rates,
    /// CPU time (user + system, the sampling thread) the table cost since the previous snapshot
    /// (since the start's dump for the first): its events, and any dump taken in between.
    pub dump_cpu_ms: f64,
    /// Full dumps taken again because the events could not be trusted (an overflow, an
    /// unreadable event), since top started.
    pub resyncs: u64,
    /// Full dumps taken to check the entries that send no events, since top started.
    pub checks: u64,
    /// Entries known from a dump only (created before top listened): their state and their
    /// presence are as of the last dump.
    pub unwatched: u64,
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

    fn rows(self, limit: usize, show: impl Fn(&K) -> (String, Option<String>)) -> Vec<Group> {
        let groups = self
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
        rows(groups, self.other, limit)
    }
}

/// Heaviest first (ties by key, as shown), `limit` of them, then `other` (`other`'s counts and
/// the rows left out).
fn rows(mut rows: Vec<Group>, other: (u64, u64), limit: usize) -> Vec<Group> {
    rows.sort_by(|a, b| b.entries.cmp(&a.entries).then_with(|| a.key.cmp(&b.key)));
    let mut rest = other;
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

/// Samples one namespace's table: the model the events keep, and the counters of the previous
/// sample for the rates.
pub struct Sampler {
    ct: Conntrack,
    /// None with `nf_conntrack_events=0` (the kernel sends no event) and for a one-off look:
    /// then every snapshot is a dump, within the budget.
    events: Option<CtEvents>,
    model: Model,
    names: ServiceNames,
    netns: u32,
    limit: usize,
    prev_counters: Option<HashMap<String, u64>>,
    prev_at: Instant,
    /// The share of one core dumps may take, the CPU the last one cost and when it ended.
    budget: f64,
    dump_cost: Duration,
    dumped_at: Instant,
    /// The sampling thread's CPU at the previous snapshot (taken on that thread: the terminal
    /// view samples on a thread of its own).
    cpu_at: Option<Duration>,
    resyncs: u64,
    checks: u64,
    /// The events cannot be trusted (an overflow, an unreadable one): resync.
    broken: bool,
    /// The model holds more entries than the kernel counts: some ended without an event.
    suspect: bool,
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

/// The event socket's receive buffer: a burst of events while a dump of a large table runs
/// (~0.5 s for 262,144 entries) must fit (~1 KiB an event in the kernel's accounting).
/// `CT_TRACE_TOP_RCVBUF` (bytes, not documented: for the tests' forced overflow) overrides it.
fn rcvbuf() -> i32 {
    std::env::var("CT_TRACE_TOP_RCVBUF")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32 << 20)
}

impl Sampler {
    fn open(
        names: ServiceNames,
        limit: usize,
        cap: usize,
        budget: f64,
        events: bool,
    ) -> io::Result<Self> {
        // Subscribed before the first dump: no change falls between the two.
        let events = match events && sysctl("nf_conntrack_events") != Some(0) {
            true => Some(CtEvents::open(rcvbuf())?),
            false => None,
        };
        Ok(Self {
            ct: Conntrack::open()?,
            events,
            model: Model::new(cap),
            names,
            netns: kstat::netns_inode("self")?,
            limit,
            prev_counters: None,
            prev_at: Instant::now(),
            budget: budget.clamp(0.001, 1.0),
            dump_cost: Duration::ZERO,
            dumped_at: Instant::now(),
            cpu_at: None,
            resyncs: 0,
            checks: 0,
            broken: false,
            suspect: false,
            ram_max: None,
        })
    }

    /// Subscribes to the events and reads the table once (the baseline of the first snapshot's
    /// rates). `limit`: groups shown per grouping; `cap`: distinct keys kept per grouping;
    /// `budget`: the share of one core the dumps may take (0.05: 5%).
    pub fn start(names: ServiceNames, limit: usize, cap: usize, budget: f64) -> io::Result<Self> {
        let mut me = Self::open(names, limit, cap, budget, true)?;
        me.prev_counters = kstat::read().ok();
        me.dump(false)?;
        me.settle()?;
        me.model.reset_new();
        me.prev_at = Instant::now();
        Ok(me)
    }

    /// One snapshot of the table as it is now, for a one-off look (the doctor): one dump, no
    /// events, no rates, nothing new.
    pub fn now(names: ServiceNames, limit: usize) -> io::Result<Snapshot> {
        let mut me = Self::open(names, limit, 65_536, 1.0, false)?;
        let cpu = thread_cpu();
        me.dump(false)?;
        me.cpu_at = Some(cpu);
        let mut s = me.snapshot(None);
        // A single look has no previous dump: no rate is known.
        s.per_s = Rates::default();
        Ok(s)
    }

    /// One dump, reconciled with the model: entries it lists are added (`new`: counted as new)
    /// or take its state, entries it does not list are removed.
    fn dump(&mut self, new: bool) -> io::Result<()> {
        let cpu = thread_cpu();
        self.model.begin_dump();
        let model = &mut self.model;
        self.ct.dump(|id, e: Entry| model.dumped(id, &e, new))?;
        self.model.end_dump();
        self.dump_cost = thread_cpu().saturating_sub(cpu);
        self.dumped_at = Instant::now();
        Ok(())
    }

    /// Applies every queued event, without waiting; resyncs when they cannot be trusted.
    /// Returns the fewest entries the model held meanwhile (for the count check).
    fn settle(&mut self) -> io::Result<u64> {
        for _ in 0..10 {
            let mut least = self.model.len();
            if let Some(ev) = &mut self.events {
                let model = &mut self.model;
                loop {
                    match ev.recv(false, |e| {
                        model.apply(&e);
                        least = least.min(model.len());
                    })? {
                        Got::Some => {}
                        Got::Empty => break,
                        Got::Overflowed | Got::Unreadable => {
                            self.broken = true;
                            break;
                        }
                    }
                }
            }
            if !self.broken {
                return Ok(least);
            }
            self.resync()?;
        }
        Err(io::Error::other(
            "conntrack's events overflow faster than the table can be dumped",
        ))
    }

    /// The events were lost or unreadable: what is queued is older than the dump that follows
    /// (applying it after the dump could take an entry back to an older state), so it is
    /// thrown away; then a fresh dump, and the events queued since it started are applied by
    /// the caller.
    fn resync(&mut self) -> io::Result<()> {
        self.broken = false;
        self.resyncs += 1;
        if let Some(ev) = &mut self.events {
            ev.discard()?;
        }
        self.dump(false)
    }

    /// Waits `d` while keeping the table (every event as it comes); false when `stopped` says
    /// to end.
    pub fn pass(&mut self, d: Duration, stopped: impl Fn() -> bool) -> io::Result<bool> {
        if self.cpu_at.is_none() {
            self.cpu_at = Some(thread_cpu());
        }
        let until = Instant::now() + d;
        loop {
            if stopped() {
                return Ok(false);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(true);
            }
            let Some(ev) = &mut self.events else {
                std::thread::sleep(left.min(Duration::from_millis(50)));
                continue;
            };
            // The receive waits at most 50 ms.
            let model = &mut self.model;
            match ev.recv(true, |e| model.apply(&e))? {
                Got::Some | Got::Empty => {}
                Got::Overflowed | Got::Unreadable => {
                    self.broken = true;
                    self.settle()?;
                }
            }
        }
    }

    /// A snapshot now, with rates since the previous one.
    pub fn sample(&mut self) -> io::Result<Snapshot> {
        let counters = kstat::read().ok();
        self.settle()?;
        if self.events.is_some() {
            // The count check: the kernel's count, read before the events queued so far are
            // applied, covers every entry whose NEW they hold (an entry is counted from its
            // allocation) and still every entry whose DESTROY comes after it (it is uncounted
            // when freed, after its event): so the model can hold more entries than it at no
            // point of the drain, unless entries ended silently.
            if let Some(count) = sysctl("nf_conntrack_count") {
                let least = self.settle()?;
                self.suspect |= least > count;
            }
        }
        let due = self.events.is_none() || self.model.unwatched() > 0 || self.suspect;
        if due && self.dumped_at.elapsed() >= self.dump_cost.div_f64(self.budget) {
            let new = self.events.is_none();
            self.dump(new)?;
            if !new {
                self.checks += 1;
            }
            self.suspect = false;
            self.settle()?;
        }
        Ok(self.snapshot(counters))
    }

    /// The snapshot of the model as it is; new entries count from 0 again.
    fn snapshot(&mut self, counters: Option<HashMap<String, u64>>) -> Snapshot {
        let now = Instant::now();
        let secs = now
            .duration_since(self.prev_at)
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let rate = |name: &str| {
            let (a, b) = (self.prev_counters.as_ref()?, counters.as_ref()?);
            Some(b.get(name)?.saturating_sub(*a.get(name)?) as f64 / secs)
        };
        let per_s = Rates {
            new: self.model.new as f64 / secs,
            invalid: rate("invalid"),
            drop: rate("drop"),
            early_drop: rate("early_drop"),
            insert_failed: rate("insert_failed"),
        };
        self.prev_counters = counters;
        self.prev_at = now;
        let cpu = thread_cpu();
        let cost = cpu.saturating_sub(self.cpu_at.unwrap_or(cpu));
        self.cpu_at = Some(cpu);
        let max = sysctl("nf_conntrack_max");
        let m = &self.model;
        let entries = m.len();
        let groups = HashMap::from([
            (Grouping::Service, m.service.distinct()),
            (Grouping::Backend, m.backend.distinct()),
            (Grouping::Client, m.client.distinct()),
            (Grouping::State, m.state.distinct()),
        ]);
        let names = &self.names;
        let s = Snapshot {
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
            dump_cpu_ms: (cost.as_secs_f64() * 1e4).round() / 10.0,
            resyncs: self.resyncs,
            checks: self.checks,
            unwatched: m.unwatched(),
            counters_source: kstat::source(),
            by_service: m.service.rows(self.limit, |(a, p)| {
                names.name(Some(*a), None, *p).map(str::to_string)
            }),
            by_backend: m.backend.rows(self.limit, |(a, p)| {
                names.name(None, Some(*a), *p).map(str::to_string)
            }),
            by_client: m.client.rows(self.limit, |_| None),
            by_state: m.state.rows(self.limit, |_| None),
            groups,
            resets: None,
        };
        self.model.reset_new();
        s
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
mod tests;
