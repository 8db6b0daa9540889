//! What ct-trace prints: one [`Report`] per event, as a JSON object or an aligned text line.
//! Field names are the public interface (documented in README.md); add, never rename.

use std::{fmt::Write as _, net::IpAddr, sync::Arc};

use serde::Serialize;

/// The packet that made the kernel send a reset, as it arrived.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Trigger {
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub len: u16,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ResetReport {
    pub time: Time,
    pub netns: u32,
    /// The reset's direction: from the host that sent it to its peer.
    pub src: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
    pub flags: Option<TcpFlags>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    /// `enum sk_rst_reason` name (6.10+), or why it is not known.
    pub reason: Option<Arc<str>>,
    pub iface: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// Whether a socket owned the triggering packet (false: "no socket", the ct-trace case).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<bool>,
    /// True when the triggering packet had been marked INVALID by conntrack on its way.
    pub caused_by_invalid: bool,
    /// What conntrack did to the triggering packet on its way, when it let it through without
    /// its NAT: `invalid_packet` (marked INVALID) or `entry_lost` (picked up mid-stream after
    /// its flow's entry went), each with an `attribution`; or `stray` when nothing shows that
    /// the packet belonged to a flow conntrack was tracking (a port scan, a segment of a
    /// long-gone flow): harmless, not attributed, shown only with `--resets all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<ResetCause>,
    /// `skipped` on a `stray` whose entry lookup could not be made in time: nothing showed the
    /// flow was tracked, so nothing is blamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<Enrichment>,
}

/// One direction's TCP window as conntrack tracks it (`struct ip_ct_tcp_state`,
/// include/net/netfilter/nf_conntrack_tcp.h): the sequence numbers it will accept.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct WindowReport {
    /// Highest sequence number sent in this direction (`td_end`).
    pub td_end: u32,
    /// Highest sequence number this direction may send: the peer's ack plus its window
    /// (`td_maxend`; a SEQ over it is "over the window of the receiver").
    pub td_maxend: u32,
    /// Largest window this direction's peer announced (`td_maxwin`).
    pub td_maxwin: u32,
    /// Highest ack this direction sent (`td_maxack`).
    pub td_maxack: u32,
    /// Window scale (`td_scale`).
    pub td_scale: u8,
    /// `IP_CT_TCP_FLAG_BE_LIBERAL` set for this direction (e.g. a connection picked up
    /// mid-stream): window checks are off.
    pub liberal: bool,
}

/// A conntrack entry: from the kernel at the moment it refused the packet (`source: kernel`,
/// with both windows), or from a ctnetlink lookup just after (`source: ctnetlink`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConntrackReport {
    /// `kernel` or `ctnetlink`.
    pub source: &'static str,
    /// The direction the packet travelled in.
    pub direction: Direction,
    pub orig_src: IpAddr,
    pub orig_sport: u16,
    pub orig_dst: IpAddr,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
    pub reply_sport: u16,
    pub reply_dst: IpAddr,
    pub reply_dport: u16,
    pub tcp_state: Option<&'static str>,
    pub assured: bool,
    /// The window of the original direction (client -> service) and of the reply direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_window: Option<WindowReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_window: Option<WindowReport>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InvalidReport {
    pub time: Time,
    pub netns: u32,
    pub hook: NfHook,
    pub in_iface: Option<Arc<str>>,
    pub out_iface: Option<Arc<str>>,
    pub proto: u8,
    pub src: IpAddr,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    pub flags: Option<TcpFlags>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub len: Option<u16>,
    /// Conntrack's own words for the refusal, as its log line would print them (e.g. "SEQ is
    /// over upper bound 1234 (over the window of the receiver)"), or `unknown (why)`.
    pub reason: ReasonText,
    /// By how many sequence numbers the packet missed the bound the reason names (SEQ or ACK
    /// over the upper bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed_by: Option<u32>,
    pub fate: Fate,
    /// Why the kernel freed the packet when it did not survive (`NETFILTER_DROP` with
    /// `dropped`; e.g. `NO_SOCKET` with `passed`: it reached a host that had no socket for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<Arc<str>>,
    /// Boxed: most verdicts have none, and each report moves through the pipeline's queues.
    pub conntrack: Option<Box<ConntrackReport>>,
    /// Whether the packet belonged to a flow conntrack was tracking: a confirmed entry had its
    /// tuple (the kernel's entry at the refusal, or the ctnetlink lookup just after). `false`
    /// for port scans (SYN|FIN, NULL, XMAS, FIN segments to closed ports) and strays of long-gone
    /// flows: they reset nothing anyone cares about. `null` when it could not be told
    /// (`enrichment: skipped`, not TCP, no ctnetlink).
    pub tracked: Option<bool>,
    /// `skipped` when the ctnetlink lookup of the entry could not be made in time (the lookup
    /// queue was full, or the answer came too late): `conntrack` is then null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<Enrichment>,
    /// The Service this flow belongs to, `namespace/name:portname` as kube-proxy's rules name it
    /// (omitted when no rule names it; see README "Service names").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Arc<str>>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AttributionReport {
    pub time: Time,
    /// The host whose connection was reset: the original source of the conntrack entry.
    pub client: Option<Endpoint>,
    /// The address the client connected to (conntrack original destination, before DNAT).
    pub service: Option<Endpoint>,
    /// The address that answered (the backend, after DNAT), source of the INVALID packet.
    pub backend: Endpoint,
    /// Who sent the reset, and to whom.
    pub reset_src: Endpoint,
    pub reset_dst: Endpoint,
    pub reset_netns: u32,
    pub reset_reason: Option<Arc<str>>,
    pub invalid_netns: u32,
    pub invalid_hook: NfHook,
    pub invalid_reason: ReasonText,
    pub invalid_time: Time,
    pub seq: u32,
    pub ack: u32,
    pub delay_us: u64,
    pub fate: Fate,
    /// What let the packet through without the Service's NAT: `invalid_packet` (conntrack
    /// marked it INVALID; the `invalid_*` fields describe that verdict) or `entry_lost` (its
    /// flow's entry was gone and conntrack picked it up mid-stream; the `invalid_*` fields then
    /// describe that packet at the node, and `lost` the entry it had).
    pub cause: ResetCause,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<crate::output::lost::LostReport>,
    /// `skipped` when the entry behind the reset could not be looked up in time (`client` is
    /// then the packet's destination and `service` null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<Enrichment>,
    /// The Service, `namespace/name:portname` as kube-proxy's rules name it: by the `service`
    /// address when it is known, else by the `backend` (omitted when no rule names either).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Arc<str>>,
}

/// What happened to an INVALID packet after conntrack refused it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// A netfilter rule dropped it: the node is protected.
    Dropped,
    /// Not dropped by netfilter: it went on without its NAT reversed, the dangerous case.
    Passed,
    /// The kernel does not say (no `kfree_skb` reason on this kernel).
    Unknown,
    /// `ignored` packets: conntrack let it through with its entry and its NAT.
    Accepted,
}

impl Fate {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dropped => "dropped",
            Self::Passed => "passed",
            Self::Unknown => "unknown",
            Self::Accepted => "accepted",
        }
    }
}

pub use crate::node::netlink::Direction;

/// A kernel counter that moved since the last report: records lost to a full ring buffer or to
/// a failure, or suppressed by the event budget. Nothing is lost or suppressed silently.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CounterReport {
    pub time: Time,
    /// The counter (`lost_invalid`, `suppressed_reset`, `read_failed`, ...; see README).
    pub counter: &'static str,
    pub count: u64,
}

/// One flow of the reset summary (`--summary`): client -> service -> backend.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowReport {
    pub client: String,
    pub service: String,
    pub backend: String,
    pub resets: u64,
    pub reasons: Vec<String>,
    pub first: Time,
    pub last: Time,
}

/// INVALID verdicts over the run: `counted` (in the kernel, at the moment of each verdict) ==
/// `shown` + `suppressed` + `filtered` + `lost` + `unprinted`, and `counted` == `kernel` (the
/// `invalid` delta of `/proc/net/stat/nf_conntrack` for the namespace; null when it cannot be
/// read).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct InvalidTally {
    /// The kernel's delta from before ct-trace attached to after it detached.
    pub kernel: Option<u64>,
    /// The kernel's delta from after ct-trace attached to before it detached: `counted` lies
    /// between the two (they differ only by packets that arrived while attaching or detaching).
    pub kernel_while_attached: Option<u64>,
    pub counted: u64,
    pub shown: u64,
    pub suppressed: u64,
    /// Not shown because of `--host`/`--port` (in the kernel) or `--kind`.
    pub filtered: u64,
    pub lost: u64,
    /// Reports not printed because `-c` was reached or stdout was closed.
    pub unprinted: u64,
    /// Runs of the verdict kretprobe the kernel skipped (BPF recursion protection: another BPF
    /// program was running on the CPU, e.g. one a softirq interrupted): each may have been an
    /// INVALID verdict ct-trace never saw, so `kernel` may exceed `counted` by up to this many.
    /// Always 0 with the netfilter link, which the kernel calls directly.
    pub missed_runs: u64,
    /// Whether the kernel counts skipped runs at all (`bpf_prog_info.recursion_misses`, 5.12+).
    /// When false (Linux 5.8-5.11) `missed_runs` is 0 because nobody counted, not because
    /// nothing was skipped.
    pub missed_runs_known: bool,
}

/// The last line of `-o json` at exit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SummaryReport {
    pub time: Time,
    pub duration_s: f64,
    /// The namespace whose INVALID verdicts were watched.
    pub netns: u32,
    pub invalid: InvalidTally,
    /// Table pressure and lost entries (`table_full`, `evicted`, `midstream`) against the
    /// kernel's `drop`, `early_drop` and `insert_failed`.
    pub table: crate::output::table::TableTally,
    /// Events printed, by kind.
    pub events: std::collections::BTreeMap<&'static str, u64>,
    /// Records suppressed in the kernel by the event budget, by record kind.
    pub suppressed: std::collections::BTreeMap<&'static str, u64>,
    /// Records lost (ring buffer full, undecodable), by record kind.
    pub lost: std::collections::BTreeMap<&'static str, u64>,
    /// Resets not shown because of `--resets`/`--filter` (counted in the kernel).
    pub filtered: std::collections::BTreeMap<&'static str, u64>,
    /// Events that went out without their ctnetlink lookup (see `enrichment`).
    pub enrichment_skipped: u64,
    /// Resets of packets of no flow conntrack was tracking (scans, strays): `cause: "stray"`,
    /// never attributed; by what conntrack did with the packet.
    pub stray_resets: StrayTally,
    /// Runs of ct-trace's programs the kernel skipped (recursion protection), by program;
    /// empty when none.
    pub missed_runs: std::collections::BTreeMap<String, u64>,
    /// What each attached program cost, as the kernel measured it (runs and nanoseconds only
    /// while `kernel.bpf_stats_enabled=1`).
    pub programs: Vec<crate::kernel::progstats::ProgramCost>,
    /// Every kernel counter of ct-trace, summed over the CPUs.
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    /// Where the kernel's conntrack counters (`invalid.kernel`, `table.*.kernel`) were read:
    /// `procfs` (`/proc/net/stat/nf_conntrack`) or `ctnetlink` (kernels without the procfs
    /// file); null when neither could be read.
    pub kernel_counters: Option<crate::node::kstat::Source>,
}

/// Everything ct-trace prints on stdout: one serde-tagged type, `kind` first.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    RstSent(ResetReport),
    RstReceived(ResetReport),
    Invalid(InvalidReport),
    /// Conntrack logged the packet as out of window but only ignored it (6.1+
    /// `NFCT_TCP_IGNORE`): it kept its entry and its NAT, so it is not INVALID.
    Ignored(InvalidReport),
    // The two largest kinds are boxed: every report moves through the pipeline's queues at the
    // size of its largest kind.
    Attribution(Box<AttributionReport>),
    TableFull(crate::output::lost::TableFullReport),
    Evicted(crate::output::lost::EvictedReport),
    Midstream(crate::output::lost::MidstreamReport),
    Lost(CounterReport),
    Suppressed(CounterReport),
    Flow(FlowReport),
    Summary(Box<SummaryReport>),
}

impl Report {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RstSent(_) => "rst_sent",
            Self::RstReceived(_) => "rst_received",
            Self::Invalid(_) => "invalid",
            Self::Ignored(_) => "ignored",
            Self::Attribution(_) => "attribution",
            Self::TableFull(_) => "table_full",
            Self::Evicted(_) => "evicted",
            Self::Midstream(_) => "midstream",
            Self::Lost(_) => "lost",
            Self::Suppressed(_) => "suppressed",
            Self::Flow(_) => "flow",
            Self::Summary(_) => "summary",
        }
    }

    /// A reset of a packet of no flow conntrack was tracking (see [`ResetReport::cause`]).
    pub fn is_stray(&self) -> bool {
        matches!(self, Self::RstSent(r) if r.cause == Some(ResetCause::Stray))
    }

    /// When it happened; `None` for the flow rows and the summary, which are made at exit.
    pub fn time(&self) -> Option<Time> {
        Some(match self {
            Self::RstSent(r) | Self::RstReceived(r) => r.time,
            Self::Invalid(r) | Self::Ignored(r) => r.time,
            Self::Attribution(r) => r.time,
            Self::TableFull(r) => r.time,
            Self::Evicted(r) => r.time,
            Self::Midstream(r) => r.time,
            Self::Lost(r) | Self::Suppressed(r) => r.time,
            Self::Flow(_) | Self::Summary(_) => return None,
        })
    }

    pub fn json(&self) -> String {
        let mut buf = Vec::with_capacity(512);
        crate::output::json::write(&mut buf, self);
        // Made of `&str`s and ASCII: UTF-8.
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn text(&self) -> String {
        fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map_or("-".into(), |v| v.to_string())
        }
        let mut s = String::new();
        match self {
            Self::RstSent(r) | Self::RstReceived(r) => {
                let _ = write!(
                    s,
                    "{} {:<12} netns={:<10} {:>22} > {:<22} {:<8} seq={:<10} ack={:<10} reason={}",
                    r.time,
                    self.kind(),
                    r.netns,
                    endpoint_of(r.src, r.sport),
                    endpoint_of(r.dst, r.dport),
                    opt(&r.flags),
                    opt(&r.seq),
                    opt(&r.ack),
                    opt(&r.reason),
                );
                match r.cause {
                    Some(ResetCause::EntryLost) => s.push_str(" caused_by=entry_lost"),
                    Some(ResetCause::Stray) => s.push_str(" caused_by=stray"),
                    Some(ResetCause::InvalidPacket) => s.push_str(" caused_by=invalid"),
                    None => {}
                }
            }
            Self::Invalid(r) | Self::Ignored(r) => {
                let _ = write!(
                    s,
                    "{} {:<12} netns={:<10} {:>22} > {:<22} {:<8} seq={:<10} ack={:<10} len={} hook={} fate={} reason={}",
                    r.time,
                    self.kind(),
                    r.netns,
                    endpoint_of(Some(r.src), r.sport),
                    endpoint_of(Some(r.dst), r.dport),
                    opt(&r.flags),
                    opt(&r.seq),
                    opt(&r.ack),
                    opt(&r.len),
                    r.hook,
                    r.fate.name(),
                    r.reason,
                );
                if let Some(m) = r.missed_by {
                    let _ = write!(s, " missed_by={m}");
                }
                if let Some(c) = &r.conntrack {
                    let _ = write!(
                        s,
                        " ct={}:{}>{}:{} state={}{}",
                        c.orig_src,
                        c.orig_sport,
                        c.orig_dst,
                        c.orig_dport,
                        c.tcp_state.unwrap_or("-"),
                        if c.assured { ",ASSURED" } else { "" }
                    );
                    for (dir, w) in [("orig", &c.original_window), ("reply", &c.reply_window)] {
                        if let Some(w) = w {
                            let _ = write!(
                                s,
                                " {dir}_win=end:{},maxend:{},maxwin:{},scale:{}{}",
                                w.td_end,
                                w.td_maxend,
                                w.td_maxwin,
                                w.td_scale,
                                if w.liberal { ",liberal" } else { "" }
                            );
                        }
                    }
                }
                service_name_text(&mut s, &r.service_name);
            }
            Self::Attribution(r) => {
                let _ = write!(
                    s,
                    "{} {:<12} client={} service={} backend={} reset={}>{} netns={} invalid_reason={} fate={} delay={}us",
                    r.time,
                    self.kind(),
                    opt(&r.client),
                    opt(&r.service),
                    r.backend,
                    r.reset_src,
                    r.reset_dst,
                    r.reset_netns,
                    r.invalid_reason,
                    r.fate.name(),
                    r.delay_us,
                );
                if let Some(l) = &r.lost {
                    let _ = write!(
                        s,
                        " cause={} lost={}",
                        r.cause,
                        crate::output::lost::how_name(l.how)
                    );
                }
                service_name_text(&mut s, &r.service_name);
            }
            Self::TableFull(r) => crate::output::lost::text_table_full(&mut s, r),
            Self::Evicted(r) => crate::output::lost::text_evicted(&mut s, r),
            Self::Midstream(r) => crate::output::lost::text_midstream(&mut s, r),
            Self::Lost(r) | Self::Suppressed(r) => {
                let _ = write!(
                    s,
                    "{} {:<12} counter={} count={}",
                    r.time,
                    self.kind(),
                    r.counter,
                    r.count
                );
            }
            Self::Flow(f) => {
                let _ = write!(
                    s,
                    "{:>6}  {:<24} {:<24} {:<24} {:<32} {} / {}",
                    f.resets,
                    f.client,
                    f.service,
                    f.backend,
                    f.reasons.join("; "),
                    f.first,
                    f.last
                );
            }
            // Text mode prints its summary as prose on stderr; this is only a fallback.
            Self::Summary(_) => s.push_str(&self.json()),
        }
        s
    }
}

pub use crate::cli::Format;

pub use super::endpoint::{endpoint, endpoint_of, service_name_text, Endpoint};
pub use super::flags::TcpFlags;
pub use super::reason::ReasonText;
pub use super::tags::{Enrichment, NfHook, ResetCause};
pub use super::time::Time;

/// Nanoseconds since the epoch as RFC 3339 with nanoseconds (`2026-11-22T03:21:07.123456789Z`).
pub fn rfc3339(epoch_ns: u64) -> String {
    Time(epoch_ns).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339(1_000_000_001), "1970-01-01T00:00:01.000000001Z");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = Report::RstSent(ResetReport {
            time: Time(0),
            netns: 4026531840,
            src: Some("10.0.0.1".parse().unwrap()),
            sport: Some(80),
            dst: Some("fd00::2".parse().unwrap()),
            dport: Some(4000),
            flags: Some(TcpFlags(0x14)),
            seq: Some(0),
            ack: Some(1),
            reason: Some("NO_SOCKET".into()),
            iface: None,
            trigger: None,
            socket: Some(false),
            caused_by_invalid: false,
            cause: None,
            enrichment: None,
        });
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["kind"], "rst_sent");
        for f in [
            "time", "kind", "netns", "src", "sport", "dst", "dport", "flags", "seq", "ack",
            "reason",
        ] {
            assert!(v.get(f).is_some(), "missing {f} in {v}");
        }
        assert_eq!(v["dst"], "fd00::2");
        assert!(r.text().contains("[fd00::2]:4000"), "{}", r.text());
    }
}

/// Resets that answered a packet conntrack let through without NAT, but of no flow conntrack
/// was tracking (scans, strays): counted apart from attributions, never blamed on a Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StrayTally {
    /// The packet was INVALID (e.g. SYN|FIN, NULL, XMAS or FIN to a closed port).
    pub invalid: u64,
    /// The packet was picked up mid-stream with no lost entry behind it (e.g. an ACK scan).
    pub midstream: u64,
}
