//! What every part of the correlator reads and none owns: the kernel's context, the facts of
//! the current batch ([`Batch`], handed in once by the caller), the clock, the Service names, the
//! lookup tokens, and the bounds and waits.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    event::{InvalidReport, Packet, ReasonText, Report, Time},
    kernel::btf::CtLayout,
    node::services::ServiceLookup,
    pipeline::enrich::Request,
    pipeline::lost::FlowEntry,
};

/// How long a verdict waits for a drop of the same packet (and for its ctnetlink lookup) before
/// it is reported as `passed`. The drop follows within microseconds in the same softirq; this
/// only covers the reader's lag.
pub const FATE_WAIT: Duration = Duration::from_millis(50);

/// Verdicts remembered after they were reported, to describe a reset that arrives later.
pub const RECENT: usize = 4096;
/// Verdicts waiting for their fate at once (at 300k verdicts/s for 50 ms: 15k). Beyond this the
/// oldest goes out at once, with what is known.
pub const MAX_PENDING: usize = 32768;
/// Reasons waiting for their verdict, and resets waiting for a lookup.
pub const MAX_WAITING: usize = 32768;

/// A verdict is named by its `sk_buff` address and its time: addresses are reused, the pair
/// is not.
pub(super) type VerdictId = (u64, u64);

/// What the correlator knows about the running kernel and the attach plan.
pub struct Context {
    /// Nanoseconds to add to CLOCK_BOOTTIME to get the time since the epoch.
    pub boot_to_epoch_ns: i128,
    pub rst_reasons: HashMap<u32, String>,
    pub drop_reasons: HashMap<u32, String>,
    pub netfilter_drop: Option<u32>,
    /// Whether `kfree_skb` is watched: without it the fate is `unknown`.
    pub fate_known: bool,
    /// Why the INVALID reason is not known on this kernel (no kprobes), or `None` when the
    /// reason kprobes are attached.
    pub reason_unknown: Option<String>,
    /// How to decode conntrack entries in reason records.
    pub ct_layout: Option<CtLayout>,
    /// Whether INVALID verdicts are watched: a reason without a verdict is then an IGNORE.
    pub verdicts: bool,
    /// ct-trace's own netns: interface names resolve only there.
    pub own_netns: u32,
    /// Whether entries can be looked up over ctnetlink (the enrichment thread runs).
    pub lookups: bool,
    /// Interface names of ct-trace's namespace (the caller caches them).
    pub ifname: Box<dyn FnMut(u32) -> Option<Arc<str>>>,
}

/// The facts of the node that hold for a batch of events, read by the caller outside the
/// correlator (which does no I/O) and handed in with [`super::Correlator::batch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The namespace's entry count as the caller read it for this batch, for table-pressure
    /// events whose program could not read it: said so with `entries_source: "ct-trace"`.
    pub entries: Option<u32>,
    /// `nf_conntrack_max` as last read.
    pub ct_max: Option<u32>,
    /// CLOCK_BOOTTIME up to which the destroy watcher has handed over every event (read before
    /// the caller passes on what the watcher took); `None` without a watcher, when a
    /// `midstream` record waits [`FATE_WAIT`] only.
    pub watermark: Option<u64>,
}

/// The reports and lookups one call produced.
#[derive(Default)]
pub struct Output {
    pub reports: Vec<Report>,
    pub lookups: Vec<Request>,
}

/// The state every part reads.
pub(super) struct Shared {
    pub ctx: Context,
    pub batch: Batch,
    /// The Service names of kube-proxy's rules (kept current by their own thread; a lookup is
    /// a hash lookup in a snapshot, no I/O).
    pub names: Option<ServiceLookup>,
    /// The time of the call being handled.
    pub now: Instant,
    /// The reason of a verdict without a reason record, made once.
    pub reason_unknown: ReasonText,
    /// Reset and drop reasons by number, their short names made once and shared by the reports.
    pub rst_names: HashMap<u32, Arc<str>>,
    pub drop_names: HashMap<u32, Arc<str>>,
    /// `reason` of a reset sent on a kernel whose tracepoint has no reason argument.
    pub rst_no_reason: Arc<str>,
    /// `drop_reason` on a kernel whose `kfree_skb` has no reason.
    pub drop_no_reason: Arc<str>,
    next_token: u64,
}

impl Shared {
    pub fn new(ctx: Context) -> Self {
        let reason_unknown = match &ctx.reason_unknown {
            Some(why) => ReasonText::new(why.as_str()),
            None => ReasonText::fixed(
                "unknown (conntrack logged no reason for this packet: no entry was found or created for it)",
            ),
        };
        let short = |m: &HashMap<u32, String>| -> HashMap<u32, Arc<str>> {
            m.iter()
                .map(|(k, n)| (*k, Arc::from(crate::kernel::btf::short_reason(n))))
                .collect()
        };
        Self {
            reason_unknown,
            rst_names: short(&ctx.rst_reasons),
            drop_names: short(&ctx.drop_reasons),
            rst_no_reason: Arc::from(
                "unknown (tcp_send_reset has no reason argument before Linux 6.10)",
            ),
            drop_no_reason: Arc::from("unknown (kfree_skb has no reason on this kernel)"),
            ctx,
            batch: Batch::default(),
            names: None,
            now: Instant::now(),
            next_token: 1,
        }
    }

    pub fn time(&self, boot_ns: u64) -> Time {
        Time((boot_ns as i128 + self.ctx.boot_to_epoch_ns).max(0) as u64)
    }

    /// A new lookup token (verdicts' and resets' lookups share the numbering: an answer finds
    /// its asker by its token alone).
    pub fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// The name of a flow's Service, by its Service address, else its backend.
    pub fn service_name(
        &self,
        service: Option<SocketAddr>,
        backend: Option<SocketAddr>,
        proto: u8,
    ) -> Option<Arc<str>> {
        self.names.as_ref()?.name(service, backend, proto)
    }

    /// The name of a packet's Service when its direction is not known: its destination as a
    /// Service address, or either end as a backend.
    pub fn packet_service_name(
        &self,
        src: IpAddr,
        sport: Option<u16>,
        dst: IpAddr,
        dport: Option<u16>,
        proto: u8,
    ) -> Option<Arc<str>> {
        let (sport, dport) = (sport?, dport?);
        self.names.as_ref()?.name_of_packet(
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
            proto,
        )
    }

    /// The name of the Service a report's packet belongs to, by its addresses alone.
    pub fn service_name_of(&self, p: &Packet) -> Option<Arc<str>> {
        self.packet_service_name(p.src?, p.sport, p.dst?, p.dport, p.proto)
    }

    /// The name of the Service of a conntrack entry (original destination, reply source), or
    /// of the packet itself without one.
    pub fn invalid_service_name(&self, r: &InvalidReport) -> Option<Arc<str>> {
        match &r.conntrack {
            Some(c) => self.service_name(
                Some(SocketAddr::new(c.orig_dst, c.orig_dport)),
                Some(SocketAddr::new(c.reply_src, c.reply_sport)),
                r.packet.proto,
            ),
            None => self.service_name_of(&r.packet),
        }
    }

    /// The name of the Service of a lost entry.
    pub fn entry_service_name(&self, e: &FlowEntry) -> Option<Arc<str>> {
        self.service_name(Some(e.orig_dst), Some(e.reply_src), e.proto)
    }
}
