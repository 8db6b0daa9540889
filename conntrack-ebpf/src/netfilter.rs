//! The INVALID verdict, seen from a netfilter hook right behind conntrack (Linux 6.4+,
//! `BPF_PROG_TYPE_NETFILTER`, commit fd9c663b9ad6 "bpf: minimal support for programs hooked into
//! netfilter framework").
//!
//! Attached by userspace at PRE_ROUTING and LOCAL_OUT (where `nf_conntrack_in()` runs) with a
//! priority just after `NF_IP_PRI_CONNTRACK`. Conntrack leaves `skb->_nfct == 0` on exactly the
//! packets it marks INVALID (net/netfilter/nf_conntrack_core.c, `nf_conntrack_in()`: "Invalid:
//! inverse of the return code tells the netfilter core what to do" ... `skb->_nfct = 0`);
//! untracked packets carry `IP_CT_UNTRACKED` (7) instead.
//!
//! aya has no netfilter program type, so this is compiled under a `classifier/` section that
//! aya-obj accepts; aya is never asked to load it (see conntrack-user's `netfilter` module).

use conntrack_common::{flags, Counter, Kind, Verdict};

use crate::{
    config,
    maps::{count, emit, PENDING_DROP},
    skb::{header, netns_inum, read, read_packet, IPPROTO_TCP},
    tcp::remember_invalid,
};

/// `struct bpf_nf_ctx` (include/linux/netfilter.h): the verifier types both as trusted pointers.
#[repr(C)]
pub struct NfCtx {
    state: *const u8,
    skb: *const u8,
}

const NF_ACCEPT: i32 = 1;

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
    // The hot path: a tracked packet costs this load and compare, nothing else.
    if nfct == 0 {
        // SAFETY: as above.
        on_invalid(unsafe { (*ctx).state }, skb);
    }
    // An observer: never change the packet's fate.
    NF_ACCEPT
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
    count(Counter::Invalid);
    // SAFETY: probe reads of kernel pointers.
    unsafe {
        ev.hook = read::<u8>(state, o.state_hook).unwrap_or(u8::MAX);
        ev.pf = match read::<u8>(state, o.state_pf).unwrap_or(0) {
            2 => 4,  // NFPROTO_IPV4
            10 => 6, // NFPROTO_IPV6
            other => other,
        };
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
    let netns = ev.packet.netns;
    if !read_packet(skb, &o, &mut ev.packet) {
        ev.flags |= flags::NO_HEADERS;
        count(Counter::ReadFailed);
    }
    ev.packet.netns = netns;
    if ev.packet.proto == IPPROTO_TCP {
        count(Counter::InvalidTcp);
        remember_invalid(&ev.packet, ev.header.ts_ns, ev.skb, ev.hook);
    } else {
        ev.flags |= flags::NOT_TCP;
    }
    if PENDING_DROP.insert(ev.skb, ev.header.ts_ns, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
    emit(&ev);
}
