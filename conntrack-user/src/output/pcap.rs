//! `--pcap FILE`: the packet of every report that carries one (`invalid`, `ignored`, `rst_sent`,
//! `rst_received`, `midstream`, `table_full`), as pcapng that Wireshark, tshark and tcpdump read.
//!
//! The programs send a packet's header fields, not its bytes (conntrack-common `Packet`), so each
//! packet is rebuilt from its report: an IPv4 or IPv6 header and the TCP (or UDP) header, without
//! options or payload. The IP total length says what was written (the headers), so every
//! checksum is right for the bytes in the file; the Enhanced Packet Block's original length is
//! the packet's real size (headers + `len`), so tools show a truncated capture of the real
//! packet. What the events do not carry is a fixed placeholder: TTL/hop limit 64, IP ID 0, TCP
//! window 0; an `rst_received` has no sequence numbers (0). Each packet's first comment is its
//! event's JSON line, exactly as `-o json` prints it; the second says it was reconstructed.
//!
//! One Interface Description Block per observation point, family and namespace (`netfilter
//! ipv4/prerouting netns 4026532246`, `tcp:tcp_send_reset ipv4 netns ...`, `skb:kfree_skb ipv6
//! netns ...`), with nanosecond timestamps: the report's `time` (the kernel's CLOCK_BOOTTIME
//! turned into wall-clock time by the correlator), so a packet and its JSON line agree to the
//! nanosecond. The link type is raw IP without a link layer, as LINKTYPE_IPV4 / LINKTYPE_IPV6
//! rather than LINKTYPE_RAW: libpcap (tcpdump; 1.10.3 at least) refuses a file with a second
//! LINKTYPE_RAW interface (it compares the first one's DLT_RAW, 12, with the next one's 101), and
//! supports one link type per file, so tcpdump reads any file whose packets are of one family;
//! Wireshark and tshark read every file.
//!
//! Only reports already made are written, so ordinary packets cost nothing. The file is
//! buffered and flushed once per batch of reports (as stdout is), and at exit. It grows with
//! the events (about 1 KiB each, mostly the comment); the event budget (`--event-budget`)
//! bounds their rate.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    io::{self, BufWriter, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{
                InterfaceDescriptionBlock, InterfaceDescriptionOption, InterfaceTsResolution,
            },
            opt_common::CommonOption,
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
        PcapNgWriteError, PcapNgWriter,
    },
    DataLink, Endianness,
};

use crate::{
    event::{Packet, Report},
    output::packet::Spec,
};

/// The second comment of every packet.
pub const RECONSTRUCTED: &str = "reconstructed by ct-trace from the event above (headers only: \
     no IP or TCP options, no payload; TTL 64, IP ID 0 and TCP window 0 are placeholders)";

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error(transparent)]
    Create(#[from] crate::private::FileError),
    #[error("writing {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: PcapNgWriteError,
    },
}

/// A report's packet and where it was seen, as the file shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields<'a> {
    /// Where it was seen, without the namespace (`netfilter ipv4/prerouting`).
    pub point: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub packet: &'a Packet,
}

/// `ipv4` or `ipv6`: the IP header [`build`] writes for these addresses.
fn family(src: IpAddr, dst: IpAddr) -> &'static str {
    if src.is_ipv4() && dst.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

/// The packet a report carries ([`Report::packet`]); `None` for the kinds without one
/// (`attribution`, `evicted`, counters, flows, the summary) and for records whose headers could
/// not be read.
pub fn fields(r: &Report) -> Option<Fields<'_>> {
    let p = r.packet()?;
    let (src, dst) = (p.src?, p.dst?);
    // A record without headers decodes to 0.0.0.0 > 0.0.0.0.
    if src.is_unspecified() && dst.is_unspecified() {
        return None;
    }
    let family = family(src, dst);
    let point = match r {
        Report::RstSent(_) => format!("tcp:tcp_send_reset {family}"),
        Report::RstReceived(_) => format!("tcp:tcp_receive_reset {family}"),
        // Seen where netfilter freed it (its hook is not known).
        Report::TableFull(_) => format!("skb:kfree_skb {family}"),
        _ => format!("netfilter {family}/{}", p.hook),
    };
    Some(Fields {
        point,
        src,
        dst,
        packet: p,
    })
}

/// The packet's headers as bytes (built by [`crate::output::packet`]), and its length on the
/// wire (headers + payload).
pub fn build(f: &Fields) -> (Vec<u8>, u32) {
    let p = f.packet;
    let pkt = Spec {
        src: f.src,
        dst: f.dst,
        proto: p.proto,
        ports: p.sport.zip(p.dport),
        seq: p.seq.unwrap_or(0),
        ack: p.ack.unwrap_or(0),
        flags: p.flags.map_or(0, |f| f.0),
        window: 0,
        ip_id: 0,
        dont_fragment: false,
        payload: &[],
    }
    .build();
    let ip_header = if f.src.is_ipv4() && f.dst.is_ipv4() {
        20
    } else {
        40
    };
    // The payload is on the wire only behind a transport header.
    let payload = if pkt.len() == ip_header {
        0
    } else {
        p.len.unwrap_or(0)
    };
    let wire = pkt.len() as u32 + u32::from(payload);
    (pkt, wire)
}

/// Writes the packets of reports to a pcapng file.
pub struct PcapWriter<W: Write = File> {
    out: PcapNgWriter<BufWriter<W>>,
    path: PathBuf,
    /// Interface ids by observation point and namespace.
    interfaces: HashMap<(String, u32), u32>,
    /// Packets written since the last flush.
    dirty: bool,
    /// Packets written.
    pub packets: u64,
}

impl PcapWriter<File> {
    /// Creates (mode 0600) or truncates `path` and writes the section header to it. A link,
    /// another user's file or one with other hard links is refused (see `private::create_own`).
    pub fn create(path: &Path) -> Result<Self, PcapError> {
        Self::new(crate::private::create_own(path)?, path)
    }
}

impl<W: Write> PcapWriter<W> {
    /// Writes the section header to `out` and flushes it, so an unwritable file fails before
    /// anything is attached. `path` names it in errors.
    pub fn new(out: W, path: &Path) -> Result<Self, PcapError> {
        let path = path.to_path_buf();
        let shb = SectionHeaderBlock {
            endianness: Endianness::native(),
            major_version: 1,
            minor_version: 0,
            section_length: -1,
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "ct-trace {}",
                env!("CARGO_PKG_VERSION")
            )))],
        };
        let out = BufWriter::with_capacity(64 * 1024, out);
        let out = PcapNgWriter::with_section_header(out, shb).map_err(|e| error(&path, e))?;
        let mut w = Self {
            out,
            path,
            interfaces: HashMap::new(),
            dirty: true,
            packets: 0,
        };
        w.flush()?;
        Ok(w)
    }

    /// Writes the packet of `r`, if it carries one; says whether it did.
    pub fn report(&mut self, r: &Report) -> Result<bool, PcapError> {
        let Some(f) = fields(r) else {
            return Ok(false);
        };
        let linktype = match family(f.src, f.dst) {
            "ipv4" => DataLink::IPV4,
            _ => DataLink::IPV6,
        };
        let interface_id = self.interface(&f.point, f.packet.netns, linktype)?;
        let (data, original_len) = build(&f);
        let epb = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(f.packet.time.0),
            original_len,
            data: Cow::Owned(data),
            options: vec![
                EnhancedPacketOption::Common(CommonOption::Comment(Cow::Owned(r.json()))),
                EnhancedPacketOption::Common(CommonOption::Comment(Cow::Borrowed(RECONSTRUCTED))),
            ],
        };
        self.out
            .write_pcapng_block(epb)
            .map_err(|e| error(&self.path, e))?;
        self.dirty = true;
        self.packets += 1;
        Ok(true)
    }

    fn interface(&mut self, point: &str, netns: u32, linktype: DataLink) -> Result<u32, PcapError> {
        let key = (point.to_string(), netns);
        if let Some(id) = self.interfaces.get(&key) {
            return Ok(*id);
        }
        let idb = InterfaceDescriptionBlock {
            linktype,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(format!("{point} netns {netns}"))),
                InterfaceDescriptionOption::IfDescription(Cow::Borrowed(
                    "packets of ct-trace events, rebuilt from their header fields",
                )),
                InterfaceDescriptionOption::IfTsResol(InterfaceTsResolution::NANO),
            ],
        };
        self.out
            .write_pcapng_block(idb)
            .map_err(|e| error(&self.path, e))?;
        let id = self.interfaces.len() as u32;
        self.interfaces.insert(key, id);
        Ok(id)
    }

    /// Flushes what was written since the last flush to the file.
    pub fn flush(&mut self) -> Result<(), PcapError> {
        if !self.dirty {
            return Ok(());
        }
        self.out.get_mut().flush().map_err(|source| PcapError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.dirty = false;
        Ok(())
    }
}

fn error(path: &Path, e: PcapNgWriteError) -> PcapError {
    match e {
        PcapNgWriteError::Io(source) => PcapError::Io {
            path: path.to_path_buf(),
            source,
        },
        source => PcapError::Format {
            path: path.to_path_buf(),
            source,
        },
    }
}

#[cfg(test)]
mod tests;
