//! The kernel's own conntrack counters of a network namespace, as `/proc/net/stat/nf_conntrack`
//! shows them: a header line of column names, then one line per possible CPU of hexadecimal
//! values (`ct_cpu_seq_show()`, net/netfilter/nf_conntrack_standalone.c). ct-trace's counts, the
//! integration tests and the bench all compare with these, read by this one parser.
//!
//! Userspace only (the `std` feature): it is text in, sums out, no I/O; each caller reads the
//! file in its own way (its own namespace, `ip netns exec`).

use std::{collections::HashMap, fmt, string::String, vec::Vec};

/// Where the kernel shows the counters of the reader's network namespace.
pub const PATH: &str = "/proc/net/stat/nf_conntrack";

/// Why a text is not the kernel's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No header line.
    Empty,
    /// A value that is not hexadecimal, by line (1-based) and column name.
    NotHex {
        line: usize,
        column: String,
        value: String,
    },
    /// A CPU's line with more values than the header has names.
    ExtraValue { line: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "{PATH}: no header line"),
            Self::NotHex {
                line,
                column,
                value,
            } => write!(
                f,
                "{PATH} line {line}: `{value}` in column {column} is not hex"
            ),
            Self::ExtraValue { line } => {
                write!(f, "{PATH} line {line}: more values than column names")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Every column summed over the CPUs' lines, by the header's name (`invalid`, `drop`,
/// `early_drop`, `insert_failed`, ...). `entries` is the namespace's one count of entries,
/// repeated on every CPU's line: it is taken once, not summed.
pub fn parse(text: &str) -> Result<HashMap<String, u64>, ParseError> {
    let mut lines = text.lines();
    let names: Vec<&str> = lines
        .next()
        .map(|h| h.split_whitespace().collect())
        .filter(|n: &Vec<&str>| !n.is_empty())
        .ok_or(ParseError::Empty)?;
    let mut sums: HashMap<String, u64> = names.iter().map(|n| (String::from(*n), 0)).collect();
    for (i, line) in lines.enumerate() {
        let mut values = line.split_whitespace();
        for (name, v) in names.iter().zip(values.by_ref()) {
            let v = u64::from_str_radix(v, 16).map_err(|_| ParseError::NotHex {
                line: i + 2,
                column: String::from(*name),
                value: String::from(v),
            })?;
            let sum = sums.get_mut(*name).expect("every name has a sum");
            *sum = if *name == "entries" {
                v
            } else {
                sum.saturating_add(v)
            };
        }
        if values.next().is_some() {
            return Err(ParseError::ExtraValue { line: i + 2 });
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use std::string::ToString;

    use super::*;

    /// Read on the build machine (6.18, 2 CPUs) in a namespace of its own: 27 INVALID SYN+FIN
    /// segments sent on CPU 0, 3 on CPU 1, and 5 UDP flows (entries). Note the two spaces the
    /// kernel prints after `entries` and `icmp_error`.
    const TWO_CPUS: &str = "\
entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000005  00000000 00000000 00000000 0000001b 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000000
00000005  00000000 00000000 00000000 00000003 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000000
";

    #[test]
    fn sums_each_column_over_the_cpus_and_takes_entries_once() {
        let m = parse(TWO_CPUS).unwrap();
        assert_eq!(m.len(), 17);
        assert_eq!(m["invalid"], 0x1b + 3);
        assert_eq!(m["entries"], 5);
        assert_eq!(m["drop"], 0);
        assert_eq!(m["search_restart"], 0);
    }

    #[test]
    fn hex_digits_above_nine_and_large_values() {
        let t = "entries invalid drop\n0000000a ffffffff 0000000f\n0000000a 00000001 000000f0\n";
        let m = parse(t).unwrap();
        assert_eq!(m["entries"], 10);
        assert_eq!(m["invalid"], 0x1_0000_0000);
        assert_eq!(m["drop"], 0xff);
    }

    #[test]
    fn a_header_without_cpus_is_all_zero() {
        let m = parse("entries invalid\n").unwrap();
        assert_eq!(m["invalid"], 0);
    }

    #[test]
    fn garbage_is_an_error_that_says_where() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("  \n"), Err(ParseError::Empty));
        let e = parse("entries invalid\n00000001 zz\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/proc/net/stat/nf_conntrack line 2: `zz` in column invalid is not hex"
        );
        assert_eq!(
            parse("invalid\n1 2\n"),
            Err(ParseError::ExtraValue { line: 2 })
        );
    }
}
