//! TCP flags as the header's byte until they are printed: `Display` and JSON spell them as
//! tcpdump orders them (`SYN|ACK`, `none` for no flag), the pcapng packets take the byte as it is.

use std::fmt;

use conntrack_common::tcp_flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN, URG};
use serde::Serialize;

/// The flags byte of a TCP header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const RST: Self = Self(RST);
}

const NAMES: [(u8, &str); 8] = [
    (FIN, "FIN"),
    (SYN, "SYN"),
    (RST, "RST"),
    (PSH, "PSH"),
    (ACK, "ACK"),
    (URG, "URG"),
    (ECE, "ECE"),
    (CWR, "CWR"),
];

impl TcpFlags {
    /// The names, written into `buf`: at most 31 bytes ("FIN|SYN|RST|PSH|ACK|URG|ECE|CWR").
    pub(crate) fn spell(self, buf: &mut [u8; 32]) -> &str {
        if self.0 == 0 {
            return "none";
        }
        let mut n = 0;
        for (b, name) in NAMES {
            if self.0 & b != 0 {
                if n > 0 {
                    buf[n] = b'|';
                    n += 1;
                }
                buf[n..n + name.len()].copy_from_slice(name.as_bytes());
                n += name.len();
            }
        }
        // Only ASCII names were written.
        std::str::from_utf8(&buf[..n]).unwrap_or_default()
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Width and alignment apply to the whole word, as for a string.
        f.pad(self.spell(&mut [0; 32]))
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.spell(&mut [0; 32]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_like_tcpdump() {
        assert_eq!(TcpFlags(0x12).to_string(), "SYN|ACK");
        assert_eq!(TcpFlags(0x14).to_string(), "RST|ACK");
        assert_eq!(
            TcpFlags(0xff).to_string(),
            "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"
        );
        assert_eq!(TcpFlags(0).to_string(), "none");
        assert_eq!(format!("{:<8}|", TcpFlags(0x11)), "FIN|ACK |");
        assert_eq!(
            serde_json::to_string(&TcpFlags(0x18)).unwrap(),
            "\"PSH|ACK\""
        );
    }
}
