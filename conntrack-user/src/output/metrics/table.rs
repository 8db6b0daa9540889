//! The watched network namespace's conntrack table, labelled with its inode (`netns`): its
//! entries and limit, the kernel's statistics counters of the namespace, and its entries by
//! Service.
//!
//! The statistics are read at each scrape through `node::kstat` (procfs, or ctnetlink where
//! the procfs file does not exist), so a scrape is current. The entries by Service need a dump
//! of the whole table (what `conntrack -L` and `ct-trace top` read), which on a large table
//! costs a good part of a second of CPU: it runs on a thread of its own, at most once per
//! [`DUMP_EVERY`], and only when a scrape finds the last dump older than that (no scrapes, no
//! dumps). That scrape's answer waits for the new dump at most [`DUMP_WAIT`], on the event
//! loop's timer, never blocking the loop or the HTTP server; past it, the previous dump's values
//! are served.

use std::{
    collections::BTreeMap,
    io,
    sync::mpsc::{self, Receiver, SyncSender, TryRecvError},
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{raise, Labels};
use crate::node::{
    kstat,
    netlink::Conntrack,
    services::ServiceLookup,
    top::{self, Group},
};

/// At most one dump of the table per this long (README, Metrics).
pub const DUMP_EVERY: Duration = Duration::from_secs(5);
/// How long a scrape that started a dump waits for it before the previous values are served.
pub const DUMP_WAIT: Duration = Duration::from_secs(2);
/// Distinct Services a dump keeps apart before the rest are `other` anyway: bounds the dump's
/// memory whatever the table holds (the same cap as the doctor's look).
const DUMP_CAP: usize = 65_536;

/// The kernel's statistics exported, by the name of their family (`ct_trace_conntrack_stat_*`)
/// and the name `kstat` reads them under (`/proc/net/stat/nf_conntrack`'s header: `error` is
/// printed there as `icmp_error`).
pub const STATS: [(&str, &str); 9] = [
    ("found", "found"),
    ("invalid", "invalid"),
    ("ignore", "ignore"),
    ("insert", "insert"),
    ("insert_failed", "insert_failed"),
    ("drop", "drop"),
    ("early_drop", "early_drop"),
    ("error", "icmp_error"),
    ("search_restart", "search_restart"),
];

/// What the table families need to know of the run.
pub struct TableConfig {
    /// The watched namespace's inode (what the summary and `doctor` call `netns`).
    pub netns: u32,
    /// Services shown by `ct_trace_conntrack_entries_by_service`; the rest are `other`.
    pub top_services: usize,
    /// kube-proxy's names for Service addresses, kept current elsewhere.
    pub names: ServiceLookup,
}

/// A dump's result: entries by Service, heaviest first, then `other`.
type DumpResult = io::Result<Vec<Group>>;

/// The thread that dumps the table when asked; it ends when this is dropped.
struct Dumper {
    ask: SyncSender<()>,
    done: Receiver<DumpResult>,
    /// When the dump in flight was asked for.
    in_flight: Option<Instant>,
    /// When the last finished dump was asked for.
    last: Option<Instant>,
    /// A failure was logged as a warning (the next ones go to debug).
    warned: bool,
}

impl Dumper {
    fn start(cfg: &TableConfig) -> io::Result<Self> {
        let (ask, asked) = mpsc::sync_channel::<()>(1);
        let (tell, done) = mpsc::sync_channel(1);
        let (names, top) = (cfg.names.clone(), cfg.top_services);
        std::thread::Builder::new()
            .name("ct-metrics-dump".into())
            .spawn(move || {
                // Opened here, in the process's (the watched) namespace, as every thread is.
                let ct = Conntrack::open();
                while asked.recv().is_ok() {
                    let r = match &ct {
                        Ok(ct) => top::by_service(ct, &names.snapshot(), DUMP_CAP, top)
                            .map(|(_, rows)| rows),
                        Err(e) => Err(io::Error::new(e.kind(), format!("ctnetlink: {e}"))),
                    };
                    if tell.send(r).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            ask,
            done,
            in_flight: None,
            last: None,
            warned: false,
        })
    }

    /// Whether a scrape now should wait for a dump: one is in flight, or the last is older
    /// than [`DUMP_EVERY`] and a new one was asked for.
    fn wanted(&mut self, now: Instant) -> bool {
        if self.in_flight.is_some() {
            return true;
        }
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < DUMP_EVERY)
        {
            return false;
        }
        match self.ask.try_send(()) {
            Ok(()) => {
                self.in_flight = Some(now);
                true
            }
            // Full cannot happen (one ask at a time); disconnected: the thread is gone.
            Err(_) => false,
        }
    }

    /// The finished dump, if one came in.
    fn finished(&mut self) -> Option<DumpResult> {
        match self.done.try_recv() {
            Ok(r) => {
                self.last = self.in_flight.take();
                Some(r)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.in_flight = None;
                None
            }
        }
    }
}

pub(super) struct TableFamilies {
    netns: Labels,
    entries: Family<Labels, Gauge>,
    limit: Family<Labels, Gauge>,
    stats: Vec<(&'static str, Family<Labels, Counter>)>,
    by_service: Family<Labels, Gauge>,
    dumper: Option<Dumper>,
}

impl TableFamilies {
    pub(super) fn register(registry: &mut Registry, cfg: &TableConfig) -> Self {
        let f = Self {
            netns: vec![("netns", cfg.netns.to_string())],
            entries: Family::default(),
            limit: Family::default(),
            stats: STATS.iter().map(|(_, k)| (*k, Family::default())).collect(),
            by_service: Family::default(),
            dumper: Dumper::start(cfg)
                .map_err(|e| log::warn!("metrics: no entries by Service: {e}"))
                .ok(),
        };
        registry.register(
            "ct_trace_conntrack_entries",
            "Conntrack entries in the watched network namespace (netns: its inode)",
            f.entries.clone(),
        );
        registry.register(
            "ct_trace_conntrack_entries_limit",
            "nf_conntrack_max, the limit of the watched network namespace's entries",
            f.limit.clone(),
        );
        for ((name, kernel), (_, family)) in STATS.iter().zip(&f.stats) {
            registry.register(
                format!("ct_trace_conntrack_stat_{name}"),
                format!(
                    "The kernel's conntrack statistics counter `{kernel}` of the watched network \
                     namespace, summed over the CPUs (/proc/net/stat/nf_conntrack, or ctnetlink \
                     where that file does not exist); absent where the kernel does not report it"
                ),
                family.clone(),
            );
        }
        registry.register(
            "ct_trace_conntrack_entries_by_service",
            "Conntrack entries of the watched network namespace by Service (the address and \
             port the client asked for, named namespace/name:port where kube-proxy's rules \
             name it, else addr:port/proto): the --metrics-top-services heaviest, the rest \
             summed under `other`. From a dump of the table at most every 5 s",
            f.by_service.clone(),
        );
        f
    }

    /// The gauges and the kernel's counters as they are now.
    pub(super) fn refresh(&self, entries: Option<u64>, limit: Option<u64>) {
        // -1: not known (no reading yet); a gauge has no "absent".
        let gauge = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        self.entries.get_or_create(&self.netns).set(gauge(entries));
        self.limit.get_or_create(&self.netns).set(gauge(limit));
        match kstat::read() {
            Ok(stats) => {
                for (kernel, family) in &self.stats {
                    if let Some(v) = stats.get(*kernel) {
                        raise(&family.get_or_create(&self.netns), *v);
                    }
                }
            }
            Err(e) => log::debug!("metrics: conntrack statistics: {e}"),
        }
    }

    /// Whether a scrape now waits for a dump (see the module docs).
    pub(super) fn dump_wanted(&mut self, now: Instant) -> bool {
        self.dumper.as_mut().is_some_and(|d| d.wanted(now))
    }

    /// Takes a finished dump in; returns whether scrapes waiting for a dump should still wait
    /// (the dump in flight is not in, and [`DUMP_WAIT`] has not passed since it was asked).
    pub(super) fn poll(&mut self, now: Instant) -> bool {
        let Some(d) = self.dumper.as_mut() else {
            return false;
        };
        match d.finished() {
            Some(Ok(rows)) => {
                self.set_services(rows);
                false
            }
            Some(Err(e)) => {
                if std::mem::replace(&mut d.warned, true) {
                    log::debug!("metrics: entries by Service: {e}");
                } else {
                    log::warn!("metrics: entries by Service: {e}");
                }
                self.by_service.clear();
                false
            }
            None => d
                .in_flight
                .is_some_and(|t| now.duration_since(t) < DUMP_WAIT),
        }
    }

    /// Replaces every series of `by_service`: a Service gone from the top has no series left.
    fn set_services(&self, rows: Vec<Group>) {
        let by_label = service_labels(rows);
        self.by_service.clear();
        for (service, n) in by_label {
            let mut l = self.netns.clone();
            l.push(("service", service));
            self.by_service
                .get_or_create(&l)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// A dump's groups by `service` label: the name where kube-proxy gives one (two addresses of one
/// Service, a cluster IP and an external IP, add up), else the address; `other` always, at 0
/// when every group is shown, so that the series does not come and go.
pub(super) fn service_labels(rows: Vec<Group>) -> BTreeMap<String, u64> {
    let mut by_label = BTreeMap::from([("other".to_string(), 0)]);
    for g in rows {
        *by_label.entry(g.name.unwrap_or(g.key)).or_default() += g.entries;
    }
    by_label
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(key: &str, name: Option<&str>, entries: u64) -> Group {
        Group {
            key: key.into(),
            name: name.map(str::to_string),
            entries,
            new: 0,
        }
    }

    #[test]
    fn services_are_labelled_by_name_else_address_and_other_is_always_there() {
        let got = service_labels(vec![
            group("10.96.0.10:80/tcp", Some("shop/web:http"), 30),
            group("192.0.2.7:80/tcp", Some("shop/web:http"), 2),
            group("10.96.0.11:80/tcp", None, 12),
        ]);
        let want = BTreeMap::from([
            ("10.96.0.11:80/tcp".to_string(), 12),
            ("other".into(), 0),
            ("shop/web:http".into(), 32),
        ]);
        assert_eq!(got, want);
        let got = service_labels(vec![
            group("10.96.0.10:80/tcp", None, 30),
            group("other", None, 12),
        ]);
        assert_eq!(got["other"], 12);
    }

    #[test]
    fn every_kernel_counter_is_one_kstat_reads() {
        let header = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n00000001  00000000 00000002 00000000 00000003 00000000 00000000 00000000 00000004 00000000 00000000 00000000 00000005  00000000 00000000 00000000 00000006\n";
        let parsed = conntrack_common::kstat::parse(header).unwrap();
        for (_, kernel) in STATS {
            assert!(parsed.contains_key(kernel), "{kernel}");
        }
        assert_eq!(parsed["icmp_error"], 5);
    }
}
