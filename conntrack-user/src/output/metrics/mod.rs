//! `--metrics ADDR:PORT`: Prometheus/OpenMetrics families at `/metrics`.
//!
//! Two sources, chosen per family so that every count stays exact whatever the event rate:
//!
//! - ct-trace's in-kernel counters (counted when the thing happens, before any budget, filter
//!   or ring buffer): resets by direction, table pressure, suppressed and lost records, and the
//!   total of INVALID verdicts. They are read when Prometheus scrapes, so a scrape is current.
//! - The reports the pipeline produced, for what only userspace knows: an INVALID verdict's
//!   fate and reason class, an attribution's cause and Service. Every INVALID record the
//!   kernel counted but did not send (event budget, full ring buffer, `--host`/`--port`) is
//!   counted under `hook="unknown", fate="unknown", reason="unknown"` from the kernel's own
//!   suppressed/lost/filtered counters, so the family's sum is the kernel's count.
//!
//! Every label has a bounded set of values (documented in README.md); Services beyond
//! [`MAX_SERVICES`] are counted as `service="other"`.
//!
//! Series node_exporter already has (`node_nf_conntrack_*`) are repeated only for the watched
//! namespace, labelled `netns` (`table`): node_exporter reads them only for its own namespace,
//! and ct-trace may watch a pod's.

pub mod http;
mod programs;
pub mod table;

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use conntrack_common::{counter::Role, Counter as K};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::event::ResetCause;
use crate::{event::Report, kernel::maps::Counters};

/// Distinct `service` label values of `ct_trace_attributed_resets_total`; beyond: `other`.
pub const MAX_SERVICES: usize = 256;

type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// What `ct_trace_build_info` says.
pub struct BuildInfo<'a> {
    pub version: &'a str,
    pub kernel: &'a str,
    /// Where INVALID verdicts come from (`netfilter`, `kprobe`, or `none`).
    pub mode: &'a str,
}

/// The families, and what is needed to keep the kernel-counter ones equal to the counters.
pub(crate) struct Metrics {
    registry: Registry,
    invalid: Family<Labels, Counter>,
    resets: Family<Labels, Counter>,
    attributed: Family<Labels, Counter>,
    strays: Family<Labels, Counter>,
    ct_events: Family<Labels, Counter>,
    table: table::TableFamilies,
    /// Scrapes waiting for the dump they started (see `table`).
    parked: Vec<http::Scrape>,
    suppressed: Family<Labels, Counter>,
    lost: Family<Labels, Counter>,
    services: HashSet<String>,
    /// The series of `invalid` by (hook, fate, reason class, flow): a bounded set of static
    /// words.
    invalid_series: HashMap<InvalidKey, Counter>,
    /// `enum sk_rst_reason` names by value (empty before 6.10).
    rst_names: HashMap<u32, String>,
    /// Records ct-trace could not decode (userspace's share of `lost`).
    pub(crate) undecodable: u64,
    programs: programs::ProgramFamilies,
}

type InvalidKey = (&'static str, &'static str, &'static str, &'static str);

/// The kernel counters behind each `(family, labels)` series that comes from them.
const INVALID_NOT_SENT: [K; 3] = [K::SuppressedInvalid, K::LostInvalid, K::FilteredInvalid];
const CT_EVENTS: [(&str, K); 2] = [("table_full", K::TableFull), ("midstream", K::Midstream)];
/// The counters of one role (conntrack-common's `counters!` table), with the record kind each is
/// about: the `kind` label of `ct_trace_suppressed_total` and `ct_trace_lost_total`.
fn of_role(want: fn(Role) -> bool) -> impl Iterator<Item = (&'static str, K)> {
    K::ALL
        .into_iter()
        .filter(move |c| want(c.role()))
        .filter_map(|c| Some((c.role().kind()?, c)))
}

fn suppressed_counters() -> impl Iterator<Item = (&'static str, K)> {
    of_role(|r| matches!(r, Role::Suppressed(_)))
}

fn lost_counters() -> impl Iterator<Item = (&'static str, K)> {
    of_role(|r| matches!(r, Role::Lost(_)))
}

impl Metrics {
    /// `programs`: (program, attach point) of every program attached.
    pub(crate) fn new(
        build: &BuildInfo,
        programs: &[(&'static str, String)],
        rst_names: HashMap<u32, String>,
        costs: crate::kernel::progstats::ProgramSet,
        table: &table::TableConfig,
    ) -> Self {
        let mut registry = Registry::default();
        let invalid = Family::<Labels, Counter>::default();
        registry.register(
            "ct_trace_invalid_packets",
            "Packets conntrack marked INVALID in the watched network namespace, by hook, fate \
             (passed: went on without its NAT reversed), reason class and flow (tracked: the \
             packet belonged to a flow conntrack was tracking; untracked: scans and strays; \
             unknown: not looked up). The sum equals the kernel's `invalid` counter; records \
             the kernel counted but did not send are under hook, fate, reason and flow `unknown`",
            invalid.clone(),
        );
        let resets = Family::<Labels, Counter>::default();
        registry.register(
            "ct_trace_resets",
            "TCP resets sent and received, every network namespace, by the kernel's reason for \
             sending it (enum sk_rst_reason, 6.10+, lower case without its prefix; `unknown` \
             where the kernel gives none, and for every reset received)",
            resets.clone(),
        );
        let attributed = Family::<Labels, Counter>::default();
        registry.register(
            "ct_trace_attributed_resets",
            "Resets ct-trace matched to the packet that caused them, by cause (invalid_packet, \
             entry_lost) and Service (namespace/name:port from kube-proxy's rules, else the \
             Service address; `other` beyond 256 Services)",
            attributed.clone(),
        );
        let strays = Family::<Labels, Counter>::default();
        registry.register(
            "ct_trace_stray_resets",
            "Resets of packets conntrack let through without NAT that belonged to no flow it \
             was tracking (port scans, strays of long-gone flows), by what conntrack did with the \
             packet (invalid, midstream): harmless, never attributed to a Service",
            strays.clone(),
        );
        let ct_events = Family::<Labels, Counter>::default();
        registry.register(
            "ct_trace_conntrack_events",
            "Table pressure and lost entries: table_full (a new flow refused), evicted (an \
             unassured entry dropped for room), midstream (a flow picked up without its entry)",
            ct_events.clone(),
        );
        let table = table::TableFamilies::register(&mut registry, table);
        let suppressed = Family::<Labels, Counter>::default();
        registry.register(
            "ct_trace_events_suppressed",
            "Records not sent because the event budget of the second was spent (counted, not \
             lost), by record kind",
            suppressed.clone(),
        );
        let lost = Family::<Labels, Counter>::default();
        registry.register(
            "ct_trace_events_lost",
            "Records lost (ring buffer full, unreadable packet, undecodable), by kind",
            lost.clone(),
        );
        let attached = Family::<Labels, Gauge>::default();
        registry.register(
            "ct_trace_program_attached",
            "The eBPF programs attached, by program and attach point (1)",
            attached.clone(),
        );
        for (program, at) in programs {
            attached
                .get_or_create(&labels([("program", program), ("attach_point", at)]))
                .set(1);
        }
        let info = Family::<Labels, Gauge>::default();
        registry.register(
            "ct_trace_build_info",
            "ct-trace's version, the kernel release and where INVALID verdicts come from",
            info.clone(),
        );
        info.get_or_create(&labels([
            ("version", build.version),
            ("kernel", build.kernel),
            ("mode", build.mode),
        ]))
        .set(1);
        let program_costs = programs::ProgramFamilies::register(&mut registry, costs);
        let m = Self {
            registry,
            invalid,
            resets,
            attributed,
            strays,
            ct_events,
            table,
            parked: Vec::new(),
            suppressed,
            lost,
            services: HashSet::new(),
            invalid_series: HashMap::new(),
            rst_names,
            undecodable: 0,
            programs: program_costs,
        };
        // Every series of a bounded label set exists from the start (at 0), so that `increase()`
        // sees the first event of each.
        for d in ["sent", "received"] {
            let _ = m
                .resets
                .get_or_create(&labels([("direction", d), ("reason", "unknown")]));
        }
        for (k, _) in CT_EVENTS {
            let _ = m.ct_events.get_or_create(&labels([("kind", k)]));
        }
        for p in ["invalid", "midstream"] {
            let _ = m.strays.get_or_create(&labels([("packet", p)]));
        }
        let _ = m.ct_events.get_or_create(&labels([("kind", "evicted")]));
        for (k, _) in suppressed_counters() {
            let _ = m.suppressed.get_or_create(&labels([("kind", k)]));
        }
        for (k, _) in lost_counters() {
            let _ = m.lost.get_or_create(&labels([("kind", k)]));
        }
        let _ = m.lost.get_or_create(&labels([("kind", "undecodable")]));
        let _ = m.invalid.get_or_create(&not_sent_labels());
        m
    }

    /// Counts one report as it leaves the pipeline, before `--kind`, `-c` or `--summary`.
    pub(crate) fn report(&mut self, r: &Report) {
        match r {
            Report::Invalid(v) => {
                // Every label is a static word: the series is found without allocating, which
                // matters in a storm of verdicts.
                let flow = match v.tracked {
                    Some(true) => "tracked",
                    Some(false) => "untracked",
                    None => "unknown",
                };
                let key = (
                    v.packet.hook.name(),
                    v.fate.name(),
                    v.reason.class().name(),
                    flow,
                );
                let invalid = &self.invalid;
                self.invalid_series
                    .entry(key)
                    .or_insert_with(|| {
                        invalid
                            .get_or_create(&labels([
                                ("hook", key.0),
                                ("fate", key.1),
                                ("reason", key.2),
                                ("flow", key.3),
                            ]))
                            .clone()
                    })
                    .inc();
            }
            Report::RstSent(r) if r.cause == Some(ResetCause::Stray) => {
                let packet = if r.caused_by_invalid {
                    "invalid"
                } else {
                    "midstream"
                };
                self.strays
                    .get_or_create(&labels([("packet", packet)]))
                    .inc();
            }
            Report::Attribution(a) => {
                // kube-proxy's name for the Service, else its address, else (the entry could
                // not be looked up in time) `unknown`.
                let service = a
                    .service_name
                    .as_deref()
                    .map(str::to_string)
                    .or_else(|| a.service.map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown".to_string());
                let service = if self.services.contains(&service) {
                    service
                } else if self.services.len() < MAX_SERVICES {
                    self.services.insert(service.clone());
                    service
                } else {
                    "other".to_string()
                };
                self.attributed
                    .get_or_create(&vec![
                        ("cause", a.cause.name().to_string()),
                        ("service", service),
                    ])
                    .inc();
            }
            Report::Evicted(_) => {
                self.ct_events
                    .get_or_create(&labels([("kind", "evicted")]))
                    .inc();
            }
            _ => {}
        }
    }

    /// Brings the kernel-counter series up to the counters' values, and the gauges to now.
    pub(crate) fn refresh(&self, counters: &Counters, entries: Option<u64>, limit: Option<u64>) {
        let not_sent: u64 = INVALID_NOT_SENT.iter().map(|c| counters.read(*c)).sum();
        raise(&self.invalid.get_or_create(&not_sent_labels()), not_sent);
        // Sent: exact per reason from the kernel's slots (they sum to `rst_sent`); received
        // resets have no reason in the kernel.
        let mut sent = std::collections::BTreeMap::<String, u64>::new();
        for (slot, n) in counters.rst_reasons() {
            *sent.entry(self.rst_reason(slot)).or_default() += n;
        }
        for (reason, n) in sent {
            raise(
                &self
                    .resets
                    .get_or_create(&vec![("direction", "sent".into()), ("reason", reason)]),
                n,
            );
        }
        raise(
            &self
                .resets
                .get_or_create(&labels([("direction", "received"), ("reason", "unknown")])),
            counters.read(K::RstReceived),
        );
        for (k, c) in CT_EVENTS {
            raise(
                &self.ct_events.get_or_create(&labels([("kind", k)])),
                counters.read(c),
            );
        }
        for (k, c) in suppressed_counters() {
            raise(
                &self.suppressed.get_or_create(&labels([("kind", k)])),
                counters.read(c),
            );
        }
        for (k, c) in lost_counters() {
            raise(
                &self.lost.get_or_create(&labels([("kind", k)])),
                counters.read(c),
            );
        }
        raise(
            &self.lost.get_or_create(&labels([("kind", "undecodable")])),
            self.undecodable,
        );
        self.table.refresh(entries, limit);
        self.programs.refresh();
    }

    /// The label of a reason slot: `no_socket` for `SK_RST_REASON_NO_SOCKET`; `unknown` for
    /// the last slot, or a value this kernel's BTF does not name.
    fn rst_reason(&self, slot: u32) -> String {
        if slot == conntrack_common::RST_REASON_SLOTS - 1 {
            return "unknown".into();
        }
        match self.rst_names.get(&slot) {
            Some(n) => n
                .strip_prefix("SK_RST_REASON_")
                .unwrap_or(n)
                .to_ascii_lowercase(),
            None => "unknown".into(),
        }
    }

    /// Answers a scrape (after [`Self::refresh`]): now, or, when it started a dump of the table,
    /// once [`Self::poll`] has the dump or gave up waiting for it.
    pub(crate) fn answer(&mut self, reply: http::Scrape, now: Instant) {
        if self.table.dump_wanted(now) {
            self.parked.push(reply);
        } else {
            let _ = reply.send(self.encode());
        }
    }

    /// On the event loop's tick: takes a finished dump in and answers the scrapes that waited
    /// for it (or for too long).
    pub(crate) fn poll(&mut self, now: Instant) {
        if !self.table.poll(now) && !self.parked.is_empty() {
            let text = self.encode();
            for reply in self.parked.drain(..) {
                let _ = reply.send(text.clone());
            }
        }
    }

    /// The OpenMetrics text of every family.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn not_sent_labels() -> Labels {
    labels([
        ("hook", "unknown"),
        ("fate", "unknown"),
        ("reason", "unknown"),
        ("flow", "unknown"),
    ])
}

/// Counters only go up: raise `c` to the kernel counter's value.
fn raise(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}
