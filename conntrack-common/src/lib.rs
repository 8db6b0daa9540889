//! The wire format between ct-trace's eBPF programs and its userspace.
//!
//! Every record in the `EVENTS` ring buffer starts with a [`Header`] whose `kind` says which
//! struct follows. All types are `#[repr(C)]`, made of fixed-width integers and byte arrays only,
//! with explicit padding, and their sizes are asserted at compile time on both sides (this crate is
//! compiled for the bpf target and for the host). Userspace decodes `kind` and the enums inside with
//! `TryFrom`, never by transmuting, so a record from a mismatched build is an error, not garbage.
//!
//! With the `std` feature (userspace only) it also parses the kernel's conntrack counters
//! ([`kstat`]), for ct-trace, its tests and its bench alike; with `harness`, the one runner of
//! a child ([`harness::runner`]) they share.
#![no_std]

// Unit tests always have std: `kstat` is tested also where the feature is off.
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod counter;
#[cfg(any(feature = "harness", test))]
pub mod harness;
pub mod kind;
#[cfg(any(feature = "std", test))]
pub mod kstat;
pub mod plan;
pub mod reason;

pub use counter::{Counter, COUNTERS};
pub use kind::Kind;
pub use reason::ReasonClass;

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// TCP header flag bits, as in [`Packet::tcp_flags`] (the 14th byte of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// `Reset::reason` / `Drop::reason` when the kernel passed none (`enum sk_rst_reason` before
/// 6.10, `enum skb_drop_reason` before 5.17). A plain integer, not an `Option`: an `Option`
/// argument of a BPF-to-BPF call takes two registers, and the caller leaves the second unset
/// for `None`, which the verifier rejects ("R4 !read_ok").
pub const NO_REASON: u32 = u32::MAX;

/// The drop "reasons" ct-trace gives a freed packet on kernels whose `kfree_skb` tracepoint
/// passes none (before 5.17, commit c504e5c2f964): where it was freed tells them apart.
/// `nf_hook_slow()` frees what a netfilter rule (or conntrack) dropped with NF_DROP...
pub const DROP_IN_NETFILTER: u32 = 0xffff_0001;
/// ... and anything freed elsewhere was not dropped by netfilter.
pub const DROP_ELSEWHERE: u32 = 0xffff_0002;

/// Slots of the per-CPU `RST_REASONS` counters: resets sent, by `enum sk_rst_reason` value
/// (6.10+). The last slot counts a reset whose reason the kernel did not give (before 6.10, or
/// [`NO_REASON`]) or whose value is beyond the table, so the slots always sum to `rst_sent`.
pub const RST_REASON_SLOTS: u32 = 64;

/// Netfilter protocol families (`NFPROTO_*`, include/uapi/linux/netfilter.h), as
/// `nf_hook_state.pf` holds them.
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// The netfilter families ct-trace watches.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4 = NFPROTO_IPV4,
    Ipv6 = NFPROTO_IPV6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// Bumped whenever any record layout changes.
pub const WIRE_VERSION: u8 = 5;

/// Size of the `EVENTS` ring buffer in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 1 << 22;

/// How long an INVALID packet can be matched to a reset it causes (10 s).
pub const PENDING_RST_MAX_AGE_NS: u64 = 10_000_000_000;

/// Entries of the LRU maps that remember INVALID packets until their fate or their reset is seen.
/// A reset answers its packet within a round trip, so at 100k INVALID packets per second this
/// still covers 160 ms.
pub const PENDING_ENTRIES: u32 = 16384;

/// Default event budget (`--event-budget`): events per second, shared equally by the CPUs.
pub const DEFAULT_EVENT_BUDGET: u32 = 20_000;

/// How often the per-CPU event budget refills (1 s).
pub const BUDGET_WINDOW_NS: u64 = 1_000_000_000;

/// First bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: u8,
    pub _pad: [u8; 2],
    pub _pad2: u32,
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME, so userspace can turn it into wall-clock time.
    pub ts_ns: u64,
}

/// A TCP/IP packet as the programs parse it out of an `sk_buff`. Addresses are in network order;
/// an IPv4 address occupies the first 4 bytes. Ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// Inode number of the network namespace (what `ls -l /proc/PID/ns/net` shows).
    pub netns: u32,
    /// Interface the packet came in on (0 if none or unknown).
    pub ifindex: u32,
    /// 4 or 6; 0 when the headers could not be read.
    pub family: u8,
    /// IP protocol number (6 = TCP).
    pub proto: u8,
    /// TCP flags byte ([`tcp_flags`] bits).
    pub tcp_flags: u8,
    pub _pad: u8,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub seq: u32,
    pub ack: u32,
    /// TCP payload bytes (IP total length minus IP and TCP headers).
    pub payload_len: u16,
    /// ICMP/ICMPv6 message type (`proto` 1 or 58).
    pub icmp_type: u8,
    pub _pad3: u8,
    pub _pad2: u32,
}

/// Identity of a packet, used to find it again in another namespace: a reset's triggering packet
/// is the very packet conntrack marked INVALID on its way (same tuple, seq and ack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PacketKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

impl PacketKey {
    pub const fn of(p: &Packet) -> Self {
        Self {
            saddr: p.saddr,
            daddr: p.daddr,
            sport: p.sport,
            dport: p.dport,
            seq: p.seq,
            ack: p.ack,
            family: p.family,
            _pad: [0; 3],
        }
    }
}

/// What the kernel remembers about an INVALID packet until a reset it causes is seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvalidSeen {
    pub ts_ns: u64,
    /// Identifies the verdict record in userspace with `ts_ns` (the `sk_buff` address: never
    /// printed; addresses are reused, the pair is not).
    pub skb: u64,
    pub netns: u32,
    pub hook: u8,
    /// 1 when the verdict's record was sent to userspace (not suppressed by the event budget).
    pub shown: u8,
    /// [`Cause`]: what was wrong with the packet.
    pub cause: u8,
    pub _pad: u8,
}

/// Why conntrack let a packet through without its flow's NAT ([`InvalidSeen::cause`]). The
/// discriminants are part of the wire format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Marked INVALID ([`Verdict`]): no entry at all.
    InvalidPacket = 0,
    /// Picked up mid-stream in a brand-new entry ([`Kind::Midstream`]): the flow's entry was lost.
    EntryLost = 1,
}

impl TryFrom<u8> for Cause {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            0 => Self::InvalidPacket,
            1 => Self::EntryLost,
            other => return Err(other),
        })
    }
}

/// What the kernel remembers about an INVALID packet until it is freed (its fate).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingDrop {
    /// The verdict's `Header::ts_ns`: with the `sk_buff` address it names the verdict.
    pub ts_ns: u64,
    /// 1 when the verdict's record was sent: only then is a [`Drop`] record sent too.
    pub shown: u8,
    pub _pad: [u8; 7],
}

/// Why a record is incomplete (bit set in `Reset::flags` / `Verdict::flags`).
pub mod flags {
    /// The packet headers could not be read.
    pub const NO_HEADERS: u16 = 1 << 0;
    /// `tcp_send_reset` has no reason argument on this kernel.
    pub const NO_REASON_ARG: u16 = 1 << 1;
    /// `tcp_send_reset` was called with `sk == NULL` (no socket: the case ct-trace is about).
    pub const NO_SOCKET: u16 = 1 << 2;
    /// The triggering packet was seen INVALID before: `Reset::cause` is filled.
    pub const CAUSED_BY_INVALID: u16 = 1 << 3;
    /// The packet is not TCP.
    pub const NOT_TCP: u16 = 1 << 4;
}

/// A reset sent or received. For `RstSent` the packet is the one that *caused* the reset (the
/// kernel's `skb` argument) as it arrived; the reset itself goes the opposite way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reset {
    pub header: Header,
    pub packet: Packet,
    /// `enum sk_rst_reason` value (6.10+), or [`NO_REASON`] when unknown.
    pub reason: u32,
    pub flags: u16,
    pub _pad: [u8; 2],
    /// When `CAUSED_BY_INVALID`: what the kernel remembered of that INVALID verdict.
    pub cause: InvalidSeen,
}

/// `NF_INET_NUMHOOKS`: the number of [`Hook`]s.
pub const NF_INET_NUMHOOKS: u8 = 5;

/// The netfilter hook a verdict was taken at (`enum nf_inet_hooks`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PreRouting = 0,
    LocalIn = 1,
    Forward = 2,
    LocalOut = 3,
    PostRouting = 4,
}

impl TryFrom<u8> for Hook {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            0 => Self::PreRouting,
            1 => Self::LocalIn,
            2 => Self::Forward,
            3 => Self::LocalOut,
            4 => Self::PostRouting,
            other => return Err(other),
        })
    }
}

impl Hook {
    /// The hook's name as iptables/nft spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PreRouting => "prerouting",
            Self::LocalIn => "input",
            Self::Forward => "forward",
            Self::LocalOut => "output",
            Self::PostRouting => "postrouting",
        }
    }

    /// The name of a record's raw hook field; `unknown` for a value that is no hook (`u8::MAX`:
    /// the program could not read it).
    pub fn name_of(hook: u8) -> &'static str {
        Self::try_from(hook).map_or("unknown", Self::name)
    }
}

/// Conntrack left this packet without an entry: INVALID.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub header: Header,
    pub packet: Packet,
    /// Identifies the packet for the fate and reason records (never printed).
    pub skb: u64,
    pub out_ifindex: u32,
    pub hook: u8,
    pub _pad: u8,
    pub flags: u16,
}

/// A packet seen INVALID was then dropped by netfilter (a rule, or conntrack itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drop {
    pub header: Header,
    pub skb: u64,
    /// The verdict's `Header::ts_ns` (with `skb`, names the verdict).
    pub verdict_ts_ns: u64,
    /// `enum skb_drop_reason` value, or [`NO_REASON`] when the kernel does not pass one.
    pub reason: u32,
    pub _pad: u32,
}

/// A table-pressure record ([`Kind::Midstream`], [`Kind::TableFull`]): the packet, and the
/// namespace's conntrack entry count at that moment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub header: Header,
    pub packet: Packet,
    /// Identifies the packet (never printed).
    pub skb: u64,
    /// `net->ct.count`: entries in the namespace's table; `u32::MAX` when unknown.
    pub entries: u32,
    /// `enum nf_inet_hooks` where the packet was seen (`u8::MAX` when unknown: a drop).
    pub hook: u8,
    pub _pad: [u8; 3],
}

/// `ct->status` bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod ips {
    pub const ASSURED: u64 = 1 << 2;
    pub const CONFIRMED: u64 = 1 << 3;
}

/// `enum ip_conntrack_info` values in the low 3 bits of `skb->_nfct`
/// (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod ctinfo {
    /// Original direction, no reply seen yet: for an unconfirmed entry, the packet created it.
    pub const NEW: u64 = 2;
    pub const MASK: u64 = 7;
}

/// Bytes of `struct ip_ct_tcp` copied into a [`Reason`] (the struct is 56-60 bytes on 6.1-7.2).
pub const CT_TCP_BYTES: usize = 64;
/// Bytes of one `struct nf_conntrack_tuple` copied into a [`Reason`] (40 on every kernel since
/// 2.6; userspace checks the size in BTF and decodes with BTF offsets).
pub const CT_TUPLE_BYTES: usize = 40;
/// Bytes of the log format string copied into a [`Reason`].
pub const FMT_BYTES: usize = 96;

/// Why conntrack refused a packet, as its log helper was called, with the conntrack entry as it
/// was at that moment. The raw kernel structures are decoded in userspace with offsets from the
/// running kernel's BTF. Joined to a [`Verdict`] by `skb`; a TCP reason with no verdict means the
/// packet was only ignored (6.1+ `NFCT_TCP_IGNORE`: it kept its entry and its NAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason {
    pub header: Header,
    pub packet: Packet,
    pub skb: u64,
    /// `ct->status` (`IPS_*` bits); 0 without an entry.
    pub ct_status: u64,
    /// The first two integer arguments after the format string (x86-64: r8, r9), which the
    /// format's `%u`/`%d` print.
    pub args: [u64; 2],
    /// `enum nf_inet_hooks` of the hook state.
    pub hook: u8,
    /// 1 when `ct_tcp` and `ct_tuples` were read from an entry.
    pub has_ct: u8,
    pub _pad: u16,
    pub _pad2: u32,
    /// `ct->proto.tcp` (`struct ip_ct_tcp`), raw.
    pub ct_tcp: [u8; CT_TCP_BYTES],
    /// `ct->tuplehash[IP_CT_DIR_ORIGINAL]` and `[IP_CT_DIR_REPLY]` `.tuple`, raw.
    pub ct_tuples: [[u8; CT_TUPLE_BYTES]; 2],
    /// The format string, NUL-terminated (truncated to fit).
    pub fmt: [u8; FMT_BYTES],
}

impl Default for Reason {
    fn default() -> Self {
        Self {
            header: Header::default(),
            packet: Packet::default(),
            skb: 0,
            ct_status: 0,
            args: [0; 2],
            hook: 0,
            has_ct: 0,
            _pad: 0,
            _pad2: 0,
            ct_tcp: [0; CT_TCP_BYTES],
            ct_tuples: [[0; CT_TUPLE_BYTES]; 2],
            fmt: [0; FMT_BYTES],
        }
    }
}

/// Per-CPU state of the event budget: records sent in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub window_start_ns: u64,
    pub used: u32,
    pub _pad: u32,
}

/// Kernel-side event filter (`--resets`, `--host`, `--port`, `--netns`): a record that does not
/// match is counted as filtered and not sent. Counting happens before filtering, so the counts
/// still equal the kernel's. `caused_only` and `netns` apply to resets (any namespace produces
/// them by the thousand), `addr` and `port` to resets and INVALID verdicts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// 1: send only resets whose triggering packet was INVALID (the attributable ones).
    pub caused_only: u8,
    /// 4 or 6 when `addr`/`prefix_len` are set (either end of the reset's packet must be in
    /// the prefix); 0: any address.
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: u8,
    /// Either port of the reset's packet must equal this; 0: any port.
    pub port: u16,
    pub _pad2: u16,
    /// Only resets in this network namespace (inode); 0: any.
    pub netns: u32,
    pub addr: [u8; 16],
}

/// Kernel structure offsets (bytes) that userspace reads from the running kernel's BTF and
/// writes into the programs' read-only globals before loading. Field names say `struct.field`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_dev: u32,
    pub skb_nfct: u32,
    pub dev_ifindex: u32,
    pub dev_nd_net: u32,
    pub net_ns_inum: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_net: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    /// `inet_sock.inet_sport`: a full socket's local port, kept when `skc_num` is cleared (a
    /// socket closed with an abort: `tcp_set_state(TCP_CLOSE)` -> `inet_put_port()` zeroes
    /// `inet_num` before `tcp_send_active_reset()`, net/ipv4/inet_hashtables.c).
    pub sk_sport: u32,
    pub state_hook: u32,
    pub state_pf: u32,
    pub state_in: u32,
    pub state_out: u32,
    pub state_net: u32,
    /// `net.nf.hooks_ipv4` / `net.nf.hooks_ipv6`: the hook entries conntrack registers in.
    pub net_hooks_ipv4: u32,
    pub net_hooks_ipv6: u32,
    /// `nf_hook_entries.hooks`: first `struct nf_hook_entry { hookfn, priv }`.
    pub entries_hooks: u32,
    /// `net.ct.count`: the namespace's conntrack entries (0 when unknown).
    pub net_ct_count: u32,
}

/// Offsets into `struct nf_conn`, from the BTF of the module that defines it (`nf_conntrack`
/// on distribution kernels, vmlinux when built in). All zero when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtOffsets {
    pub status: u32,
    pub tuple_original: u32,
    pub tuple_reply: u32,
    pub proto_tcp: u32,
    /// `ct_net.net`: the entry's namespace (0 when the kernel has no network namespaces).
    pub net: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C), made only of integers and byte arrays, and every padding
    // byte is an explicit field, so any bit pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for super::PacketKey {}
    unsafe impl aya::Pod for super::InvalidSeen {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::CtOffsets {}
    unsafe impl aya::Pod for super::PendingDrop {}
    unsafe impl aya::Pod for super::Budget {}
    unsafe impl aya::Pod for super::Filter {}
}

// Sizes are part of the wire format: a change here must bump WIRE_VERSION.
const _: () = assert!(core::mem::size_of::<Header>() == 16);
const _: () = assert!(core::mem::size_of::<Packet>() == 64);
const _: () = assert!(core::mem::size_of::<PacketKey>() == 48);
const _: () = assert!(core::mem::size_of::<InvalidSeen>() == 24);
const _: () = assert!(core::mem::size_of::<Reset>() == 16 + 64 + 8 + 24);
const _: () = assert!(core::mem::size_of::<Verdict>() == 16 + 64 + 16);
const _: () = assert!(core::mem::size_of::<Drop>() == 40);
const _: () = assert!(core::mem::size_of::<Pressure>() == 16 + 64 + 16);
const _: () = assert!(core::mem::size_of::<PendingDrop>() == 16);
const _: () = assert!(core::mem::size_of::<Budget>() == 16);
const _: () = assert!(core::mem::size_of::<Filter>() == 28);
const _: () = assert!(core::mem::size_of::<Offsets>() == 26 * 4);
const _: () = assert!(core::mem::size_of::<CtOffsets>() == 24);
const _: () = assert!(
    core::mem::size_of::<Reason>()
        == 16 + 64 + 8 + 8 + 16 + 8 + CT_TCP_BYTES + 2 * CT_TUPLE_BYTES + FMT_BYTES
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_has_a_name_and_nothing_else_does() {
        for v in 0..NF_INET_NUMHOOKS {
            let hook = Hook::try_from(v).unwrap();
            assert_eq!(hook as u8, v);
            assert_eq!(Hook::name_of(v), hook.name());
        }
        assert_eq!(Hook::name_of(NF_INET_NUMHOOKS), "unknown");
        assert_eq!(Hook::name_of(u8::MAX), "unknown");
        assert_eq!(Family::Ipv6 as u8, NFPROTO_IPV6);
    }
}
