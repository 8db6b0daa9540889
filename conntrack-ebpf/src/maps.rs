//! Every map of ct-trace, and the small helpers that touch them: counting, the event budget, and
//! sending records.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use conntrack_common::{
    Budget, Counter, InvalidSeen, Kind, PacketKey, PendingDrop, BUDGET_WINDOW_NS, COUNTERS,
    PENDING_ENTRIES, RING_BYTES, RST_REASON_SLOTS,
};

use crate::config;

/// All events, in the order they were reserved.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-CPU counters, indexed by [`Counter`]; userspace sums them.
#[map]
pub static COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// Resets sent, by reason (see [`RST_REASON_SLOTS`]): written once per reset sent, never for
/// other packets. Counted here so that `--metrics` has an exact count per reason, including
/// the resets `--resets caused` keeps in the kernel.
#[map]
pub static RST_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RST_REASON_SLOTS, 0);

/// The event budget's state on each CPU (written only when a record is about to be sent).
#[map]
pub static BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// INVALID packets by identity, until a reset they cause is seen (written only for INVALID
/// packets, never for ordinary traffic). LRU: bounded, oldest evicted first.
#[map]
pub static PENDING_RST: LruHashMap<PacketKey, InvalidSeen> =
    LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

/// `sk_buff` address of INVALID packets -> their verdict, until the packet is freed.
#[map]
pub static PENDING_DROP: LruHashMap<u64, PendingDrop> =
    LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

/// When the newest entry went into [`PENDING_DROP`] (boot-clock ns; 0: never). Written with
/// each INVALID packet only. `skb:kfree_skb` fires for every packet the kernel frees with a
/// reason - on a busy node mostly `QUEUE_PURGE` of closing sockets, one or more a connection -
/// and a miss in the 16k-bucket hash cost it about 290 ns a run on the host's crr bench (the
/// bucket is cold). A verdict older than [`PENDING_TTL_NS`] is ignored anyway, so while the
/// newest is that old no lookup can match, and the program reads this one slot instead.
#[map]
pub static LAST_PENDING: Array<u64> = Array::with_max_entries(1, 0);

/// An `sk_buff` address is reused once its packet is freed: a verdict older than this is about
/// another packet.
pub const PENDING_TTL_NS: u64 = 1_000_000_000;

/// Whether [`PENDING_DROP`] may hold a verdict young enough to match a packet freed now.
#[inline(always)]
pub fn pending_drop_young() -> bool {
    let last = LAST_PENDING.get(0).copied().unwrap_or(0);
    // SAFETY: helper call with no arguments.
    last != 0 && unsafe { bpf_ktime_get_boot_ns() }.wrapping_sub(last) <= PENDING_TTL_NS
}

/// Remembers an INVALID packet's verdict until its `sk_buff` is freed.
#[inline(always)]
pub fn remember_pending_drop(skb: u64, pending: &PendingDrop) {
    if PENDING_DROP.insert(skb, *pending, 0).is_err() {
        count(Counter::MapUpdateFailed);
        return;
    }
    if let Some(p) = LAST_PENDING.get_ptr_mut(0) {
        // SAFETY: one u64 slot; a plain store (a racing writer also stores a time just taken).
        unsafe { *p = pending.ts_ns };
    }
}

/// `nf_conntrack_max`, written by userspace at start-up and every second: the limit is a
/// global sysctl (kallsyms has no data symbols to read it from), the count it applies to is
/// each namespace's own. 0: unknown (table pressure is then not told from other drops).
#[map]
pub static CT_MAX: Array<u32> = Array::with_max_entries(1, 0);

/// Counts a reset sent under its reason's slot (the last slot: not given, or beyond the table).
#[inline(always)]
pub fn count_rst_reason(reason: u32) {
    let slot = if reason < RST_REASON_SLOTS - 1 {
        reason
    } else {
        RST_REASON_SLOTS - 1
    };
    if let Some(p) = RST_REASONS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS_MAP.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
        unsafe { *p += 1 };
    }
}

/// Whether a record of `kind` may be sent now: at most `EVENT_BUDGET` records per CPU per
/// second. A refused record is counted as suppressed for its kind, never silent. `exempt`
/// records (resets caused by an INVALID packet: rare, and what ct-trace exists for) always
/// pass, and use up budget like any other.
#[inline(always)]
pub fn allow(kind: Kind, exempt: bool) -> bool {
    let budget = config::event_budget();
    if budget == 0 {
        return true;
    }
    let Some(b) = BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU value, and a program is not interrupted by another on its CPU.
    let b = unsafe { &mut *b };
    // SAFETY: helper call without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now.wrapping_sub(b.window_start_ns) >= BUDGET_WINDOW_NS {
        b.window_start_ns = now;
        b.used = 0;
    }
    if b.used >= budget && !exempt {
        count(Counter::of_kind(kind).0);
        return false;
    }
    b.used = b.used.saturating_add(1);
    true
}

/// Unread bytes in the ring buffer past which a record wakes the reader up. Below it records
/// are sent without a wake-up (`BPF_RB_NO_WAKEUP`) and the reader collects them on its 20 ms
/// timer: a wake-up per record (the default when the reader is idle, `bpf_ringbuf_commit()`)
/// costs an irq_work and a context switch each, which in a storm costs more than the record.
const WAKEUP_BYTES: u64 = 256 * 1024;

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// The wake-up flag for the record about to be committed.
#[inline(always)]
pub fn wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Sends one record; a full ring buffer is counted for its kind, never silent.
#[inline(always)]
pub fn emit<T: 'static>(kind: Kind, record: &T) {
    if EVENTS.output::<T>(record, wakeup()).is_err() {
        count(Counter::of_kind(kind).1);
    }
}
