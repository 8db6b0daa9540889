//! Why conntrack let a packet through (`reason`, `invalid_reason`): its own words as the kernel's
//! log line would print them, classified once when they are made ([`ReasonClass`]: the metrics
//! label), shared rather than copied as the report moves through the pipeline.

use std::{borrow::Cow, fmt, sync::Arc};

use conntrack_common::ReasonClass;
use serde::{Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Words {
    /// ct-trace's own words (`unknown (...)`): no allocation per event.
    Fixed(&'static str),
    /// Made once at start-up.
    Shared(Arc<str>),
    /// A record's log format (shared: the kernel logs a handful of them) and the values its
    /// probe read: rendered only when the report is written, so a verdict allocates nothing
    /// for its reason on its way through the pipeline.
    Logged {
        fmt: Arc<str>,
        args: [u64; 2],
        state: Option<&'static str>,
    },
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

    /// A log line as conntrack would print it: its format, the two integer arguments the probe
    /// read and the entry's TCP state (for `%s`); see [`render`].
    pub fn logged(fmt: Arc<str>, args: [u64; 2], state: Option<&'static str>) -> Self {
        // The class of the words as printed: only `%s` (a TCP state name) can change it.
        let class = if fmt.contains("%s") {
            let mut b = Stack::default();
            let _ = render_into(&mut b, &fmt, args, state);
            ReasonClass::of(b.bytes())
        } else {
            ReasonClass::of(fmt.as_bytes())
        };
        Self {
            class,
            words: Words::Logged { fmt, args, state },
        }
    }

    /// Words made at start-up (a message of ct-trace's).
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

    /// The words, when they are kept as text (not a record's format and values).
    pub fn plain(&self) -> Option<&str> {
        match &self.words {
            Words::Fixed(s) => Some(s),
            Words::Shared(s) => Some(s),
            Words::Logged { .. } => None,
        }
    }

    /// The words as printed (rendered here for a record's).
    pub fn text(&self) -> Cow<'_, str> {
        match self.plain() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(self.to_string()),
        }
    }
}

impl fmt::Display for ReasonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.words, self.plain()) {
            (_, Some(s)) => f.pad(s),
            // Padded (text output's columns): rendered first.
            (Words::Logged { fmt, args, state }, None) => match f.width() {
                Some(_) => f.pad(&render(fmt, *args, *state)),
                None => render_into(f, fmt, *args, *state),
            },
            _ => Ok(()),
        }
    }
}

/// Prints a conntrack log format the way the kernel would: the first two integer conversions take
/// the two register arguments the probe read, `%s` (the TCP state in conntrack's messages) takes
/// `state`, anything else is `?`.
pub fn render(fmt: &str, args: [u64; 2], state: Option<&str>) -> String {
    let mut out = String::new();
    let _ = render_into(&mut out, fmt, args, state);
    out
}

/// [`render`] into any writer.
pub fn render_into(
    out: &mut impl fmt::Write,
    fmt: &str,
    args: [u64; 2],
    state: Option<&str>,
) -> fmt::Result {
    let mut next = 0;
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.write_char(c)?;
            continue;
        }
        // Flags, width, precision and length modifiers, then the conversion.
        let mut conv = None;
        while let Some(&n) = chars.peek() {
            chars.next();
            if n.is_ascii_digit() || "-+ #.lhzjt".contains(n) {
                continue;
            }
            conv = Some(n);
            break;
        }
        let int = |next: &mut usize| {
            let v = args.get(*next).copied();
            *next += 1;
            v
        };
        match conv {
            Some('%') => out.write_char('%')?,
            Some('u') => match int(&mut next) {
                Some(v) => write!(out, "{}", v as u32)?,
                None => out.write_char('?')?,
            },
            Some('d') | Some('i') => match int(&mut next) {
                Some(v) => write!(out, "{}", v as u32 as i32)?,
                None => out.write_char('?')?,
            },
            Some('x') => match int(&mut next) {
                Some(v) => write!(out, "{:x}", v as u32)?,
                None => out.write_char('?')?,
            },
            Some('s') => {
                next += 1;
                out.write_str(state.unwrap_or("?"))?;
            }
            Some('p') => {
                // %pI4 and friends: a pointer argument and its extension letters.
                next += 1;
                while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                    chars.next();
                }
                out.write_char('?')?;
            }
            _ => out.write_char('?')?,
        }
    }
    Ok(())
}

/// Words rendered on the stack, to classify them (cut at its size, beyond the longest message
/// conntrack logs).
struct Stack {
    b: [u8; 160],
    n: usize,
}

impl Default for Stack {
    fn default() -> Self {
        Self { b: [0; 160], n: 0 }
    }
}

impl Stack {
    fn bytes(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

impl fmt::Write for Stack {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let take = s.len().min(self.b.len() - self.n);
        self.b[self.n..self.n + take].copy_from_slice(&s.as_bytes()[..take]);
        self.n += take;
        Ok(())
    }
}

impl Serialize for ReasonText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.plain() {
            Some(t) => s.serialize_str(t),
            None => s.collect_str(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's reason is kept as its format and values; its class, its text and its JSON are
    /// those of the words the kernel would print, whatever the state `%s` takes.
    #[test]
    fn a_logged_reason_is_the_rendered_words() {
        let states = crate::node::netlink::tcp_state_name;
        for fmt in [
            "SEQ is over upper bound %u (over the window of the receiver)",
            "ACK is over upper bound %u (ACKed data not seen yet)",
            "ignored ACK under lower bound %u (possible overly delayed)",
            "packet (index %d) in dir %d invalid, state %s",
            "%s",
            "invalid new",
        ] {
            for s in (0..=10).map(|s| Some(states(s))).chain([None]) {
                let args = [3_000_000_000, 7];
                let l = ReasonText::logged(fmt.into(), args, s);
                let words = render(fmt, args, s);
                let n = ReasonText::new(words.as_str());
                assert_eq!(l.class(), n.class(), "{fmt} {s:?}");
                assert_eq!(l.to_string(), words);
                assert_eq!(format!("{l:<90}|"), format!("{words:<90}|"));
                assert_eq!(
                    serde_json::to_string(&l).unwrap(),
                    serde_json::to_string(&words).unwrap()
                );
            }
        }
    }
}
