//! The closed sets of words reports carry (the netfilter hook, a reset's cause, a skipped
//! enrichment): enums through the pipeline, spelled only when printed, as `Display` and as JSON
//! strings (README's field values).

use std::fmt;

use conntrack_common::Hook;
use serde::{Serialize, Serializer};

/// The netfilter hook a packet was seen at; `unknown` when the program could not read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NfHook {
    At(Hook),
    Unknown,
}

impl NfHook {
    /// The hook of a record's raw hook field.
    pub fn of(raw: u8) -> Self {
        Hook::try_from(raw).map_or(Self::Unknown, Self::At)
    }

    /// The hook's name as iptables/nft spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::At(h) => h.name(),
            Self::Unknown => "unknown",
        }
    }
}

/// What let a reset's packet through without its NAT (`cause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResetCause {
    /// Conntrack marked it INVALID.
    InvalidPacket,
    /// Its flow's entry was gone; conntrack picked it up mid-stream.
    EntryLost,
    /// Nothing shows it belonged to a flow conntrack was tracking.
    Stray,
}

impl ResetCause {
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidPacket => "invalid_packet",
            Self::EntryLost => "entry_lost",
            Self::Stray => "stray",
        }
    }
}

/// Why an event went out without its entry (`enrichment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enrichment {
    /// The lookup could not be made in time.
    Skipped,
}

impl Enrichment {
    pub fn name(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
        }
    }
}

/// `Display` (padded like a string) and a JSON string, both the value's name.
macro_rules! spelled {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.name())
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    )*};
}

spelled!(NfHook, ResetCause, Enrichment);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_spelled_as_the_readme_says() {
        assert_eq!(NfHook::of(0).to_string(), "prerouting");
        assert_eq!(NfHook::of(3).to_string(), "output");
        assert_eq!(NfHook::of(u8::MAX).to_string(), "unknown");
        let json = serde_json::to_string(&(ResetCause::EntryLost, Enrichment::Skipped)).unwrap();
        assert_eq!(json, r#"["entry_lost","skipped"]"#);
        assert_eq!(ResetCause::Stray.to_string(), "stray");
    }
}
