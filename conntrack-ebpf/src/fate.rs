//! The `skb:kfree_skb` program: the fate of INVALID packets (dropped, and why), and the
//! netfilter drops that are table pressure (handed to `pressure`).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use conntrack_common::{Counter, Drop, Kind, DROP_ELSEWHERE, DROP_IN_NETFILTER, NO_REASON};

use crate::{
    config,
    maps::{allow, count, emit, pending_drop_young, PENDING_DROP, PENDING_TTL_NS},
    pressure,
    skb::header,
};

/// `skb:kfree_skb(skb, location[, reason[, rx_sk]])`. Fires only when a packet is dropped (normal
/// frees go through `consume_skb`), and costs one map lookup: only INVALID packets are in the map.
#[btf_tracepoint(function = "kfree_skb")]
pub fn ctt_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    try_kfree_skb(&ctx);
    0
}

/// Why the kernel freed the packet: the tracepoint's `enum skb_drop_reason` (5.17+), else where
/// it was freed (`location`: in `nf_hook_slow()` or elsewhere, see [`DROP_IN_NETFILTER`]), else
/// [`NO_REASON`].
#[inline(always)]
fn drop_reason(ctx: &BtfTracePointContext) -> u32 {
    if config::kfree_has_reason() {
        return ctx.arg::<u32>(2);
    }
    let [start, end] = config::nf_hook_slow();
    if start == 0 {
        return NO_REASON;
    }
    let location: u64 = ctx.arg(1);
    if location >= start && location < end {
        DROP_IN_NETFILTER
    } else {
        DROP_ELSEWHERE
    }
}

#[inline(always)]
fn try_kfree_skb(ctx: &BtfTracePointContext) {
    let skb: u64 = ctx.arg(0);
    let pending = if pending_drop_young() {
        // SAFETY: map value read; LRU entries are never freed while we hold the RCU read lock.
        unsafe { PENDING_DROP.get(skb) }.copied()
    } else {
        None
    };
    let seen = match pending {
        Some(p) => p,
        None => {
            let reason = drop_reason(ctx);
            if reason != NO_REASON && reason == config::netfilter_drop() {
                pressure::on_netfilter_drop(skb as *const u8);
            }
            return;
        }
    };
    let _ = PENDING_DROP.remove(skb);
    let hdr = header(Kind::Drop);
    if hdr.ts_ns.wrapping_sub(seen.ts_ns) > PENDING_TTL_NS {
        return;
    }
    let reason = drop_reason(ctx);
    count(Counter::Drops);
    if reason != NO_REASON && reason == config::netfilter_drop() {
        count(Counter::InvalidDropped);
    }
    // The fate completes a verdict userspace has; a suppressed verdict's fate is only counted.
    if seen.shown == 0 || !allow(Kind::Drop, true) {
        return;
    }
    emit(
        Kind::Drop,
        &Drop {
            header: hdr,
            skb,
            verdict_ts_ns: seen.ts_ns,
            reason,
            _pad: 0,
        },
    );
}
