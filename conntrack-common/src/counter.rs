//! ct-trace's in-kernel counters: one slot per event class and failure path, counted when the
//! thing happens, before any budget, filter or ring buffer. Userspace reports these.

use crate::kind::Kind;

/// Slots of the per-CPU `COUNTERS` array: every event class and every failure path has one,
/// incremented in the kernel at the moment it happens, independent of the ring buffer. Userspace
/// sums the CPUs; these are the counts ct-trace reports, whatever the event rate.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// INVALID verdicts at PRE_ROUTING (conntrack counted the packet `invalid`).
    InvalidPrerouting = 0,
    /// INVALID verdicts at LOCAL_OUT.
    InvalidOutput = 1,
    /// INVALID verdicts on TCP packets (a subset of the two above).
    InvalidTcp = 2,
    /// INVALID packets a netfilter rule then dropped (fate `dropped`).
    InvalidDropped = 3,
    /// Packets without a conntrack entry in a family whose conntrack hooks are not registered
    /// in the watched namespace: conntrack never saw them, they are not INVALID (no event).
    Untracked = 4,
    /// ICMP errors conntrack could not relate to an entry: left without one but counted by the
    /// kernel as `error`, not `invalid` (no event).
    IcmpError = 5,
    RstSent = 6,
    RstReceived = 7,
    /// Resets matched in the kernel to the INVALID packet that caused them.
    RstFromInvalid = 8,
    /// A reset matched an INVALID packet older than `PENDING_RST_MAX_AGE_NS`: not attributed.
    PendingExpired = 9,
    /// INVALID packets freed with a drop reason (any: a rule, or later, e.g. no socket).
    Drops = 10,
    /// Refusals logged by conntrack's log helpers (reason kprobes), by class of the message.
    ReasonSeqOver = 11,
    ReasonSeqUnder = 12,
    ReasonAckOver = 13,
    ReasonAckUnder = 14,
    ReasonBadFlags = 15,
    ReasonIgnored = 16,
    ReasonOther = 17,
    /// `nf_conntrack_in()` dropped a packet it could not track (table full, or no memory):
    /// counted by the kernel as `drop`, not `invalid` (kretprobe mode).
    CtDropped = 18,
    /// Records not sent because the event budget of the second was spent, per record kind.
    SuppressedInvalid = 19,
    SuppressedReset = 20,
    SuppressedReason = 21,
    SuppressedDrop = 22,
    /// Records lost because the ring buffer was full, per record kind.
    LostInvalid = 23,
    LostReset = 24,
    LostReason = 25,
    LostDrop = 26,
    /// Resets not sent because they did not pass `--filter` (counted, never shown).
    FilteredReset = 27,
    /// Packet headers could not be read from an `sk_buff`.
    ReadFailed = 28,
    /// A pending-map update failed (the maps are LRU, so this means an error, not "full").
    MapUpdateFailed = 29,
    /// The kretprobe fallback found its per-CPU argument stack stale or too deep (a return was
    /// missed): those verdicts are lost.
    StackLost = 30,
    /// INVALID verdicts not sent because they did not pass `--host`/`--port` (counted, never
    /// shown; still matched to the resets they cause).
    FilteredInvalid = 31,
    /// TCP packets other than SYNs that created a new entry (flows picked up mid-stream).
    Midstream = 32,
    /// Netfilter drops of packets without an entry while the table was at `nf_conntrack_max`:
    /// conntrack's "table full, dropping packet" (the kernel's `drop`).
    TableFull = 33,
    /// Netfilter drops of packets without an entry while the table had room (a rule before
    /// conntrack, e.g. in the raw table): not table pressure, only counted.
    NfDropUntracked = 34,
    SuppressedMidstream = 35,
    LostMidstream = 36,
    /// Midstream records not sent because they did not pass `--host`/`--port`.
    FilteredMidstream = 37,
    SuppressedTableFull = 38,
    LostTableFull = 39,
    FilteredTableFull = 40,
}

/// Number of slots in `COUNTERS`.
pub const COUNTERS: u32 = 41;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [
        Self::InvalidPrerouting,
        Self::InvalidOutput,
        Self::InvalidTcp,
        Self::InvalidDropped,
        Self::Untracked,
        Self::IcmpError,
        Self::RstSent,
        Self::RstReceived,
        Self::RstFromInvalid,
        Self::PendingExpired,
        Self::Drops,
        Self::ReasonSeqOver,
        Self::ReasonSeqUnder,
        Self::ReasonAckOver,
        Self::ReasonAckUnder,
        Self::ReasonBadFlags,
        Self::ReasonIgnored,
        Self::ReasonOther,
        Self::CtDropped,
        Self::SuppressedInvalid,
        Self::SuppressedReset,
        Self::SuppressedReason,
        Self::SuppressedDrop,
        Self::LostInvalid,
        Self::LostReset,
        Self::LostReason,
        Self::LostDrop,
        Self::FilteredReset,
        Self::ReadFailed,
        Self::MapUpdateFailed,
        Self::StackLost,
        Self::FilteredInvalid,
        Self::Midstream,
        Self::TableFull,
        Self::NfDropUntracked,
        Self::SuppressedMidstream,
        Self::LostMidstream,
        Self::FilteredMidstream,
        Self::SuppressedTableFull,
        Self::LostTableFull,
        Self::FilteredTableFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::InvalidPrerouting => "invalid_prerouting",
            Self::InvalidOutput => "invalid_output",
            Self::InvalidTcp => "invalid_tcp",
            Self::InvalidDropped => "invalid_dropped",
            Self::Untracked => "untracked",
            Self::IcmpError => "icmp_error",
            Self::RstSent => "rst_sent",
            Self::RstReceived => "rst_received",
            Self::RstFromInvalid => "rst_from_invalid",
            Self::PendingExpired => "pending_expired",
            Self::Drops => "drops",
            Self::ReasonSeqOver => "reason_seq_over",
            Self::ReasonSeqUnder => "reason_seq_under",
            Self::ReasonAckOver => "reason_ack_over",
            Self::ReasonAckUnder => "reason_ack_under",
            Self::ReasonBadFlags => "reason_bad_flags",
            Self::ReasonIgnored => "reason_ignored",
            Self::ReasonOther => "reason_other",
            Self::CtDropped => "ct_dropped",
            Self::SuppressedInvalid => "suppressed_invalid",
            Self::SuppressedReset => "suppressed_reset",
            Self::SuppressedReason => "suppressed_reason",
            Self::SuppressedDrop => "suppressed_drop",
            Self::LostInvalid => "lost_invalid",
            Self::LostReset => "lost_reset",
            Self::LostReason => "lost_reason",
            Self::LostDrop => "lost_drop",
            Self::FilteredReset => "filtered_reset",
            Self::ReadFailed => "read_failed",
            Self::MapUpdateFailed => "map_update_failed",
            Self::StackLost => "stack_lost",
            Self::FilteredInvalid => "filtered_invalid",
            Self::Midstream => "midstream",
            Self::TableFull => "table_full",
            Self::NfDropUntracked => "nf_drop_untracked",
            Self::SuppressedMidstream => "suppressed_midstream",
            Self::LostMidstream => "lost_midstream",
            Self::FilteredMidstream => "filtered_midstream",
            Self::SuppressedTableFull => "suppressed_table_full",
            Self::LostTableFull => "lost_table_full",
            Self::FilteredTableFull => "filtered_table_full",
        }
    }

    /// The budget and ring-buffer counters of a record kind: (suppressed, lost).
    pub const fn of_kind(kind: Kind) -> (Counter, Counter) {
        match kind {
            Kind::Invalid => (Self::SuppressedInvalid, Self::LostInvalid),
            Kind::RstSent | Kind::RstReceived => (Self::SuppressedReset, Self::LostReset),
            Kind::Reason => (Self::SuppressedReason, Self::LostReason),
            Kind::Drop => (Self::SuppressedDrop, Self::LostDrop),
            Kind::Midstream => (Self::SuppressedMidstream, Self::LostMidstream),
            Kind::TableFull => (Self::SuppressedTableFull, Self::LostTableFull),
        }
    }
}
