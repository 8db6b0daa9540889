//! TCP reset tracepoints: `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`.
//!
//! Prototypes (include/trace/events/tcp.h):
//! - 6.10+: `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason)`;
//!   the tracepoint also fires with `sk == NULL` for resets of packets no socket owns (the reset
//!   ct-trace is about). Before that series it had no reason and fired only for full sockets.
//! - `tcp_receive_reset(struct sock *sk)` on every kernel ct-trace supports.

use aya_ebpf::{
    macros::{btf_tracepoint, kprobe},
    programs::{BtfTracePointContext, ProbeContext},
};
use conntrack_common::{
    flags, tcp_flags, Cause, Counter, InvalidSeen, Kind, Offsets, Packet, PacketKey, Reset,
    IPPROTO_TCP, NO_REASON, PENDING_RST_MAX_AGE_NS,
};

use crate::{
    config,
    filter::packet_matches,
    maps::{allow, count, count_rst_reason, emit, PENDING_RST},
    skb::{header, netns_inum, read, read_packet, skb_dev},
};

const AF_INET: u16 = 2;
/// `sk_state` of the sockets that are not full sockets (include/net/tcp_states.h).
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
const AF_INET6: u16 = 10;

/// Fills the tuple of a socket, seen as a packet from the peer to this socket.
#[inline(always)]
fn read_sock(sk: *const u8, o: &Offsets, p: &mut Packet) {
    // SAFETY: probe reads of a kernel pointer.
    unsafe {
        let family = read::<u16>(sk, o.sk_family).unwrap_or(0);
        if family == AF_INET {
            p.family = 4;
            p.saddr[..4].copy_from_slice(&read::<[u8; 4]>(sk, o.sk_daddr).unwrap_or([0; 4]));
            p.daddr[..4].copy_from_slice(&read::<[u8; 4]>(sk, o.sk_rcv_saddr).unwrap_or([0; 4]));
        } else if family == AF_INET6 {
            p.family = 6;
            p.saddr = read::<[u8; 16]>(sk, o.sk_v6_daddr).unwrap_or([0; 16]);
            p.daddr = read::<[u8; 16]>(sk, o.sk_v6_rcv_saddr).unwrap_or([0; 16]);
        }
        p.proto = IPPROTO_TCP;
        p.sport = u16::from_be(read::<u16>(sk, o.sk_dport).unwrap_or(0));
        p.dport = read::<u16>(sk, o.sk_num).unwrap_or(0);
        // A socket that sends an active reset as it closes (TCP_ABORT_ON_CLOSE, TCP_STATE) has
        // already given its port back (`inet_put_port()` zeroes `inet_num`); a full socket
        // still has it in `inet_sport`. Time-wait and request sockets are no `inet_sock`.
        let state = read::<u8>(sk, o.sk_state).unwrap_or(0);
        if p.dport == 0 && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV {
            p.dport = u16::from_be(read::<u16>(sk, o.sk_sport).unwrap_or(0));
        }
        let net = read::<u64>(sk, o.sk_net).unwrap_or(0) as *const u8;
        p.netns = netns_inum(net, o);
    }
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn ctt_rst_sent(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if config::rst_kprobed() && !skb.is_null() {
        // Reported by the tcp_v{4,6}_send_reset kprobes (ctt_rst_v4/ctt_rst_v6).
        return 0;
    }
    let reason = if config::rst_has_reason() {
        ctx.arg::<u32>(2)
    } else {
        NO_REASON
    };
    rst_sent(sk, skb, reason);
    0
}

/// `tcp_v4_send_reset(const struct sock *sk, struct sk_buff *skb)` (net/ipv4/tcp_ipv4.c; a third
/// `enum sk_rst_reason` argument from 6.10). Before 6.10 `tcp:tcp_send_reset` fired only
/// `if (sk && sk_fullsock(sk))`, so the reset of a packet no socket owns - the one ct-trace is
/// about - is seen only here. Static, but in kallsyms.
#[kprobe]
pub fn ctt_rst_v4(ctx: ProbeContext) -> u32 {
    rst_kprobe(&ctx);
    0
}

/// `tcp_v6_send_reset`, as `tcp_v4_send_reset` (net/ipv6/tcp_ipv6.c).
#[kprobe]
pub fn ctt_rst_v6(ctx: ProbeContext) -> u32 {
    rst_kprobe(&ctx);
    0
}

#[inline(always)]
fn rst_kprobe(ctx: &ProbeContext) {
    let sk: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let skb: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    if skb.is_null() {
        return;
    }
    rst_sent(sk, skb, NO_REASON);
}

#[inline(never)]
fn rst_sent(sk: *const u8, skb: *const u8, reason: u32) {
    let o = config::offsets();
    let mut ev = Reset {
        header: header(Kind::RstSent),
        reason,
        ..Default::default()
    };
    if !skb.is_null() {
        // The packet that caused the reset, as it arrived.
        if !read_packet(skb, &o, &mut ev.packet) {
            ev.flags |= flags::NO_HEADERS;
            count(Counter::ReadFailed);
        } else if ev.packet.tcp_flags & tcp_flags::RST != 0 {
            // Not a reset after all: tcp_v4_send_reset()/tcp_v6_send_reset() return at once for
            // a packet carrying RST ("Never send a reset in response to a reset",
            // net/ipv4/tcp_ipv4.c), and their kprobes fire on entry.
            return;
        }
    }
    count(Counter::RstSent);
    count_rst_reason(reason);
    if reason == NO_REASON {
        ev.flags |= flags::NO_REASON_ARG;
    }
    if sk.is_null() {
        ev.flags |= flags::NO_SOCKET;
    }
    if !skb.is_null() {
        let (ifindex, netns) = skb_dev(skb, &o);
        ev.packet.ifindex = ifindex;
        ev.packet.netns = netns;
        if !sk.is_null() {
            let mut from_sk = Packet::default();
            read_sock(sk, &o, &mut from_sk);
            if from_sk.netns != 0 {
                ev.packet.netns = from_sk.netns;
            }
        }
        // Exact attribution: was this very packet (tuple, seq, ack) marked INVALID on its way?
        let key = PacketKey::of(&ev.packet);
        // SAFETY: map value read under RCU.
        if let Some(seen) = unsafe { PENDING_RST.get(key) } {
            let seen = *seen;
            let _ = PENDING_RST.remove(key);
            // A reset answers its packet within a round trip; an entry this old is another
            // connection that reused the same tuple and sequence numbers.
            if ev.header.ts_ns.wrapping_sub(seen.ts_ns) <= PENDING_RST_MAX_AGE_NS {
                ev.cause = seen;
                ev.flags |= flags::CAUSED_BY_INVALID;
                count(Counter::RstFromInvalid);
            } else {
                count(Counter::PendingExpired);
            }
        }
    } else if !sk.is_null() {
        // An active reset (abort) carries no packet: report the socket, seen from the peer.
        read_sock(sk, &o, &mut ev.packet);
        ev.flags |= flags::NO_HEADERS;
    }
    send_reset(Kind::RstSent, &ev);
}

/// Applies `--resets`/`--filter` and the event budget to a reset, then sends it. A reset caused
/// by an INVALID packet is never refused by the budget.
#[inline(always)]
fn send_reset(kind: Kind, ev: &Reset) {
    if !wanted(ev) {
        count(Counter::FilteredReset);
        return;
    }
    if allow(kind, ev.flags & flags::CAUSED_BY_INVALID != 0) {
        emit(kind, ev);
    }
}

#[inline(always)]
fn wanted(ev: &Reset) -> bool {
    let f = config::filter();
    if f.caused_only != 0 && ev.flags & flags::CAUSED_BY_INVALID == 0 {
        return false;
    }
    if f.netns != 0 && ev.packet.netns != f.netns {
        return false;
    }
    packet_matches(&f, &ev.packet)
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn ctt_rst_recv(ctx: BtfTracePointContext) -> i32 {
    try_rst_recv(&ctx);
    0
}

#[inline(always)]
fn try_rst_recv(ctx: &BtfTracePointContext) {
    let o = config::offsets();
    let sk: *const u8 = ctx.arg(0);
    let mut ev = Reset {
        header: header(Kind::RstReceived),
        reason: NO_REASON,
        flags: flags::NO_REASON_ARG,
        ..Default::default()
    };
    count(Counter::RstReceived);
    if !sk.is_null() {
        read_sock(sk, &o, &mut ev.packet);
    }
    send_reset(Kind::RstReceived, &ev);
}

/// Remembers a packet conntrack let through without its flow's NAT (INVALID, or picked up
/// mid-stream) so that a reset it causes, in any namespace, is matched exactly.
#[inline(always)]
pub fn remember_invalid(p: &Packet, ts_ns: u64, skb: u64, hook: u8, shown: bool, cause: Cause) {
    let seen = InvalidSeen {
        ts_ns,
        skb,
        netns: p.netns,
        hook,
        shown: u8::from(shown),
        cause: cause as u8,
        _pad: 0,
    };
    if PENDING_RST.insert(PacketKey::of(p), seen, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
}
