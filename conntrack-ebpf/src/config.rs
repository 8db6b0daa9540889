//! Read-only globals (`.rodata`) that userspace fills from the running kernel's BTF before load.
//! Frozen by the loader, so the verifier treats their values as constants: the netfilter program's
//! `_nfct` load needs a constant offset (a `.data` value fails with "invalid variable offset").

use conntrack_common::{CtOffsets, Filter, Offsets};

#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    skb_head: 0,
    skb_network_header: 0,
    skb_dev: 0,
    skb_nfct: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    net_ns_inum: 0,
    sk_family: 0,
    sk_state: 0,
    sk_net: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_sport: 0,
    state_hook: 0,
    state_pf: 0,
    state_in: 0,
    state_out: 0,
    state_net: 0,
    net_hooks_ipv4: 0,
    net_hooks_ipv6: 0,
    entries_hooks: 0,
    net_ct_count: 0,
};

#[unsafe(no_mangle)]
static CT_OFFSETS: CtOffsets = CtOffsets {
    status: 0,
    tuple_original: 0,
    tuple_reply: 0,
    proto_tcp: 0,
    net: 0,
    _pad: 0,
};

/// 1 when `tcp:tcp_send_reset` carries `enum sk_rst_reason` as its third argument (6.10+).
#[unsafe(no_mangle)]
static RST_HAS_REASON: u8 = 0;

/// 1 when kprobes on `tcp_v4_send_reset`/`tcp_v6_send_reset` report the resets caused by a
/// packet (kernels before 6.10, whose tracepoint skips resets of packets no socket owns); the
/// tracepoint then reports only the resets without a packet (aborts).
#[unsafe(no_mangle)]
static RST_KPROBED: u8 = 0;

/// 1 when `skb:kfree_skb` carries `enum skb_drop_reason` as its third argument (5.17+).
#[unsafe(no_mangle)]
static KFREE_HAS_REASON: u8 = 0;

/// Inode of the network namespace whose conntrack the kprobes report (ct-trace's own, like the
/// netfilter links): kprobes fire for every namespace.
#[unsafe(no_mangle)]
static TARGET_NETNS: u32 = 0;

/// Records each CPU may send per second (`--event-budget` divided by the CPUs); 0: no limit.
#[unsafe(no_mangle)]
static EVENT_BUDGET: u32 = 0;

/// `SKB_DROP_REASON_NETFILTER_DROP` on this kernel (the numbering differs between kernels), or
/// `u32::MAX` when unknown: a drop with it is the fate `dropped`.
#[unsafe(no_mangle)]
static NETFILTER_DROP: u32 = u32::MAX;

/// `[start, end)` of `nf_hook_slow()` in the kernel's text (kallsyms), on kernels whose
/// `kfree_skb` passes no reason: a packet freed from there was dropped by netfilter. Zero when
/// not used.
#[unsafe(no_mangle)]
static NF_HOOK_SLOW: [u64; 2] = [0; 2];

/// Addresses of conntrack's hook functions (`ipv4_conntrack_in`, `ipv4_conntrack_local`,
/// `ipv6_conntrack_in`, `ipv6_conntrack_local`, from kallsyms): finding one of them in a hook's
/// entries tells that conntrack runs there. All zero when unknown.
#[unsafe(no_mangle)]
static CT_HOOK_FNS: [u64; 4] = [0; 4];

/// Which resets are sent to userspace (`--resets`, `--filter`); the others are only counted.
#[unsafe(no_mangle)]
static FILTER: Filter = Filter {
    caused_only: 0,
    family: 0,
    prefix_len: 0,
    _pad: 0,
    port: 0,
    _pad2: 0,
    netns: 0,
    addr: [0; 16],
};

#[inline(always)]
pub fn offsets() -> Offsets {
    // SAFETY: a plain static; volatile so the compiler cannot fold the zeroes above.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn ct_offsets() -> CtOffsets {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&CT_OFFSETS) }
}

#[inline(always)]
pub fn skb_nfct_offset() -> u32 {
    // SAFETY: as above; read alone so the hot path loads only this one field.
    unsafe { core::ptr::read_volatile(&OFFSETS.skb_nfct) }
}

/// `skb->head` and `skb->network_header` offsets, read alone like [`skb_nfct_offset`]: the
/// netfilter program loads both fields directly from its trusted `skb` (no helper call).
#[inline(always)]
pub fn skb_head_offsets() -> (u32, u32) {
    // SAFETY: as above.
    unsafe {
        (
            core::ptr::read_volatile(&OFFSETS.skb_head),
            core::ptr::read_volatile(&OFFSETS.skb_network_header),
        )
    }
}

#[inline(always)]
pub fn rst_has_reason() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&RST_HAS_REASON) != 0 }
}

#[inline(always)]
pub fn rst_kprobed() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&RST_KPROBED) != 0 }
}

#[inline(always)]
pub fn kfree_has_reason() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&KFREE_HAS_REASON) != 0 }
}

#[inline(always)]
pub fn target_netns() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&TARGET_NETNS) }
}

#[inline(always)]
pub fn event_budget() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&EVENT_BUDGET) }
}

#[inline(always)]
pub fn netfilter_drop() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&NETFILTER_DROP) }
}

#[inline(always)]
pub fn nf_hook_slow() -> [u64; 2] {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&NF_HOOK_SLOW) }
}

#[inline(always)]
pub fn ct_hook_fns() -> [u64; 4] {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&CT_HOOK_FNS) }
}

#[inline(always)]
pub fn filter() -> Filter {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&FILTER) }
}
