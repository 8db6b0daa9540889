//! Table pressure: packets conntrack could not make an entry for because the namespace's table
//! was full. `init_conntrack()` (net/netfilter/nf_conntrack_core.c) refuses a new entry when the
//! count exceeds `nf_conntrack_max` and `early_drop()` found nothing to evict; it undoes its
//! increment, warns "table full, dropping packet", and `nf_conntrack_in()` returns NF_DROP, so
//! the packet is freed by `nf_hook_slow()` with `SKB_DROP_REASON_NETFILTER_DROP` and no entry
//! (`_nfct == 0`). The count is then still at the limit. A netfilter drop of a packet without an
//! entry while the table has room is something else (a rule ahead of conntrack) and is only
//! counted. Flows picked up mid-stream are seen by `netfilter::on_new`.

use conntrack_common::{Counter, Kind, Offsets, Pressure};

use crate::{
    config,
    filter::admit,
    maps::{count, emit, CT_MAX},
    skb::{header, netns_inum, read, read_packet},
};

/// `net->ct.count` of a `struct net *`, `u32::MAX` when unknown.
#[inline(always)]
pub fn ct_count(net: *const u8, o: &Offsets) -> u32 {
    if net.is_null() || o.net_ct_count == 0 {
        return u32::MAX;
    }
    // SAFETY: probe read of a kernel pointer.
    unsafe { read::<u32>(net, o.net_ct_count) }.unwrap_or(u32::MAX)
}

/// A netfilter drop (`kfree_skb` with NETFILTER_DROP) of a packet ct-trace did not see INVALID.
#[inline(never)]
pub fn on_netfilter_drop(skb: *const u8) {
    let o = config::offsets();
    // SAFETY: probe reads of kernel pointers; the skb is being freed, not yet freed.
    let (nfct, net) = unsafe {
        let nfct = read::<u64>(skb, o.skb_nfct).unwrap_or(1);
        let dev = read::<u64>(skb, o.skb_dev).unwrap_or(0) as *const u8;
        let net = if dev.is_null() {
            core::ptr::null()
        } else {
            read::<u64>(dev, o.dev_nd_net).unwrap_or(0) as *const u8
        };
        (nfct, net)
    };
    if nfct != 0 || net.is_null() {
        return;
    }
    let netns = netns_inum(net, &o);
    if netns != config::target_netns() {
        return;
    }
    // With the count known (kernels before 5.19 keep it in `struct net`; later ones moved it to
    // nf_conntrack's per-net generic data, which has no BTF-visible path), a drop while the table
    // has room is not table pressure. Without it, every such drop is reported, `entries` unknown.
    let max = CT_MAX.get(0).copied().unwrap_or(0);
    let entries = ct_count(net, &o);
    if entries != u32::MAX && max != 0 && entries < max {
        count(Counter::NfDropUntracked);
        return;
    }
    count(Counter::TableFull);
    let mut ev = Pressure {
        header: header(Kind::TableFull),
        skb: skb as u64,
        entries,
        hook: u8::MAX,
        ..Default::default()
    };
    if !read_packet(skb, &o, &mut ev.packet) {
        count(Counter::ReadFailed);
    }
    ev.packet.netns = netns;
    if admit(Kind::TableFull, &ev.packet, Counter::FilteredTableFull) {
        emit(Kind::TableFull, &ev);
    }
}
