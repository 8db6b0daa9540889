//! The INVALID verdict, seen from a netfilter hook right behind conntrack (Linux 6.4+,
//! `BPF_PROG_TYPE_NETFILTER`, commit fd9c663b9ad6 "bpf: minimal support for programs hooked into
//! netfilter framework").
//!
//! Attached by userspace at PRE_ROUTING and LOCAL_OUT (where `nf_conntrack_in()` runs) with a
//! priority just after `NF_IP_PRI_CONNTRACK`. Conntrack leaves `skb->_nfct == 0` on exactly the
//! packets it marks INVALID (net/netfilter/nf_conntrack_core.c, `nf_conntrack_in()`: "Invalid:
//! inverse of the return code tells the netfilter core what to do" ... `skb->_nfct = 0`);
//! untracked packets carry `IP_CT_UNTRACKED` (7) instead. Two other kinds of packet also arrive
//! here with `_nfct == 0`, and neither is INVALID: those of a family whose conntrack hooks are
//! not registered in the namespace (no rule or NAT needs them, e.g. IPv6 on an IPv4-only node:
//! conntrack never saw them), and ICMP errors conntrack could not relate to an entry (counted
//! `error`, `nf_conntrack_handle_icmp()`). Both are told apart here, exactly, per packet.
//!
//! aya has no netfilter program type, so this is compiled under a `classifier/` section that
//! aya-obj accepts; aya is never asked to load it (see conntrack-user's `netfilter` module).

use aya_ebpf::{cty::c_void, helpers::generated as gen, macros::map, maps::PerCpuArray};
use conntrack_common::{
    ctinfo, flags, ips, tcp_flags, Cause, Counter, Hook, Kind, Offsets, Packet, PendingDrop,
    Pressure, Verdict, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, NFPROTO_IPV4, NFPROTO_IPV6,
    NF_INET_NUMHOOKS,
};

use crate::{
    config,
    filter::admit,
    maps::{count, emit, remember_pending_drop},
    pressure::ct_count,
    skb::{header, netns_inum, read, read_packet},
    tcp::remember_invalid,
};

/// `struct bpf_nf_ctx` (include/linux/netfilter.h): the verifier types both as trusted pointers.
#[repr(C)]
pub struct NfCtx {
    state: *const u8,
    skb: *const u8,
}

const NF_ACCEPT: i32 = 1;
/// Hook entries looked at for conntrack's function (a namespace has a handful per hook).
const MAX_ENTRIES: u32 = 32;

#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/ctt_nf_verdict")]
pub extern "C" fn ctt_nf_verdict(ctx: *const NfCtx) -> i32 {
    // SAFETY: ctx is the kernel's bpf_nf_ctx; the verifier checks both loads. The `_nfct` offset
    // is a frozen .rodata constant, so this is one bounded load on a trusted pointer.
    let (skb, nfct) = unsafe {
        let skb = (*ctx).skb;
        let off = config::skb_nfct_offset() as usize;
        (skb, core::ptr::read_volatile(skb.add(off) as *const u64))
    };
    // The hot path: a packet of a known flow costs this load and two compares, nothing else.
    // Measured by tests/scripts/nf-cost.sh with kernel.bpf_stats_enabled=1, a run costs within
    // 1-3 ns of an empty netfilter program's at the same hooks (the bench: 3-13 ns); that floor
    // is 70-100 ns a run on the bench's VM host, almost all of it the statistics' own two
    // sched_clock() reads around the program (`__bpf_prog_run()`, commit 492ecee892c2 "bpf:
    // enable program stats"): `cargo xtask bench` measures them alone at 67 ns a run there.
    if nfct == 0 {
        // SAFETY: as above.
        let state = unsafe { (*ctx).state };
        if conntrack_ran(state) {
            on_invalid(state, skb);
        } else {
            count(Counter::Untracked);
        }
    } else if nfct & ctinfo::MASK == ctinfo::NEW && !syn_or_not_tcp(skb) {
        // SAFETY: as above.
        let state = unsafe { (*ctx).state };
        on_new(state, skb, nfct);
    }
    // An observer: never change the packet's fate.
    NF_ACCEPT
}

/// Bytes of the network header read at once by [`syn_or_not_tcp`]: a TCP header behind an IPv6
/// header (40 + 20), which also covers one behind an IPv4 header without options (20 + 20).
const FIRST_BYTES: usize = 60;

/// Whether a NEW packet is surely no mid-stream pickup: a TCP SYN, or not TCP. Nearly every
/// NEW packet is a connection's SYN, and `on_new` (ct status, then every header, each a
/// `bpf_probe_read_kernel` call, in a subprogram) made them cost ~500 ns a run on the bench's
/// crr workload: this answers with two direct loads from the skb (the netfilter program's
/// trusted one, or an fexit program's BTF-typed argument) and one probe read.
/// It reads the same bytes `read_packet` would and decides only where each of read_packet's
/// reads falls inside its own, which succeeded: it says `true` only where `on_new` would report
/// nothing. When unsure (the read fails; IPv4 options) it says `false` and `on_new` decides.
#[inline(always)]
pub fn syn_or_not_tcp(skb: *const u8) -> bool {
    let (head_off, nh_off) = config::skb_head_offsets();
    let mut first = core::mem::MaybeUninit::<[u8; FIRST_BYTES]>::uninit();
    // SAFETY: plain loads from the verifier-typed skb at constant (frozen .rodata) offsets, as
    // for `_nfct`; the packet itself only through a probe read, which fills `first` when it
    // returns 0 (the helper zeroes it on failure).
    let first = unsafe {
        let head = core::ptr::read_volatile(skb.add(head_off as usize) as *const u64);
        let nh = core::ptr::read_volatile(skb.add(nh_off as usize) as *const u16);
        if head == 0 {
            return false;
        }
        let ret = gen::bpf_probe_read_kernel(
            first.as_mut_ptr() as *mut c_void,
            FIRST_BYTES as u32,
            (head as *const u8).add(nh as usize) as *const c_void,
        );
        if ret != 0 {
            return false;
        }
        first.assume_init()
    };
    // Where read_packet finds the protocol and the TCP flags (constant indices: no copy).
    let (proto, flags) = match first[0] {
        // IPv4 without options (IHL 5).
        0x45 => (first[9], first[20 + 13]),
        v if v >> 4 == 4 => return false,
        v if v >> 4 == 6 => (first[6], first[40 + 13]),
        // read_packet gives up: on_new reports nothing either.
        _ => return true,
    };
    proto != IPPROTO_TCP || flags & tcp_flags::SYN != 0
}

/// The `nf_hook_entries` pointer last seen for one (family, hook) on this CPU, and whether
/// conntrack's hook function is among those entries. The kernel replaces the whole array (RCU)
/// whenever a hook is registered or removed, so an unchanged pointer means an unchanged answer:
/// in steady state this is two loads and a compare, and no map write.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HookCache {
    entries: u64,
    active: u32,
    _pad: u32,
}

#[map]
static HOOK_CACHE: PerCpuArray<HookCache> =
    PerCpuArray::with_max_entries(2 * NF_INET_NUMHOOKS as u32, 0);

/// Whether conntrack's hook ran on this packet before ours: is one of conntrack's hook functions
/// registered at this hook of this family in this namespace (`net->nf.hooks_ipv4[hook]`)?
#[inline(never)]
fn conntrack_ran(state: *const u8) -> bool {
    let fns = config::ct_hook_fns();
    let o = config::offsets();
    // SAFETY: probe reads of kernel pointers.
    unsafe {
        let pf = read::<u8>(state, o.state_pf).unwrap_or(0);
        let hook = read::<u8>(state, o.state_hook).unwrap_or(u8::MAX);
        let (field, family) = match pf {
            NFPROTO_IPV4 => (o.net_hooks_ipv4, 0u32),
            NFPROTO_IPV6 => (o.net_hooks_ipv6, 1),
            _ => return true,
        };
        // Unknown layout or addresses: trust the verdict (userspace says so at start-up).
        // Not `fns == [0; 4]`: LLVM may fold that zero constant onto CT_HOOK_FNS's own
        // (all-zero, as compiled) storage, and the comparison would then always hold.
        if fns[0] | fns[1] | fns[2] | fns[3] == 0
            || field == 0
            || o.entries_hooks == 0
            || hook >= NF_INET_NUMHOOKS
        {
            return true;
        }
        let net = read::<u64>(state, o.state_net).unwrap_or(0) as *const u8;
        if net.is_null() {
            return true;
        }
        let entries = read::<u64>(net, field + u32::from(hook) * 8).unwrap_or(0);
        let Some(cache) =
            HOOK_CACHE.get_ptr_mut(family * NF_INET_NUMHOOKS as u32 + u32::from(hook))
        else {
            return true;
        };
        if (*cache).entries == entries && entries != 0 {
            return (*cache).active != 0;
        }
        let active = scan_entries(entries as *const u8, fns, &o);
        *cache = HookCache {
            entries,
            active: u32::from(active),
            _pad: 0,
        };
        active
    }
}

/// `struct nf_hook_entries { u16 num_hook_entries; struct nf_hook_entry hooks[]; }`
/// (include/linux/netfilter.h), each entry `{ nf_hookfn *hook; void *priv; }`.
#[inline(always)]
fn scan_entries(entries: *const u8, fns: [u64; 4], o: &Offsets) -> bool {
    if entries.is_null() {
        return false;
    }
    // SAFETY: probe reads of a kernel pointer.
    let n = u32::from(unsafe { read::<u16>(entries, 0) }.unwrap_or(0));
    for i in 0..MAX_ENTRIES {
        if i >= n {
            break;
        }
        // SAFETY: as above.
        let f = unsafe { read::<u64>(entries, o.entries_hooks + i * 16) }.unwrap_or(0);
        if f != 0 && (f == fns[0] || f == fns[1] || f == fns[2] || f == fns[3]) {
            return true;
        }
    }
    false
}

/// ICMP errors (destination unreachable, time exceeded, ...) that conntrack could not relate to
/// an entry are left without one and counted as `error`, not `invalid`.
#[inline(always)]
fn icmp_error(p: &Packet) -> bool {
    match p.proto {
        IPPROTO_ICMP => matches!(p.icmp_type, 3 | 4 | 5 | 11 | 12),
        // ICMPv6 error messages are types 0-127 (RFC 4443).
        IPPROTO_ICMPV6 => p.icmp_type < 128,
        _ => false,
    }
}

/// Reports a packet conntrack left without an entry; shared with the kretprobe fallback
/// (`conntrack::ctt_ct_in_ret`), which sees the same `state` and `skb`.
#[inline(never)]
pub fn on_invalid(state: *const u8, skb: *const u8) {
    let o = config::offsets();
    let mut ev = Verdict {
        header: header(Kind::Invalid),
        skb: skb as u64,
        ..Default::default()
    };
    if !read_packet(skb, &o, &mut ev.packet) {
        ev.flags |= flags::NO_HEADERS;
        count(Counter::ReadFailed);
    } else if icmp_error(&ev.packet) {
        count(Counter::IcmpError);
        return;
    }
    // SAFETY: probe reads of kernel pointers.
    unsafe {
        ev.hook = read::<u8>(state, o.state_hook).unwrap_or(u8::MAX);
        let net = read::<u64>(state, o.state_net).unwrap_or(0) as *const u8;
        ev.packet.netns = netns_inum(net, &o);
        for (field, slot) in [(o.state_in, 0usize), (o.state_out, 1)] {
            let dev = read::<u64>(state, field).unwrap_or(0) as *const u8;
            if !dev.is_null() {
                let ifindex = read::<u32>(dev, o.dev_ifindex).unwrap_or(0);
                if slot == 0 {
                    ev.packet.ifindex = ifindex;
                } else {
                    ev.out_ifindex = ifindex;
                }
            }
        }
    }
    count(if ev.hook == Hook::LocalOut as u8 {
        Counter::InvalidOutput
    } else {
        Counter::InvalidPrerouting
    });
    let shown = admit(Kind::Invalid, &ev.packet, Counter::FilteredInvalid);
    if ev.packet.proto == IPPROTO_TCP && ev.flags & flags::NO_HEADERS == 0 {
        count(Counter::InvalidTcp);
        remember_invalid(
            &ev.packet,
            ev.header.ts_ns,
            ev.skb,
            ev.hook,
            shown,
            Cause::InvalidPacket,
        );
    } else {
        ev.flags |= flags::NOT_TCP;
    }
    let pending = PendingDrop {
        ts_ns: ev.header.ts_ns,
        shown: u8::from(shown),
        _pad: [0; 7],
    };
    remember_pending_drop(ev.skb, &pending);
    if shown {
        emit(Kind::Invalid, &ev);
    }
}

/// A packet in the original direction of an entry with no reply yet (`IP_CT_NEW`). When the
/// entry is unconfirmed this very packet created it; a TCP packet without SYN can only do that
/// when conntrack picks a flow up mid-stream (`nf_conntrack_tcp_loose`, `tcp_new()` in
/// nf_conntrack_proto_tcp.c), i.e. when the flow's earlier entry - and its NAT - were lost.
/// Shared with the kretprobe fallback. Runs only for packets that opened an entry.
#[inline(never)]
pub fn on_new(state: *const u8, skb: *const u8, nfct: u64) {
    let c = config::ct_offsets();
    if c.status == 0 {
        return;
    }
    let ct = (nfct & !ctinfo::MASK) as *const u8;
    // SAFETY: probe read of a kernel pointer.
    let status = unsafe { read::<u64>(ct, c.status) }.unwrap_or(ips::CONFIRMED);
    if status & ips::CONFIRMED != 0 {
        // A retransmitted opening packet of an entry already in the table.
        return;
    }
    let o = config::offsets();
    let mut ev = Pressure {
        skb: skb as u64,
        ..Default::default()
    };
    // Every new connection's SYN gets this far: it costs the header reads, nothing more.
    if !read_packet(skb, &o, &mut ev.packet)
        || ev.packet.proto != IPPROTO_TCP
        || ev.packet.tcp_flags & tcp_flags::SYN != 0
    {
        return;
    }
    ev.header = header(Kind::Midstream);
    // SAFETY: probe reads of kernel pointers.
    let net = unsafe {
        ev.hook = read::<u8>(state, o.state_hook).unwrap_or(u8::MAX);
        read::<u64>(state, o.state_net).unwrap_or(0) as *const u8
    };
    ev.packet.netns = netns_inum(net, &o);
    ev.entries = ct_count(net, &o);
    count(Counter::Midstream);
    let shown = admit(Kind::Midstream, &ev.packet, Counter::FilteredMidstream);
    remember_invalid(
        &ev.packet,
        ev.header.ts_ns,
        ev.skb,
        ev.hook,
        shown,
        Cause::EntryLost,
    );
    if shown {
        emit(Kind::Midstream, &ev);
    }
}
