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

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            // Width and alignment apply to the whole word, as for a string.
            return f.pad("none");
        }
        // At most 31 bytes ("FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"): written on the stack, then
        // padded as one string.
        let mut buf = [0u8; 32];
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
        f.pad(std::str::from_utf8(&buf[..n]).unwrap_or_default())
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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
