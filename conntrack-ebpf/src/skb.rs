//! Reading packets out of `struct sk_buff`: the helpers every program shares (the programs
//! themselves live in their subsystem's module; the fate of INVALID packets in `fate`).

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel};
use conntrack_common::{
    Header, Kind, Offsets, Packet, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, WIRE_VERSION,
};

const ETH_P_IP_V: u8 = 4;
const ETH_P_IPV6_V: u8 = 6;

#[inline(always)]
pub unsafe fn read<T>(base: *const u8, off: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address and returns an error.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).map_err(|e| e as i64) }
}

#[inline(always)]
pub fn header(kind: Kind) -> Header {
    Header {
        version: WIRE_VERSION,
        kind: kind as u8,
        _pad: [0; 2],
        _pad2: 0,
        // SAFETY: helper call with no arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// `net->ns.inum` for a `struct net *`.
#[inline(always)]
pub fn netns_inum(net: *const u8, o: &Offsets) -> u32 {
    if net.is_null() {
        return 0;
    }
    // SAFETY: probe read of a kernel pointer.
    unsafe { read::<u32>(net, o.net_ns_inum) }.unwrap_or(0)
}

/// Interface index and namespace of the device an skb is on (`skb->dev`), zero when there is none.
#[inline(always)]
pub fn skb_dev(skb: *const u8, o: &Offsets) -> (u32, u32) {
    // SAFETY: probe reads of kernel pointers.
    unsafe {
        let dev: *const u8 = match read::<u64>(skb, o.skb_dev) {
            Ok(d) if d != 0 => d as *const u8,
            _ => return (0, 0),
        };
        let ifindex = read::<u32>(dev, o.dev_ifindex).unwrap_or(0);
        let net = read::<u64>(dev, o.dev_nd_net).unwrap_or(0) as *const u8;
        (ifindex, netns_inum(net, o))
    }
}

// Written here rather than taken from `network-types` (0.1), measured with llvm-objdump: its
// headers are byte arrays (alignment 1), so every multi-byte field becomes byte loads and shifts
// (BPF has no unaligned loads). With its `TcpHdr` alone each function that parses a packet grew
// by 16 instructions; with its IP headers too, by 43-52 (the reason kprobes shrank by 29-36),
// 128 more in all. And its IP headers hold the protocol as `IpProto`, an enum without a variant
// for every byte value: reading an arbitrary packet into one would be undefined behaviour.
#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    ver_tc_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[repr(C)]
struct TcpHdr {
    source: u16,
    dest: u16,
    seq: u32,
    ack_seq: u32,
    doff_res: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg_ptr: u16,
}

/// Parses the IP and TCP headers at `skb->head + skb->network_header` into `p` (tuple, flags,
/// seq, ack, payload length). IPv6 extension headers are not followed: such packets are reported
/// with their next-header value as `proto` and no ports. Returns false when nothing could be read.
#[inline(always)]
pub fn read_packet(skb: *const u8, o: &Offsets, p: &mut Packet) -> bool {
    // SAFETY: every access is a probe read.
    unsafe {
        let head = match read::<u64>(skb, o.skb_head) {
            Ok(h) if h != 0 => h as *const u8,
            _ => return false,
        };
        let nh = match read::<u16>(skb, o.skb_network_header) {
            Ok(n) => n,
            Err(_) => return false,
        };
        let ip = head.add(nh as usize);
        let first = match read::<u8>(ip, 0) {
            Ok(b) => b,
            Err(_) => return false,
        };
        let (l4, l4_len) = match first >> 4 {
            ETH_P_IP_V => {
                let h = match read::<Ipv4Hdr>(ip, 0) {
                    Ok(h) => h,
                    Err(_) => return false,
                };
                let ihl = ((h.ver_ihl & 0x0f) as u32) * 4;
                p.family = 4;
                p.proto = h.protocol;
                p.saddr[..4].copy_from_slice(&h.saddr);
                p.daddr[..4].copy_from_slice(&h.daddr);
                (
                    ip.add(ihl as usize),
                    (u16::from_be(h.tot_len) as u32).saturating_sub(ihl),
                )
            }
            ETH_P_IPV6_V => {
                let h = match read::<Ipv6Hdr>(ip, 0) {
                    Ok(h) => h,
                    Err(_) => return false,
                };
                p.family = 6;
                p.proto = h.nexthdr;
                p.saddr = h.saddr;
                p.daddr = h.daddr;
                (ip.add(40), u16::from_be(h.payload_len) as u32)
            }
            _ => return false,
        };
        if p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6 {
            // The message type, which tells an ICMP error from the rest.
            p.icmp_type = read::<u8>(l4, 0).unwrap_or(0);
            return true;
        }
        if p.proto != IPPROTO_TCP {
            return true;
        }
        let t = match read::<TcpHdr>(l4, 0) {
            Ok(t) => t,
            Err(_) => return true,
        };
        p.sport = u16::from_be(t.source);
        p.dport = u16::from_be(t.dest);
        p.seq = u32::from_be(t.seq);
        p.ack = u32::from_be(t.ack_seq);
        p.tcp_flags = t.flags;
        let doff = ((t.doff_res >> 4) as u32) * 4;
        p.payload_len = l4_len.saturating_sub(doff) as u16;
        true
    }
}
