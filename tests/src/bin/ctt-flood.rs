//! `ctt-flood`: sends a bounded flood of TCP segments that conntrack marks INVALID, as fast as
//! one raw socket with `sendmmsg` goes (or at a given rate), for the storm tests and
//! `cargo xtask bench`. Run it inside a test namespace: it only sends to the address given.
//!
//! Each segment is SYN|FIN (conntrack's `tcp_error()`: "invalid tcp flag combination"), from a
//! new source port each time, so every one is its own flow and none creates an entry. With
//! `--syn` each is a plain SYN instead: a new entry each (half-open, not ASSURED: what
//! `early_drop` evicts from a full table), for the destroy-event storm of
//! tests/tests/destroy_storm.rs. `--first-port P` starts the source ports at P (default 1025),
//! so that each burst's flows can be told apart.
//!
//! Usage: ctt-flood [--syn] [--first-port P] SRC DST COUNT [RATE_PER_S]
//! (IPv4; prints `sent N in S s` on stdout)

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

const BATCH: usize = 256;
const LEN: usize = 40;

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const SYN: u8 = 0x02;
const FIN_SYN: u8 = 0x03;

/// An IPv4 + TCP segment with `flags` (SYN|FIN, or SYN) and correct checksums.
fn segment(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, seq: u32, flags: u8) -> [u8; LEN] {
    let mut p = [0u8; LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let mut pseudo = 0u32;
    for w in [&src.octets()[..], &dst.octets()[..]] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 6 + 20;
    let c = checksum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

fn main() {
    let usage = || -> ! {
        eprintln!("usage: ctt-flood [--syn] [--first-port P] SRC DST COUNT [RATE_PER_S]");
        std::process::exit(2)
    };
    let mut args: Vec<String> = std::env::args().collect();
    let mut flags = FIN_SYN;
    let mut first_port = 1025u16;
    while let Some(opt) = args.get(1).filter(|a| a.starts_with("--")).cloned() {
        args.remove(1);
        match opt.as_str() {
            "--syn" => flags = SYN,
            "--first-port" if args.len() > 1 => {
                first_port = args.remove(1).parse().unwrap_or_else(|_| usage());
            }
            _ => usage(),
        }
    }
    if args.len() < 4 || first_port < 1024 {
        usage();
    }
    let parse_ip = |s: &str| -> Ipv4Addr {
        s.parse().unwrap_or_else(|_| {
            eprintln!("ctt-flood: `{s}` is not an IPv4 address");
            std::process::exit(2)
        })
    };
    let (src, dst) = (parse_ip(&args[1]), parse_ip(&args[2]));
    let count: u64 = args[3].parse().unwrap_or_else(|_| {
        eprintln!("ctt-flood: `{}` is not a count", args[3]);
        std::process::exit(2)
    });
    let rate: Option<f64> = args
        .get(4)
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0.0);

    // SAFETY: plain socket(2); IPPROTO_RAW implies IP_HDRINCL.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        eprintln!("ctt-flood: socket: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());

    let mut bufs = vec![[0u8; LEN]; BATCH];
    let mut iov: Vec<libc::iovec> = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: LEN,
        };
        BATCH
    ];
    // SAFETY: all-zero mmsghdr is valid; pointers are filled in below.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let start = Instant::now();
    let mut sent = 0u64;
    // The port before the first one (ports wrap from 65535 to 1024).
    let mut sport = first_port - 1;
    while sent < count {
        let n = ((count - sent) as usize).min(BATCH);
        for i in 0..n {
            sport = if sport == u16::MAX { 1024 } else { sport + 1 };
            bufs[i] = segment(src, dst, sport, (sent as u32).wrapping_add(i as u32), flags);
            iov[i].iov_base = bufs[i].as_mut_ptr().cast();
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: msgs[..n] point at live buffers.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::yield_now();
                continue;
            }
            eprintln!("ctt-flood: sendmmsg: {e}");
            std::process::exit(1);
        }
        sent += r as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("sent {sent} in {secs:.3} s ({:.0}/s)", sent as f64 / secs);
}
