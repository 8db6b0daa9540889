//! ct-trace's in-kernel counters: one slot per event class and failure path, counted when the
//! thing happens, before any budget, filter or ring buffer. Userspace reports these.

use crate::kind::Kind;
use Role::{Count, Filtered, Lost, Suppressed};

/// What a counter is, for the tables built from it (the summary's `suppressed`, `lost` and
/// `filtered`, the metrics' families of the same names, the stream's notices): each says so
/// once, in `counters!` below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Events, verdicts or paths counted as they happen.
    Count,
    /// Records of this kind (the label) not sent: the event budget of the second was spent.
    Suppressed(&'static str),
    /// Records of this kind lost (the label): the ring buffer was full, or a failure path lost
    /// them.
    Lost(&'static str),
    /// Records of this kind not sent because they did not pass the filters.
    Filtered(&'static str),
}

/// The one table of counters: each line is a counter's slot, its name (the summary's and the
/// metrics' key) and its role; the enum, `COUNTERS`, `Counter::ALL`, `name()` and `role()` are
/// generated from it, so adding a counter is one line.
macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident = $slot:literal, $label:literal, $role:expr; )*) => {
        /// Slots of the per-CPU `COUNTERS` array: every event class and every failure path has
        /// one, incremented in the kernel at the moment it happens, independent of the ring
        /// buffer. Userspace sums the CPUs; these are the counts ct-trace reports, whatever the
        /// event rate.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[$doc])* $name = $slot, )*
        }

        /// Number of slots in `COUNTERS`.
        pub const COUNTERS: u32 = [$($slot),*].len() as u32;

        impl Counter {
            /// Every counter, in slot order.
            pub const ALL: [Counter; COUNTERS as usize] = [$(Self::$name),*];

            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$name => $label,)*
                }
            }

            pub const fn role(self) -> Role {
                match self {
                    $(Self::$name => $role,)*
                }
            }
        }
    };
}

counters! {
    /// INVALID verdicts at PRE_ROUTING (conntrack counted the packet `invalid`).
    InvalidPrerouting = 0, "invalid_prerouting", Count;
    /// INVALID verdicts at LOCAL_OUT.
    InvalidOutput = 1, "invalid_output", Count;
    /// INVALID verdicts on TCP packets (a subset of the two above).
    InvalidTcp = 2, "invalid_tcp", Count;
    /// INVALID packets a netfilter rule then dropped (fate `dropped`).
    InvalidDropped = 3, "invalid_dropped", Count;
    /// Packets without a conntrack entry in a family whose conntrack hooks are not registered
    /// in the watched namespace: conntrack never saw them, they are not INVALID (no event).
    Untracked = 4, "untracked", Count;
    /// ICMP errors conntrack could not relate to an entry: left without one but counted by the
    /// kernel as `error`, not `invalid` (no event).
    IcmpError = 5, "icmp_error", Count;
    RstSent = 6, "rst_sent", Count;
    RstReceived = 7, "rst_received", Count;
    /// Resets matched in the kernel to the INVALID packet that caused them.
    RstFromInvalid = 8, "rst_from_invalid", Count;
    /// A reset matched an INVALID packet older than `PENDING_RST_MAX_AGE_NS`: not attributed.
    PendingExpired = 9, "pending_expired", Count;
    /// INVALID packets freed with a drop reason (any: a rule, or later, e.g. no socket).
    Drops = 10, "drops", Count;
    /// Refusals logged by conntrack's log helpers (reason kprobes), by class of the message.
    ReasonSeqOver = 11, "reason_seq_over", Count;
    ReasonSeqUnder = 12, "reason_seq_under", Count;
    ReasonAckOver = 13, "reason_ack_over", Count;
    ReasonAckUnder = 14, "reason_ack_under", Count;
    ReasonBadFlags = 15, "reason_bad_flags", Count;
    ReasonIgnored = 16, "reason_ignored", Count;
    ReasonOther = 17, "reason_other", Count;
    /// `nf_conntrack_in()` dropped a packet it could not track (table full, or no memory):
    /// counted by the kernel as `drop`, not `invalid` (kretprobe mode).
    CtDropped = 18, "ct_dropped", Count;
    /// Records not sent because the event budget of the second was spent, per record kind.
    SuppressedInvalid = 19, "suppressed_invalid", Suppressed("invalid");
    SuppressedReset = 20, "suppressed_reset", Suppressed("reset");
    SuppressedReason = 21, "suppressed_reason", Suppressed("reason");
    SuppressedDrop = 22, "suppressed_drop", Suppressed("drop");
    /// Records lost because the ring buffer was full, per record kind.
    LostInvalid = 23, "lost_invalid", Lost("invalid");
    LostReset = 24, "lost_reset", Lost("reset");
    LostReason = 25, "lost_reason", Lost("reason");
    LostDrop = 26, "lost_drop", Lost("drop");
    /// Resets not sent because they did not pass `--filter` (counted, never shown).
    FilteredReset = 27, "filtered_reset", Filtered("reset");
    /// Packet headers could not be read from an `sk_buff`.
    ReadFailed = 28, "read_failed", Lost("unreadable_packet");
    /// A pending-map update failed (the maps are LRU, so this means an error, not "full").
    MapUpdateFailed = 29, "map_update_failed", Lost("map_update_failed");
    /// The kretprobe fallback found its per-CPU argument stack stale or too deep (a return was
    /// missed): those verdicts are lost.
    StackLost = 30, "stack_lost", Lost("kretprobe_stack");
    /// INVALID verdicts not sent because they did not pass `--host`/`--port` (counted, never
    /// shown; still matched to the resets they cause).
    FilteredInvalid = 31, "filtered_invalid", Filtered("invalid");
    /// TCP packets other than SYNs that created a new entry (flows picked up mid-stream).
    Midstream = 32, "midstream", Count;
    /// Netfilter drops of packets without an entry while the table was at `nf_conntrack_max`:
    /// conntrack's "table full, dropping packet" (the kernel's `drop`).
    TableFull = 33, "table_full", Count;
    /// Netfilter drops of packets without an entry while the table had room (a rule before
    /// conntrack, e.g. in the raw table): not table pressure, only counted.
    NfDropUntracked = 34, "nf_drop_untracked", Count;
    SuppressedMidstream = 35, "suppressed_midstream", Suppressed("midstream");
    LostMidstream = 36, "lost_midstream", Lost("midstream");
    /// Midstream records not sent because they did not pass `--host`/`--port`.
    FilteredMidstream = 37, "filtered_midstream", Filtered("midstream");
    SuppressedTableFull = 38, "suppressed_table_full", Suppressed("table_full");
    LostTableFull = 39, "lost_table_full", Lost("table_full");
    FilteredTableFull = 40, "filtered_table_full", Filtered("table_full");
}

impl Counter {
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

impl Role {
    /// The record kind a `Suppressed`, `Lost` or `Filtered` counter is about.
    pub const fn kind(self) -> Option<&'static str> {
        match self {
            Count => None,
            Suppressed(k) | Lost(k) | Filtered(k) => Some(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel indexes `COUNTERS` by the discriminant: the table must fill every slot once.
    #[test]
    fn slots_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
            assert!(
                !Counter::ALL[..i].iter().any(|o| o.name() == c.name()),
                "{c:?}"
            );
        }
    }

    /// Every record kind's budget and ring-buffer counters say so in their role.
    #[test]
    fn each_kinds_counters_have_its_roles() {
        for (kind, label) in [
            (Kind::Invalid, "invalid"),
            (Kind::RstSent, "reset"),
            (Kind::Reason, "reason"),
            (Kind::Drop, "drop"),
            (Kind::Midstream, "midstream"),
            (Kind::TableFull, "table_full"),
        ] {
            let (s, l) = Counter::of_kind(kind);
            assert_eq!(s.role(), Suppressed(label));
            assert_eq!(l.role(), Lost(label));
        }
    }
}
