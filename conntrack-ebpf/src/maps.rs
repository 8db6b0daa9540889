//! Every map of ct-trace, and the small helpers that touch them.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use conntrack_common::{Counter, InvalidSeen, PacketKey, COUNTERS, PENDING_ENTRIES, RING_BYTES};

/// All events, in the order they were reserved.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-CPU counters, indexed by [`Counter`]; userspace sums them.
#[map]
pub static COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// INVALID packets by identity, until a reset they cause is seen (written only for INVALID
/// packets, never for ordinary traffic). LRU: bounded, oldest evicted first.
#[map]
pub static PENDING_RST: LruHashMap<PacketKey, InvalidSeen> =
    LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

/// `sk_buff` address of INVALID packets -> verdict time, until the packet is freed.
#[map]
pub static PENDING_DROP: LruHashMap<u64, u64> = LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS_MAP.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
        unsafe { *p += 1 };
    }
}

/// Sends one record; a full ring buffer is counted, never silent.
#[inline(always)]
pub fn emit<T: 'static>(record: &T) {
    if EVENTS.output::<T>(record, 0).is_err() {
        count(Counter::RingFull);
    }
}
