//! The kind of a ring-buffer record: the first byte after the header's version says which
//! record follows. Its own module, below the counters that are kept per kind.

/// What a record is. The discriminants are part of the wire format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `tcp:tcp_send_reset`: this host sent a RST; [`Reset`](crate::Reset) follows.
    RstSent = 1,
    /// `tcp:tcp_receive_reset`: a connection of this host was reset by its peer; [`Reset`](crate::Reset) follows.
    RstReceived = 2,
    /// Conntrack left a packet without an entry (INVALID); [`Verdict`](crate::Verdict) follows.
    Invalid = 3,
    /// `kfree_skb` with reason NETFILTER_DROP for a packet seen INVALID; [`Drop`](crate::Drop) follows.
    Drop = 4,
    /// Conntrack logged why it refused a packet (its log helpers); [`Reason`](crate::Reason) follows.
    Reason = 5,
    /// A TCP packet other than a SYN created a brand-new entry: conntrack picked its flow up
    /// mid-stream (`nf_conntrack_tcp_loose`), so the flow's earlier entry, and its NAT, were
    /// lost; [`Pressure`](crate::Pressure) follows.
    Midstream = 6,
    /// Netfilter dropped a packet conntrack could not make an entry for while the table was
    /// full ("nf_conntrack: table full, dropping packet"); [`Pressure`](crate::Pressure) follows.
    TableFull = 7,
}

impl TryFrom<u8> for Kind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            1 => Self::RstSent,
            2 => Self::RstReceived,
            3 => Self::Invalid,
            4 => Self::Drop,
            5 => Self::Reason,
            6 => Self::Midstream,
            7 => Self::TableFull,
            other => return Err(other),
        })
    }
}
