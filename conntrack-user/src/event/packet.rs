//! [`Packet`]: the packet a report is about (`invalid`, `ignored`, `rst_sent`, `rst_received`,
//! `midstream`, `table_full`), one part every such kind holds, so that `--pcap` rebuilds every
//! kind's packet from one type. Each kind shows a subset of it in its JSON, at the places
//! README.md documents: a [`Shows`] marker per kind says which fields, and the kind writes the
//! part's two runs of fields ([`Packet::serialize_head`], [`Packet::serialize_tuple`]) around its
//! own (`midstream` and `table_full` put the table's fill between them).

use std::net::IpAddr;

use serde::{ser::SerializeStruct, Serialize};

use conntrack_common::IPPROTO_TCP;

use super::{flags::TcpFlags, tags::NfHook, time::Time};

/// A packet's header fields as the program read them, and where and when it was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub time: Time,
    pub netns: u32,
    /// The netfilter hook it was seen at; `unknown` for the kinds seen elsewhere (resets at the
    /// TCP tracepoints, `table_full` where netfilter freed it).
    pub hook: NfHook,
    pub proto: u8,
    /// Null only for a reset whose record had no addresses (`rst_*` with `src: null`).
    pub src: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
    pub flags: Option<TcpFlags>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    /// Transport payload bytes.
    pub len: Option<u16>,
}

/// A TCP segment's header fields, every one known: what a kind that is always TCP
/// (`midstream`) is built from, so that its [`Packet`] cannot miss one.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes.
    pub len: u16,
}

impl Packet {
    /// The packet of a TCP segment seen at `hook`.
    pub fn tcp(time: Time, netns: u32, hook: NfHook, s: Segment) -> Self {
        Self {
            time,
            netns,
            hook,
            proto: IPPROTO_TCP,
            src: Some(s.src),
            sport: Some(s.sport),
            dst: Some(s.dst),
            dport: Some(s.dport),
            flags: Some(s.flags),
            seq: Some(s.seq),
            ack: Some(s.ack),
            len: Some(s.len),
        }
    }
}

/// Which of [`Packet`]'s optional fields a kind's JSON shows (`time`, `netns`, the addresses,
/// ports and flags it always shows).
pub trait Shows {
    /// `hook`, after `netns`.
    const HOOK: bool;
    /// `proto`, before `src`.
    const PROTO: bool;
    /// `seq` and `ack`, after `flags`.
    const SEQ_ACK: bool;
    /// `len`, after them.
    const LEN: bool;
}

/// `rst_sent`, `rst_received`: the reset's addresses, flags and sequence numbers.
pub enum ResetShows {}
/// `invalid`, `ignored`: every field.
pub enum InvalidShows {}
/// `midstream`: all but `proto` (always TCP).
pub enum MidstreamShows {}
/// `table_full`: the refused flow's tuple and flags, seen before any hook or sequence check.
pub enum TableFullShows {}

macro_rules! shows {
    ($($t:ty: $hook:literal, $proto:literal, $seq_ack:literal, $len:literal;)*) => {$(
        impl Shows for $t {
            const HOOK: bool = $hook;
            const PROTO: bool = $proto;
            const SEQ_ACK: bool = $seq_ack;
            const LEN: bool = $len;
        }
    )*};
}

shows! {
    ResetShows: false, false, true, false;
    InvalidShows: true, true, true, true;
    MidstreamShows: true, false, true, true;
    TableFullShows: false, true, false, false;
}

impl Packet {
    /// `time`, `netns` and, when `K` shows it, `hook`.
    pub fn serialize_head<K: Shows, M: SerializeStruct>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_field("time", &self.time)?;
        m.serialize_field("netns", &self.netns)?;
        if K::HOOK {
            m.serialize_field("hook", &self.hook)?;
        }
        Ok(())
    }

    /// `proto` (when `K` shows it), the addresses, ports and flags, then `seq`, `ack` and `len`
    /// when `K` shows them.
    pub fn serialize_tuple<K: Shows, M: SerializeStruct>(&self, m: &mut M) -> Result<(), M::Error> {
        if K::PROTO {
            m.serialize_field("proto", &self.proto)?;
        }
        m.serialize_field("src", &self.src)?;
        m.serialize_field("sport", &self.sport)?;
        m.serialize_field("dst", &self.dst)?;
        m.serialize_field("dport", &self.dport)?;
        m.serialize_field("flags", &self.flags)?;
        if K::SEQ_ACK {
            m.serialize_field("seq", &self.seq)?;
            m.serialize_field("ack", &self.ack)?;
        }
        if K::LEN {
            m.serialize_field("len", &self.len)?;
        }
        Ok(())
    }

    /// How many fields `K` shows (serde's length hint for the kind's struct).
    pub const fn shown<K: Shows>() -> usize {
        7 + K::HOOK as usize + K::PROTO as usize + 2 * K::SEQ_ACK as usize + K::LEN as usize
    }
}

/// A field the derive would mark `skip_serializing_if = "Option::is_none"`: written when set.
pub(super) fn some_field<M: SerializeStruct, T: Serialize>(
    m: &mut M,
    name: &'static str,
    v: &Option<T>,
) -> Result<(), M::Error> {
    match v {
        Some(v) => m.serialize_field(name, v),
        None => m.skip_field(name),
    }
}

#[cfg(test)]
mod tests;
