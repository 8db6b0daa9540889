//! The eBPF object loaded with its read-only globals set for this kernel and these decisions.

use aya::{Ebpf, EbpfLoader};
use conntrack_common::plan::{KFREE_REASON, RST_COMPLETE};

use super::{decide::Decided, features::KernelFeatures, LoadError};
use crate::kernel::btf::KernelFacts;

/// Values for the programs' read-only globals.
pub struct Globals {
    /// ct-trace's network namespace: the kprobes report conntrack of this namespace only.
    pub netns: u32,
    /// Records each CPU may send per second (0: no limit).
    pub budget_per_cpu: u32,
    pub filter: conntrack_common::Filter,
    /// Addresses of conntrack's hook functions (kallsyms), zero when unknown.
    pub ct_hook_fns: [u64; 4],
    /// `[start, end)` of `nf_hook_slow()` (kallsyms), zero when unknown: where netfilter frees
    /// what it drops, for kernels whose `kfree_skb` passes no reason.
    pub nf_hook_slow: [u64; 2],
}

impl Globals {
    /// Whether drops are told by where the packet was freed ([`conntrack_common::DROP_IN_NETFILTER`]):
    /// the kernel's `kfree_skb` passes no reason, and `nf_hook_slow()` is known.
    pub fn located_drops(&self, feat: &KernelFeatures) -> bool {
        !feat.has_form(KFREE_REASON) && self.nf_hook_slow[0] != 0
    }
}

/// Loads the object with its read-only globals set for this kernel and these decisions.
pub(super) fn load_object(
    object: &[u8],
    kbtf: &KernelFacts,
    feat: &KernelFeatures,
    decided: &Decided,
    globals: &Globals,
) -> Result<(Ebpf, aya::Btf), LoadError> {
    let offsets = kbtf
        .offsets
        .ok_or_else(|| LoadError::Facts(kbtf.offsets_error.clone()))?;
    log::debug!(
        "kernel offsets: {offsets:?}; conntrack hook functions: {:x?}",
        globals.ct_hook_fns
    );
    let located = globals.located_drops(feat);
    let netfilter_drop = if located {
        conntrack_common::DROP_IN_NETFILTER
    } else {
        kbtf.enum_names("skb_drop_reason")
            .into_iter()
            .find(|(_, n)| n == "SKB_DROP_REASON_NETFILTER_DROP")
            .map_or(u32::MAX, |(v, _)| v)
    };
    let nf_hook_slow = if located {
        globals.nf_hook_slow
    } else {
        [0; 2]
    };
    let flag = |b: bool| u8::from(b);
    let btf =
        aya::Btf::from_sys_fs().map_err(|e| LoadError::Object(aya::EbpfError::BtfError(e)))?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global(
            "CT_OFFSETS",
            kbtf.ct_offsets.as_ref().unwrap_or(&Default::default()),
            true,
        )
        .override_global("RST_HAS_REASON", &flag(feat.has_form(RST_COMPLETE)), true)
        .override_global("RST_KPROBED", &flag(decided.old_resets()), true)
        .override_global("KFREE_HAS_REASON", &flag(feat.has_form(KFREE_REASON)), true)
        .override_global("TARGET_NETNS", &globals.netns, true)
        .override_global("EVENT_BUDGET", &globals.budget_per_cpu, true)
        .override_global("NETFILTER_DROP", &netfilter_drop, true)
        .override_global("CT_HOOK_FNS", &globals.ct_hook_fns, true)
        .override_global("NF_HOOK_SLOW", &nf_hook_slow, true)
        .override_global("FILTER", &globals.filter, true)
        .load(object)
        .map_err(LoadError::Object)?;
    Ok((ebpf, btf))
}
