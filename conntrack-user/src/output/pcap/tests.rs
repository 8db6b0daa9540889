//! `--pcap`: files written here, read back with pcap-file's reader.

use std::net::Ipv4Addr;

use pcap_file::pcapng::{Block, PcapNgReader};

use super::*;
use crate::event::{CounterReport, Fate, InvalidReport, NfHook, ReasonText, ResetReport, TcpFlags};
use crate::output::packet::checksum;

fn invalid(src: &str, dst: &str) -> Report {
    Report::Invalid(InvalidReport {
        packet: Packet {
            time: "2026-11-22T03:21:07.123456789Z".into(),
            netns: 4026532246,
            hook: NfHook::of(0),
            proto: 6,
            src: Some(src.parse().unwrap()),
            sport: Some(8080),
            dst: Some(dst.parse().unwrap()),
            dport: Some(40000),
            flags: Some(TcpFlags(0x18)),
            seq: Some(0xdead_beef),
            ack: Some(7),
            len: Some(100),
        },
        in_iface: Some("eth0".into()),
        out_iface: None,
        reason: ReasonText::fixed("SEQ is over upper bound"),
        missed_by: Some(1),
        fate: Fate::Passed,
        drop_reason: None,
        conntrack: None,
        tracked: None,
        enrichment: None,
        service_name: None,
    })
}

fn reset(sent: bool, known: bool) -> Report {
    let r = ResetReport {
        packet: Packet {
            time: "2026-11-22T03:21:07.223456789Z".into(),
            netns: 4026532247,
            hook: NfHook::Unknown,
            proto: 6,
            src: known.then(|| "10.0.0.1".parse().unwrap()),
            sport: Some(40000),
            dst: known.then(|| "10.0.0.2".parse().unwrap()),
            dport: Some(8080),
            flags: Some(TcpFlags::RST),
            seq: sent.then_some(0x1234_5678),
            ack: None,
            len: Some(0),
        },
        reason: None,
        iface: None,
        trigger: None,
        socket: None,
        caused_by_invalid: sent,
        cause: None,
        enrichment: None,
    };
    if sent {
        Report::RstSent(r)
    } else {
        Report::RstReceived(r)
    }
}

fn table_full_udp() -> Report {
    Report::TableFull(crate::event::TableFullReport {
        packet: Packet {
            time: "2026-11-22T03:21:08.000000001Z".into(),
            netns: 4026532246,
            hook: NfHook::Unknown,
            proto: 17,
            src: Some("10.0.0.1".parse().unwrap()),
            sport: Some(5353),
            dst: Some("10.0.0.9".parse().unwrap()),
            dport: Some(53),
            flags: None,
            seq: None,
            ack: None,
            len: None,
        },
        entries: Some(40),
        entries_source: "kernel",
        max: Some(40),
        service_name: None,
    })
}

/// Sums a header and its pseudo-header: 0 when the checksum in it is right.
fn verify(parts: &[&[u8]]) -> u16 {
    checksum(parts)
}

#[test]
fn written_file_reads_back_with_interfaces_comments_lengths_and_checksums() {
    let reports = [
        invalid("10.0.0.2", "10.0.0.1"),
        reset(true, true),
        reset(false, true),
        // No addresses: no packet.
        reset(false, false),
        Report::Lost(CounterReport {
            time: "2026-11-22T03:21:08.000000001Z".into(),
            counter: "lost_invalid",
            count: 1,
        }),
        table_full_udp(),
        invalid("fd00::2", "fd00::1"),
        invalid("10.0.0.2", "10.0.0.1"),
    ];
    let mut w = PcapWriter::new(Vec::new(), Path::new("mem")).unwrap();
    let wrote: Vec<bool> = reports.iter().map(|r| w.report(r).unwrap()).collect();
    assert_eq!(
        wrote,
        [true, true, true, false, false, true, true, true],
        "only reports with a packet"
    );
    w.flush().unwrap();
    assert_eq!(w.packets, 6);
    let bytes = w.out.into_inner().into_inner().unwrap();

    let mut rd = PcapNgReader::new(&bytes[..]).unwrap();
    let mut packets = Vec::new();
    let (mut sections, mut names, mut linktypes) = (0, Vec::new(), Vec::new());
    while let Some(b) = rd.next_block() {
        match b.unwrap().0 {
            Block::SectionHeader(_) => sections += 1,
            Block::InterfaceDescription(i) => {
                linktypes.push(i.linktype);
                assert_eq!(i.ts_resolution(), InterfaceTsResolution::NANO);
                names.extend(i.options.iter().filter_map(|o| match o {
                    InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                    _ => None,
                }));
            }
            Block::EnhancedPacket(p) => packets.push(p.into_owned()),
            other => panic!("unexpected block {other:?}"),
        }
    }
    // One section: the one the reader read when it opened the file.
    assert_eq!(sections, 0, "no second section");
    assert_eq!(
        rd.section().options,
        [SectionHeaderOption::UserApplication(
            format!("ct-trace {}", env!("CARGO_PKG_VERSION")).into()
        )]
    );
    assert_eq!(
        names,
        [
            "netfilter ipv4/prerouting netns 4026532246",
            "tcp:tcp_send_reset ipv4 netns 4026532247",
            "tcp:tcp_receive_reset ipv4 netns 4026532247",
            "skb:kfree_skb ipv4 netns 4026532246",
            "netfilter ipv6/prerouting netns 4026532246",
        ]
    );
    // Raw IP, one link type per family (see the module doc).
    use DataLink::{IPV4, IPV6};
    assert_eq!(linktypes, [IPV4, IPV4, IPV4, IPV4, IPV6]);
    let with_packets: Vec<&Report> = reports.iter().filter(|r| fields(r).is_some()).collect();
    assert_eq!(packets.len(), with_packets.len());
    for (p, r) in packets.iter().zip(&with_packets) {
        let comments: Vec<&str> = p
            .options
            .iter()
            .filter_map(|o| match o {
                EnhancedPacketOption::Common(CommonOption::Comment(c)) => Some(c.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(comments, [r.json().as_str(), RECONSTRUCTED]);
        let f = fields(r).unwrap();
        assert_eq!(
            p.timestamp.as_nanos() as u64,
            f.packet.time.0,
            "the packet's time is the event's"
        );
    }
    let ids: Vec<u32> = packets.iter().map(|p| p.interface_id).collect();
    assert_eq!(ids, [0, 1, 2, 3, 4, 0], "interfaces are reused");

    // IPv4 TCP: 20 + 20 bytes written, 140 on the wire.
    let d = &packets[0].data;
    assert_eq!((d.len(), packets[0].original_len), (40, 140));
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 40, "IP total length");
    assert_eq!(verify(&[&d[..20]]), 0, "IPv4 header checksum");
    assert_eq!(
        Ipv4Addr::new(d[12], d[13], d[14], d[15]),
        Ipv4Addr::new(10, 0, 0, 2)
    );
    let pseudo = [&d[12..20], &[0, 6, 0, 20][..]].concat();
    assert_eq!(verify(&[&pseudo, &d[20..]]), 0, "TCP checksum");
    assert_eq!(u16::from_be_bytes([d[20], d[21]]), 8080);
    assert_eq!(&d[24..28], &0xdead_beefu32.to_be_bytes());
    assert_eq!(d[33], 0x18, "PSH|ACK");

    // rst_sent: the reset itself, no payload.
    let d = &packets[1].data;
    assert_eq!((d.len(), packets[1].original_len), (40, 40));
    assert_eq!(d[33], 0x04);
    assert_eq!(&d[24..28], &0x1234_5678u32.to_be_bytes());

    // UDP: 8-byte header with its length and checksum.
    let d = &packets[3].data;
    assert_eq!((d.len(), d[9]), (28, 17));
    assert_eq!(u16::from_be_bytes([d[24], d[25]]), 8);
    let pseudo = [&d[12..20], &[0, 17, 0, 8][..]].concat();
    assert_eq!(verify(&[&pseudo, &d[20..]]), 0, "UDP checksum");

    // IPv6 TCP: 40 + 20 bytes, payload length 20.
    let d = &packets[4].data;
    assert_eq!((d.len(), packets[4].original_len), (60, 160));
    assert_eq!(
        (d[0] >> 4, u16::from_be_bytes([d[4], d[5]]), d[6]),
        (6, 20, 6)
    );
    let pseudo = [&d[8..40], &[0, 0, 0, 20, 0, 0, 0, 6][..]].concat();
    assert_eq!(verify(&[&pseudo, &d[40..]]), 0, "TCP checksum over IPv6");
}

/// A file that cannot be written (a full disk) is an error naming it, never a panic.
#[test]
fn write_errors_name_the_file() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let Err(e) = PcapWriter::new(Full, Path::new("/x/out.pcapng")) else {
        panic!("a full disk fails at the section header");
    };
    let chain = anyhow::Error::from(e);
    assert_eq!(
        format!("{chain:#}"),
        format!(
            "writing /x/out.pcapng: {}",
            io::Error::from_raw_os_error(libc::ENOSPC)
        )
    );
}
