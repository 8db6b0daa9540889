//! The class of conntrack's words for a refusal: one bounded set, for ct-trace's metrics label and
//! for the kernel counters of the reason probes (`Counter::Reason*`; those keep the five classes
//! a 12-byte prefix can tell, everything else is `other` there). The words are those of
//! nf_conntrack_proto_tcp.c's `nf_ct_l4proto_log_invalid()` calls.

use crate::counter::Counter;

/// A reason's class, named as the `reason` label of `ct_trace_invalid_total` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReasonClass {
    SeqOver,
    SeqUnder,
    AckOver,
    AckUnder,
    BadFlags,
    InvalidNew,
    RstWindow,
    Ignored,
    Other,
    /// ct-trace does not know why (no reason record for the packet).
    Unknown,
}

impl ReasonClass {
    /// The class of conntrack's words (the log format or its rendering), case-insensitively.
    pub fn of(words: &[u8]) -> Self {
        let has = |needle: &[u8]| {
            words
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
        };
        if words
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"unknown"))
        {
            Self::Unknown
        } else if has(b"seq is over") {
            Self::SeqOver
        } else if has(b"seq is under") {
            Self::SeqUnder
        } else if has(b"ack is over") {
            Self::AckOver
        } else if has(b"ack is under") {
            Self::AckUnder
        } else if has(b"flag") {
            Self::BadFlags
        } else if has(b"invalid new") || has(b"invalid state") {
            Self::InvalidNew
        } else if has(b"rst") {
            Self::RstWindow
        } else if has(b"ignore") {
            Self::Ignored
        } else {
            Self::Other
        }
    }

    /// The class the kernel side tells from the first 12 bytes of the log format it reads
    /// (`class()` in conntrack-ebpf's reason probes): the prefixes of `of`'s words that a
    /// 12-byte read can hold; anything else is `Other` there, and `of` on the whole words is
    /// the finer answer userspace gives.
    #[inline(always)]
    pub fn of_prefix(w: &[u8; 12]) -> Self {
        match w {
            b"SEQ is over " => Self::SeqOver,
            b"SEQ is under" => Self::SeqUnder,
            b"ACK is over " => Self::AckOver,
            b"ACK is under" => Self::AckUnder,
            b"invalid tcp " => Self::BadFlags,
            _ if w[..8] == *b"ignored " => Self::Ignored,
            _ => Self::Other,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::SeqOver => "seq_over",
            Self::SeqUnder => "seq_under",
            Self::AckOver => "ack_over",
            Self::AckUnder => "ack_under",
            Self::BadFlags => "bad_flags",
            Self::InvalidNew => "invalid_new",
            Self::RstWindow => "rst_window",
            Self::Ignored => "ignored",
            Self::Other => "other",
            Self::Unknown => "unknown",
        }
    }

    /// The kernel counter the reason probes bump for this class.
    pub const fn counter(self) -> Counter {
        match self {
            Self::SeqOver => Counter::ReasonSeqOver,
            Self::SeqUnder => Counter::ReasonSeqUnder,
            Self::AckOver => Counter::ReasonAckOver,
            Self::AckUnder => Counter::ReasonAckUnder,
            Self::BadFlags => Counter::ReasonBadFlags,
            Self::Ignored => Counter::ReasonIgnored,
            _ => Counter::ReasonOther,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_bounded_classes() {
        for (words, class) in [
            (
                "SEQ is over upper bound 2875013249 (over the window of the receiver)",
                "seq_over",
            ),
            (
                "SEQ is under lower bound (already ACKed data retransmitted)",
                "seq_under",
            ),
            (
                "ACK is over upper bound 12 (ACKed data not seen yet)",
                "ack_over",
            ),
            (
                "ACK is under the lower bound (possible overly delayed ACK)",
                "ack_under",
            ),
            ("invalid tcp flag combination", "bad_flags"),
            ("invalid new", "invalid_new"),
            ("invalid rst", "rst_window"),
            ("ignored ACK under lower bound 1", "ignored"),
            ("unknown (no reason kprobes on this kernel)", "unknown"),
            (
                "packet (index 3) in dir 1 invalid, state ESTABLISHED",
                "other",
            ),
        ] {
            assert_eq!(ReasonClass::of(words.as_bytes()).name(), class, "{words}");
        }
        assert_eq!(
            ReasonClass::of(b"SEQ is over upper bound %u").counter(),
            Counter::ReasonSeqOver
        );
    }

    /// The kernel's 12-byte class never disagrees with the whole words' class: it is the same
    /// class or `Other` (what 12 bytes cannot tell), and every class with its own kernel
    /// counter is told by its prefix.
    #[test]
    fn the_kernels_prefix_class_agrees_with_the_words() {
        for words in [
            "SEQ is over upper bound %u (over the window of the receiver)",
            "SEQ is under lower bound (already ACKed data retransmitted)",
            "ACK is over upper bound %u (ACKed data not seen yet)",
            "ACK is under the lower bound (possible overly delayed ACK)",
            "invalid tcp flag combination",
            "ignored ACK under lower bound %u",
            "invalid new",
            "invalid rst",
            "packet (index %d) in dir %d invalid, state %s",
            "short",
        ] {
            let mut w = [0u8; 12];
            let n = words.len().min(12);
            w[..n].copy_from_slice(&words.as_bytes()[..n]);
            let (kernel, user) = (
                ReasonClass::of_prefix(&w),
                ReasonClass::of(words.as_bytes()),
            );
            assert!(
                kernel == user || kernel == ReasonClass::Other,
                "{words}: {kernel:?} vs {user:?}"
            );
            if user.counter() != Counter::ReasonOther {
                assert_eq!(kernel, user, "{words}: its counter needs the prefix");
            }
        }
    }
}
