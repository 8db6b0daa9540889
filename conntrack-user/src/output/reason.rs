//! Why conntrack let a packet through (`reason`, `invalid_reason`): its own words as the kernel's
//! log line would print them, classified once when they are made ([`ReasonClass`]: the metrics
//! label), shared rather than copied as the report moves through the pipeline.

use std::{fmt, sync::Arc};

use conntrack_common::ReasonClass;
use serde::{Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Words {
    /// ct-trace's own words (`unknown (...)`): no allocation per event.
    Fixed(&'static str),
    /// Rendered from a record, or made once at start-up.
    Shared(Arc<str>),
}

/// A reason's words and their class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasonText {
    class: ReasonClass,
    words: Words,
}

impl ReasonText {
    /// Words ct-trace wrote itself.
    pub fn fixed(words: &'static str) -> Self {
        Self {
            class: ReasonClass::of(words.as_bytes()),
            words: Words::Fixed(words),
        }
    }

    /// Words rendered at run time (a record's log line, a start-up message).
    pub fn new(words: impl Into<Arc<str>>) -> Self {
        let words: Arc<str> = words.into();
        Self {
            class: ReasonClass::of(words.as_bytes()),
            words: Words::Shared(words),
        }
    }

    pub fn class(&self) -> ReasonClass {
        self.class
    }

    pub fn as_str(&self) -> &str {
        match &self.words {
            Words::Fixed(s) => s,
            Words::Shared(s) => s,
        }
    }
}

impl fmt::Display for ReasonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for ReasonText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
