//! Turns kernel events into reports: joins each INVALID verdict with its fate (a later drop),
//! with its conntrack entry (looked up over ctnetlink by tuple), and with the reset it caused
//! (matched exactly in the kernel by tuple, seq and ack), and keeps the per-flow reset summary.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use conntrack_common::{flags, Drop, Hook, Kind, Reason, Reset, Verdict};

use crate::{
    btf::CtLayout,
    events::{addrs, tcp_flags, Event},
    netlink::{self, tcp_state_name, Conntrack, Tuple},
    report::{
        endpoint, endpoint_of, rfc3339, AttributionReport, ConntrackReport, InvalidReport, Report,
        ResetReport, Trigger,
    },
};

/// How long a verdict waits for a drop of the same packet before it is reported as `passed`.
/// The drop follows within microseconds in the same softirq; this only covers the reader's lag.
pub const FATE_WAIT: Duration = Duration::from_millis(50);

/// Verdicts remembered after they were reported, to describe a reset that arrives later.
const RECENT: usize = 4096;

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
    pub conntrack: Option<Conntrack>,
    /// Reads the kernel's `invalid` counter of ct-trace's namespace; `None` trusts every verdict.
    pub kernel_invalid: Option<Box<dyn FnMut() -> Option<u64>>>,
}

/// Reports a verdict only once the kernel's own `invalid` counter has counted it. Conntrack
/// counts before the netfilter program runs, so in steady state every verdict is confirmed at
/// once; packets conntrack never saw (its hooks are not registered for that family in this
/// namespace, which kernels without nfnetlink_hook cannot tell us up front) also have
/// `_nfct == 0` but are never counted, and are not reported as INVALID.
struct Confirm {
    read: Box<dyn FnMut() -> Option<u64>>,
    base: u64,
    confirmed: u64,
    credit: u64,
}

impl Confirm {
    fn take(&mut self) -> bool {
        if self.credit == 0 {
            if let Some(k) = (self.read)() {
                self.credit = k.saturating_sub(self.base).saturating_sub(self.confirmed);
            }
        }
        if self.credit == 0 {
            return false;
        }
        self.credit -= 1;
        self.confirmed += 1;
        true
    }
}

struct Pending {
    report: InvalidReport,
    deadline: Instant,
}

/// A reason record waiting for the verdict on the same packet.
struct PendingReason {
    reason: Box<Reason>,
    deadline: Instant,
}

/// What a reason record says, ready to go into a report.
struct ReasonInfo {
    text: String,
    missed_by: Option<u32>,
    conntrack: Option<ConntrackReport>,
}

/// A verdict within this long after a reason for the same `sk_buff` is about the same packet
/// (both happen inside one `nf_conntrack_in()` call).
const REASON_MAX_AGE_NS: u64 = 100_000_000;

/// One flow of the reset summary: client -> service -> backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub resets: u64,
    pub reasons: Vec<String>,
    pub first: String,
    pub last: String,
}

pub struct Correlator {
    ctx: Context,
    confirm: Option<Confirm>,
    suppressed: VecDeque<u64>,
    /// Verdicts not reported because the kernel never counted them INVALID.
    pub unconfirmed: u64,
    pending: HashMap<u64, Pending>,
    order: VecDeque<u64>,
    recent: VecDeque<(u64, InvalidReport)>,
    reasons: HashMap<u64, PendingReason>,
    reason_order: VecDeque<u64>,
    /// Reasons on packets that were neither INVALID nor TCP (not reported).
    pub reasons_unmatched: u64,
    pub flows: HashMap<(String, String, String), FlowStats>,
}

fn hook_name(h: u8) -> &'static str {
    match Hook::try_from(h) {
        Ok(Hook::PreRouting) => "prerouting",
        Ok(Hook::LocalIn) => "input",
        Ok(Hook::Forward) => "forward",
        Ok(Hook::LocalOut) => "output",
        Ok(Hook::PostRouting) => "postrouting",
        Err(_) => "unknown",
    }
}

fn ifname(ifindex: u32) -> Option<String> {
    if ifindex == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Some(format!("if{ifindex}"));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The reset the kernel sends for a packet no socket owns (tcp_v4_send_reset(),
/// net/ipv4/tcp_ipv4.c): seq = the packet's ack if it had ACK set, otherwise an ACK of
/// everything it carried.
pub fn reset_for(flags_in: u8, seq: u32, ack: u32, len: u16) -> (u8, u32, u32) {
    const ACK: u8 = 0x10;
    const RST: u8 = 0x04;
    if flags_in & ACK != 0 {
        (RST, ack, 0)
    } else {
        let syn_fin = u32::from(flags_in & 0x02 != 0) + u32::from(flags_in & 0x01 != 0);
        (
            RST | ACK,
            0,
            seq.wrapping_add(syn_fin).wrapping_add(u32::from(len)),
        )
    }
}

impl Correlator {
    pub fn new(mut ctx: Context) -> Self {
        let confirm = ctx.kernel_invalid.take().and_then(|mut read| {
            let base = read()?;
            Some(Confirm {
                read,
                base,
                confirmed: 0,
                credit: 0,
            })
        });
        Self {
            ctx,
            confirm,
            suppressed: VecDeque::new(),
            unconfirmed: 0,
            pending: HashMap::new(),
            order: VecDeque::new(),
            recent: VecDeque::new(),
            reasons: HashMap::new(),
            reason_order: VecDeque::new(),
            reasons_unmatched: 0,
            flows: HashMap::new(),
        }
    }

    pub fn time(&self, boot_ns: u64) -> String {
        rfc3339((boot_ns as i128 + self.ctx.boot_to_epoch_ns).max(0) as u64)
    }

    /// Handles one event; the reports it completes are appended to `out`, in order.
    pub fn event(&mut self, ev: Event, now: Instant, out: &mut Vec<Report>) {
        match ev {
            Event::Invalid(v) => self.invalid(v, now),
            Event::Reason(r) => {
                let skb = r.skb;
                let pending = PendingReason {
                    reason: r,
                    deadline: now + FATE_WAIT,
                };
                // The first reason logged for a packet is the one that decided.
                if let std::collections::hash_map::Entry::Vacant(e) = self.reasons.entry(skb) {
                    e.insert(pending);
                    self.reason_order.push_back(skb);
                }
            }
            Event::Drop(d) => self.drop(d, out),
            Event::Reset(kind, r) => self.reset(kind, r, out),
        }
    }

    /// Reports the verdicts whose wait for a drop is over (`passed`), or all with `flush`; and
    /// the reasons no verdict claimed, as `ignored`.
    pub fn tick(&mut self, now: Instant, flush: bool, out: &mut Vec<Report>) {
        while let Some(skb) = self.reason_order.front().copied() {
            match self.reasons.get(&skb) {
                Some(p) if !flush && p.deadline > now => break,
                Some(_) => {
                    let p = self.reasons.remove(&skb).unwrap();
                    self.reason_order.pop_front();
                    self.ignored(&p.reason, out);
                }
                None => {
                    self.reason_order.pop_front();
                }
            }
        }
        while let Some(skb) = self.order.front().copied() {
            match self.pending.get(&skb) {
                Some(p) if !flush && p.deadline > now => break,
                Some(_) => {
                    let p = self.pending.remove(&skb).unwrap();
                    self.order.pop_front();
                    self.finish(skb, p.report, out);
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
    }

    fn finish(&mut self, skb: u64, report: InvalidReport, out: &mut Vec<Report>) {
        if let Some(c) = &mut self.confirm {
            if !c.take() {
                if self.unconfirmed == 0 {
                    log::warn!(
                        "packets without a conntrack entry that the kernel did not count INVALID: conntrack is not active for them in this namespace; they are not reported"
                    );
                }
                self.unconfirmed += 1;
                if self.suppressed.len() == RECENT {
                    self.suppressed.pop_front();
                }
                self.suppressed.push_back(skb);
                return;
            }
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((skb, report.clone()));
        out.push(Report::Invalid(report));
    }

    fn reason_info(&self, r: &Reason) -> ReasonInfo {
        let fmt = crate::reason::format_string(r);
        let state = self
            .ctx
            .ct_layout
            .as_ref()
            .and_then(|l| crate::reason::tcp_state(r, l));
        ReasonInfo {
            text: crate::reason::render(&fmt, r.args, state),
            missed_by: crate::reason::missed_by(&fmt, r.args[0], r.packet.seq, r.packet.ack),
            conntrack: self
                .ctx
                .ct_layout
                .as_ref()
                .and_then(|l| crate::reason::conntrack(r, l)),
        }
    }

    /// A TCP packet conntrack logged but did not mark INVALID: 6.1+ IGNORE (out of window in a
    /// way conntrack tolerates: it keeps the entry and the NAT).
    fn ignored(&mut self, r: &Reason, out: &mut Vec<Report>) {
        let p = &r.packet;
        if !self.ctx.verdicts || p.proto != crate::events::IPPROTO_TCP || p.family == 0 {
            self.reasons_unmatched += 1;
            return;
        }
        let info = self.reason_info(r);
        let (src, dst) = addrs(p);
        out.push(Report::Invalid(InvalidReport {
            time: self.time(r.header.ts_ns),
            kind: "ignored",
            netns: p.netns,
            hook: hook_name(r.hook),
            in_iface: None,
            out_iface: None,
            proto: p.proto,
            src,
            sport: Some(p.sport),
            dst,
            dport: Some(p.dport),
            flags: Some(tcp_flags(p.tcp_flags)),
            seq: Some(p.seq),
            ack: Some(p.ack),
            len: Some(p.payload_len),
            reason: info.text,
            missed_by: info.missed_by,
            fate: "accepted",
            drop_reason: None,
            conntrack: info.conntrack,
        }));
    }

    fn invalid(&mut self, v: Verdict, now: Instant) {
        let p = &v.packet;
        let (src, dst) = addrs(p);
        let tcp = v.flags & flags::NOT_TCP == 0 && v.flags & flags::NO_HEADERS == 0;
        let info = match self.reasons.remove(&v.skb) {
            Some(r) if v.header.ts_ns.wrapping_sub(r.reason.header.ts_ns) <= REASON_MAX_AGE_NS => {
                Some(self.reason_info(&r.reason))
            }
            _ => None,
        };
        let (reason, missed_by, kernel_ct) = match (info, &self.ctx.reason_unknown) {
            (Some(i), _) => (i.text, i.missed_by, i.conntrack),
            (None, Some(why)) => (why.clone(), None, None),
            (None, None) => (
                "unknown (conntrack logged no reason for this packet: no entry was found or created for it)".to_string(),
                None,
                None,
            ),
        };
        let conntrack = if kernel_ct.is_some() {
            kernel_ct
        } else if tcp {
            self.ctx.conntrack.as_ref().and_then(|c| {
                let t = Tuple {
                    src,
                    sport: p.sport,
                    dst,
                    dport: p.dport,
                    proto: p.proto,
                };
                match c.lookup(&t) {
                    Ok(found) => found.map(|(e, dir)| ConntrackReport {
                        source: "ctnetlink",
                        direction: dir.name(),
                        orig_src: e.orig.src,
                        orig_sport: e.orig.sport,
                        orig_dst: e.orig.dst,
                        orig_dport: e.orig.dport,
                        reply_src: e.reply.src,
                        reply_sport: e.reply.sport,
                        reply_dst: e.reply.dst,
                        reply_dport: e.reply.dport,
                        tcp_state: e.tcp_state.map(tcp_state_name),
                        assured: e.status & netlink::IPS_ASSURED != 0,
                        original_window: None,
                        reply_window: None,
                    }),
                    Err(e) => {
                        log::debug!("conntrack lookup failed: {e}");
                        None
                    }
                }
            })
        } else {
            None
        };
        let report = InvalidReport {
            time: self.time(v.header.ts_ns),
            kind: "invalid",
            netns: p.netns,
            hook: hook_name(v.hook),
            in_iface: ifname(p.ifindex),
            out_iface: ifname(v.out_ifindex),
            proto: p.proto,
            src,
            sport: tcp.then_some(p.sport),
            dst,
            dport: tcp.then_some(p.dport),
            flags: tcp.then(|| tcp_flags(p.tcp_flags)),
            seq: tcp.then_some(p.seq),
            ack: tcp.then_some(p.ack),
            len: tcp.then_some(p.payload_len),
            reason,
            missed_by,
            fate: if self.ctx.fate_known {
                "passed"
            } else {
                "unknown"
            },
            drop_reason: None,
            conntrack,
        };
        if self
            .pending
            .insert(
                v.skb,
                Pending {
                    report,
                    deadline: now + FATE_WAIT,
                },
            )
            .is_none()
        {
            self.order.push_back(v.skb);
        }
    }

    fn drop(&mut self, d: Drop, out: &mut Vec<Report>) {
        // A drop for a verdict already reported (or never seen) says nothing new.
        let Some(mut p) = self.pending.remove(&d.skb) else {
            return;
        };
        // On a veth the same sk_buff crosses into the next namespace, so a packet that passed
        // netfilter here can be freed later elsewhere (e.g. NO_SOCKET on the host that then
        // resets it). Only a netfilter drop protects the node; an old kernel without reasons
        // cannot tell the two apart.
        p.report.fate = match (d.reason, self.ctx.netfilter_drop) {
            (u32::MAX, _) | (_, None) => "unknown",
            (r, Some(nf)) if r == nf => "dropped",
            _ => "passed",
        };
        p.report.drop_reason = Some(match self.ctx.drop_reasons.get(&d.reason) {
            Some(n) => crate::btf::short_reason(n).to_string(),
            None if d.reason == u32::MAX => {
                "unknown (kfree_skb has no reason on this kernel)".into()
            }
            None => d.reason.to_string(),
        });
        self.finish(d.skb, p.report, out);
    }

    fn reset(&mut self, kind: Kind, r: Reset, out: &mut Vec<Report>) {
        let p = &r.packet;
        let (a, b) = addrs(p);
        let known = p.family != 0;
        let has_packet = r.flags & flags::NO_HEADERS == 0;
        let reason = if r.flags & flags::NO_REASON_ARG != 0 {
            if kind == Kind::RstSent {
                Some("unknown (tcp_send_reset has no reason argument before Linux 6.10)".into())
            } else {
                None
            }
        } else {
            Some(match self.ctx.rst_reasons.get(&r.reason) {
                Some(n) => crate::btf::short_reason(n).to_string(),
                None => r.reason.to_string(),
            })
        };
        let report = if kind == Kind::RstSent {
            // The event carries the packet that caused the reset; the reset goes back.
            let (rflags, seq, ack) = if has_packet {
                let (f, s, a) = reset_for(p.tcp_flags, p.seq, p.ack, p.payload_len);
                (Some(tcp_flags(f)), Some(s), Some(a))
            } else {
                (Some("RST".to_string()), None, None)
            };
            ResetReport {
                time: self.time(r.header.ts_ns),
                kind: "rst_sent",
                netns: p.netns,
                src: known.then_some(b),
                sport: known.then_some(p.dport),
                dst: known.then_some(a),
                dport: known.then_some(p.sport),
                flags: rflags,
                seq,
                ack,
                reason,
                iface: if p.netns == self.ctx.own_netns {
                    ifname(p.ifindex)
                } else {
                    None
                },
                trigger: has_packet.then(|| Trigger {
                    flags: tcp_flags(p.tcp_flags),
                    seq: p.seq,
                    ack: p.ack,
                    len: p.payload_len,
                }),
                socket: Some(r.flags & flags::NO_SOCKET == 0),
                caused_by_invalid: r.flags & flags::CAUSED_BY_INVALID != 0,
            }
        } else {
            ResetReport {
                time: self.time(r.header.ts_ns),
                kind: "rst_received",
                netns: p.netns,
                src: known.then_some(a),
                sport: known.then_some(p.sport),
                dst: known.then_some(b),
                dport: known.then_some(p.dport),
                flags: Some("RST".into()),
                seq: None,
                ack: None,
                reason,
                iface: None,
                trigger: None,
                socket: None,
                caused_by_invalid: false,
            }
        };
        let mut report = report;
        let mut caused = report.caused_by_invalid;
        let invalid = if caused {
            // The packet reached a host that reset it, so it was not dropped: report its
            // verdict now, before the reset, with that fate.
            if let Some(pend) = self.pending.remove(&r.cause.skb) {
                self.finish(r.cause.skb, pend.report, out);
            }
            if self.suppressed.contains(&r.cause.skb) {
                // Not an INVALID verdict after all (conntrack never saw that packet).
                caused = false;
                report.caused_by_invalid = false;
            }
            self.recent
                .iter()
                .rev()
                .find(|(skb, _)| *skb == r.cause.skb)
                .map(|(_, rep)| rep.clone())
        } else {
            None
        };
        out.push(Report::Reset(report.clone()));
        if caused {
            let attribution = self.attribute(&r, &report, invalid.as_ref());
            out.push(Report::Attribution(attribution));
        }
    }

    fn attribute(
        &mut self,
        r: &Reset,
        reset: &ResetReport,
        invalid: Option<&InvalidReport>,
    ) -> AttributionReport {
        let p = &r.packet;
        let (src, dst) = addrs(p);
        let ct = invalid.and_then(|i| i.conntrack.as_ref());
        // The INVALID packet went backend -> client; the entry's original tuple is
        // client -> service. Without an entry, the packet's own destination is the client.
        let (client, service) = match ct {
            Some(c) if c.direction == "reply" => (
                Some(endpoint(c.orig_src, c.orig_sport)),
                Some(endpoint(c.orig_dst, c.orig_dport)),
            ),
            _ => (Some(endpoint(dst, p.dport)), None),
        };
        let backend = endpoint(src, p.sport);
        let invalid_reason = invalid.map_or_else(
            || "unknown (the verdict was not seen)".to_string(),
            |i| i.reason.clone(),
        );
        let fate = invalid.map_or("passed", |i| i.fate);
        let a = AttributionReport {
            time: reset.time.clone(),
            kind: "attribution",
            client: client.clone(),
            service: service.clone(),
            backend: backend.clone(),
            reset_src: endpoint_of(reset.src, reset.sport),
            reset_dst: endpoint_of(reset.dst, reset.dport),
            reset_netns: reset.netns,
            reset_reason: reset.reason.clone(),
            invalid_netns: r.cause.netns,
            invalid_hook: hook_name(r.cause.hook),
            invalid_reason: invalid_reason.clone(),
            invalid_time: self.time(r.cause.ts_ns),
            seq: p.seq,
            ack: p.ack,
            delay_us: r.header.ts_ns.saturating_sub(r.cause.ts_ns) / 1000,
            fate,
        };
        let key = (
            client.unwrap_or_else(|| "?".into()),
            service.unwrap_or_else(|| "-".into()),
            backend,
        );
        let f = self.flows.entry(key).or_default();
        f.resets += 1;
        if !f.reasons.contains(&invalid_reason) {
            f.reasons.push(invalid_reason);
        }
        if f.first.is_empty() {
            f.first = a.time.clone();
        }
        f.last = a.time.clone();
        a
    }

    /// The flows ranked by attributed resets, most first.
    pub fn summary(&self) -> Vec<((String, String, String), FlowStats)> {
        let mut v: Vec<_> = self
            .flows
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| b.1.resets.cmp(&a.1.resets).then(a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conntrack_common::{Header, InvalidSeen, Packet, WIRE_VERSION};

    fn ctx() -> Context {
        Context {
            boot_to_epoch_ns: 0,
            rst_reasons: HashMap::from([(2, "SK_RST_REASON_NO_SOCKET".to_string())]),
            drop_reasons: HashMap::from([(9, "SKB_DROP_REASON_NETFILTER_DROP".to_string())]),
            netfilter_drop: Some(9),
            fate_known: true,
            reason_unknown: None,
            ct_layout: None,
            verdicts: true,
            own_netns: 1,
            conntrack: None,
            kernel_invalid: None,
        }
    }

    fn packet() -> Packet {
        let mut p = Packet {
            netns: 1,
            family: 4,
            proto: 6,
            tcp_flags: 0x10,
            sport: 8080,
            dport: 40000,
            seq: 100,
            ack: 5000,
            payload_len: 10,
            ..Default::default()
        };
        p.saddr[..4].copy_from_slice(&[10, 0, 2, 2]);
        p.daddr[..4].copy_from_slice(&[10, 0, 1, 2]);
        p
    }

    fn verdict(skb: u64) -> Verdict {
        Verdict {
            header: Header {
                version: WIRE_VERSION,
                kind: Kind::Invalid as u8,
                ts_ns: 1_000,
                ..Default::default()
            },
            packet: packet(),
            skb,
            ..Default::default()
        }
    }

    fn reason(skb: u64, fmt: &str, bound: u64) -> Box<Reason> {
        let mut r = Reason {
            header: Header {
                version: WIRE_VERSION,
                kind: Kind::Reason as u8,
                ts_ns: 900,
                ..Default::default()
            },
            packet: packet(),
            skb,
            args: [bound, 0],
            ..Default::default()
        };
        r.fmt[..fmt.len()].copy_from_slice(fmt.as_bytes());
        Box::new(r)
    }

    #[test]
    fn a_reason_joins_the_verdict_on_the_same_packet() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = vec![];
        let fmt = "SEQ is over upper bound %u (over the window of the receiver)";
        c.event(Event::Reason(reason(7, fmt, 60)), t0, &mut out);
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.tick(t0 + FATE_WAIT * 2, false, &mut out);
        match &out[..] {
            [Report::Invalid(r)] => {
                assert_eq!(r.kind, "invalid");
                assert_eq!(
                    r.reason,
                    "SEQ is over upper bound 60 (over the window of the receiver)"
                );
                assert_eq!(r.missed_by, Some(40), "seq 100 - bound 60");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reason_without_a_verdict_is_an_ignored_packet() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = vec![];
        let fmt = "ignored ACK under lower bound %u (possible overly delayed)";
        c.event(Event::Reason(reason(7, fmt, 1)), t0, &mut out);
        c.tick(t0, false, &mut out);
        assert!(out.is_empty(), "waits for the verdict");
        c.tick(t0 + FATE_WAIT * 2, false, &mut out);
        match &out[..] {
            [Report::Invalid(r)] => {
                assert_eq!(r.kind, "ignored");
                assert_eq!(r.fate, "accepted");
                assert!(r.reason.starts_with("ignored ACK under lower bound 1"));
            }
            other => panic!("{other:?}"),
        }
        // Without verdict programs nothing says it was not INVALID: not reported.
        let mut cx = ctx();
        cx.verdicts = false;
        let mut c = Correlator::new(cx);
        out.clear();
        c.event(Event::Reason(reason(7, fmt, 1)), t0, &mut out);
        c.tick(t0, true, &mut out);
        assert!(out.is_empty());
        assert_eq!(c.reasons_unmatched, 1);
    }

    #[test]
    fn a_verdict_without_drop_is_reported_passed_after_the_wait() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = vec![];
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.tick(t0, false, &mut out);
        assert!(out.is_empty(), "must wait for a possible drop");
        c.tick(t0 + FATE_WAIT * 2, false, &mut out);
        match &out[..] {
            [Report::Invalid(r)] => assert_eq!(r.fate, "passed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_netfilter_drop_of_the_same_packet_makes_it_dropped() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = vec![];
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        c.event(
            Event::Drop(Drop {
                skb: 7,
                reason: 9,
                ..Default::default()
            }),
            t0,
            &mut out,
        );
        match &out[..] {
            [Report::Invalid(r)] => {
                assert_eq!(r.fate, "dropped");
                assert_eq!(r.drop_reason.as_deref(), Some("NETFILTER_DROP"));
            }
            other => panic!("{other:?}"),
        }
        // Freed later for another reason (in the next namespace): it passed netfilter.
        c.event(Event::Invalid(verdict(8)), t0, &mut out);
        c.event(
            Event::Drop(Drop {
                skb: 8,
                reason: 3,
                ..Default::default()
            }),
            t0,
            &mut out,
        );
        let Report::Invalid(r) = &out[1] else {
            unreachable!()
        };
        assert_eq!(r.fate, "passed");
        out.truncate(1);
        // A stray drop (address reuse) changes nothing.
        c.event(
            Event::Drop(Drop {
                skb: 8,
                reason: 9,
                ..Default::default()
            }),
            t0,
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_reset_caused_by_an_invalid_packet_is_attributed_once() {
        let mut c = Correlator::new(ctx());
        let t0 = Instant::now();
        let mut out = vec![];
        c.event(Event::Invalid(verdict(7)), t0, &mut out);
        let mut r = Reset {
            header: Header {
                version: WIRE_VERSION,
                kind: Kind::RstSent as u8,
                ts_ns: 3_000,
                ..Default::default()
            },
            packet: packet(),
            reason: 2,
            flags: flags::NO_SOCKET | flags::CAUSED_BY_INVALID,
            ..Default::default()
        };
        r.packet.netns = 2;
        r.cause = InvalidSeen {
            ts_ns: 1_000,
            skb: 7,
            netns: 1,
            hook: 0,
            _pad: [0; 3],
        };
        c.event(Event::Reset(Kind::RstSent, r), t0, &mut out);
        let kinds: Vec<_> = out.iter().map(Report::kind).collect();
        assert_eq!(kinds, ["invalid", "rst_sent", "attribution"]);
        let Report::Attribution(a) = &out[2] else {
            unreachable!()
        };
        assert_eq!(a.backend, "10.0.2.2:8080");
        assert_eq!(a.client.as_deref(), Some("10.0.1.2:40000"));
        assert_eq!(a.delay_us, 2);
        assert_eq!(a.fate, "passed");
        let Report::Reset(rs) = &out[1] else {
            unreachable!()
        };
        assert_eq!(rs.src, Some("10.0.1.2".parse().unwrap()));
        assert_eq!(rs.seq, Some(5000), "RST seq is the offending packet's ack");
        assert_eq!(rs.reason.as_deref(), Some("NO_SOCKET"));
        assert_eq!(c.summary()[0].1.resets, 1);
    }

    #[test]
    fn verdicts_the_kernel_did_not_count_are_not_reported() {
        let counter = std::rc::Rc::new(std::cell::Cell::new(100u64));
        let c2 = counter.clone();
        let mut cx = ctx();
        cx.kernel_invalid = Some(Box::new(move || Some(c2.get())));
        let mut c = Correlator::new(cx);
        let t0 = Instant::now();
        let mut out = vec![];
        counter.set(101); // conntrack counted one
        c.event(Event::Invalid(verdict(1)), t0, &mut out);
        c.event(Event::Invalid(verdict(2)), t0, &mut out); // never counted: conntrack not active
        c.tick(t0 + FATE_WAIT * 2, false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(c.unconfirmed, 1);
        // A reset of the unconfirmed packet is not attributed.
        let r = Reset {
            header: Header {
                version: WIRE_VERSION,
                kind: Kind::RstSent as u8,
                ..Default::default()
            },
            packet: packet(),
            flags: flags::CAUSED_BY_INVALID,
            cause: InvalidSeen {
                skb: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        c.event(Event::Reset(Kind::RstSent, r), t0, &mut out);
        assert_eq!(
            out.iter().map(Report::kind).collect::<Vec<_>>(),
            ["invalid", "rst_sent"]
        );
    }

    #[test]
    fn resets_follow_the_kernel_rule() {
        assert_eq!(reset_for(0x02, 10, 0, 0), (0x14, 0, 11), "SYN is acked");
        assert_eq!(
            reset_for(0x18, 10, 99, 5),
            (0x04, 99, 0),
            "ACK: seq = its ack"
        );
        assert_eq!(
            reset_for(0x01, 10, 0, 3),
            (0x14, 0, 14),
            "FIN and data are acked"
        );
    }
}
