//! Decoding a [`Reason`]: conntrack's log line in its own words, and the conntrack entry the
//! kernel held when it refused the packet (raw `struct nf_conn` pieces, laid out by the running
//! kernel's BTF).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use conntrack_common::{ips, Reason};

use crate::{
    event::{ConntrackReport, WindowReport},
    kernel::btf::CtLayout,
    node::netlink::tcp_state_name,
};

/// `IP_CT_TCP_FLAG_BE_LIBERAL` (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
const TCP_FLAG_BE_LIBERAL: u8 = 0x08;

/// Most distinct formats kept: conntrack logs a handful; garbled records beyond this are
/// rendered from a format of their own.
const MAX_FORMATS: usize = 256;

/// The records' format strings, each made once and shared by every reason that logs it.
#[derive(Default)]
pub struct Formats(HashMap<Box<[u8]>, Arc<str>>);

impl Formats {
    /// The NUL-terminated format string of a record.
    pub fn of(&mut self, r: &Reason) -> Arc<str> {
        let end = r.fmt.iter().position(|&b| b == 0).unwrap_or(r.fmt.len());
        let raw = &r.fmt[..end];
        if let Some(f) = self.0.get(raw) {
            return f.clone();
        }
        let f: Arc<str> = String::from_utf8_lossy(raw).into();
        if self.0.len() < MAX_FORMATS {
            self.0.insert(raw.into(), f.clone());
        }
        f
    }
}

/// How far the packet was past the bound a window message names ("SEQ is over upper bound %u",
/// "ACK is over upper bound %u"): the sequence number minus the bound.
pub fn missed_by(fmt: &str, bound: u64, seq: u32, ack: u32) -> Option<u32> {
    let value = if fmt.starts_with("SEQ is over upper bound") {
        seq
    } else if fmt.starts_with("ACK is over upper bound") {
        ack
    } else {
        return None;
    };
    Some(value.wrapping_sub(bound as u32))
}

/// [`missed_by`] for the messages that name no bound (before 6.1: "SEQ is over the upper bound
/// (over the window of the receiver)", "ACK is over the upper bound (ACKed data not seen yet)",
/// logged through "%s"), from the entry's windows: `tcp_in_window()` refuses a SEQ past the
/// sender's `td_maxend` and an ACK past the receiver's `td_end` (Debian's 5.10.262,
/// nf_conntrack_proto_tcp.c:648-703), the bounds 6.1 prints plus one.
pub fn missed_by_window(
    text: &str,
    ct: Option<&ConntrackReport>,
    seq: u32,
    ack: u32,
) -> Option<u32> {
    let c = ct?;
    let (sender, receiver) = match c.direction {
        crate::event::Direction::Original => (c.original_window?, c.reply_window?),
        crate::event::Direction::Reply => (c.reply_window?, c.original_window?),
    };
    if text.starts_with("SEQ is over the upper bound") {
        Some(seq.wrapping_sub(sender.td_maxend.wrapping_add(1)))
    } else if text.starts_with("ACK is over the upper bound") {
        Some(ack.wrapping_sub(receiver.td_end.wrapping_add(1)))
    } else {
        None
    }
}

fn u32_at(b: &[u8], off: u32) -> u32 {
    let o = off as usize;
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u8_at(b: &[u8], off: u32) -> u8 {
    b.get(off as usize).copied().unwrap_or(0)
}

fn addr(b: &[u8], off: u32, family: u16) -> Option<IpAddr> {
    let o = off as usize;
    let s = b.get(o..o + 16)?;
    match family {
        2 => Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]).into()),
        10 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(s).ok()?).into()),
        _ => None,
    }
}

fn port(b: &[u8], off: u32) -> u16 {
    let o = off as usize;
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

/// TCP state name of the entry (`ct->proto.tcp.state`), when the record has one.
pub fn tcp_state(r: &Reason, l: &CtLayout) -> Option<&'static str> {
    (r.has_ct != 0).then(|| tcp_state_name(u8_at(&r.ct_tcp, l.state)))
}

/// The conntrack entry as the kernel held it when it refused the packet.
pub fn conntrack(r: &Reason, l: &CtLayout) -> Option<ConntrackReport> {
    if r.has_ct == 0 {
        return None;
    }
    let t = &r.ct_tuples;
    let family = u16::from_ne_bytes([t[0][l.l3num as usize], t[0][l.l3num as usize + 1]]);
    let window = |dir: u32| {
        let base = l.seen + dir * l.tcp_state_size;
        let w = &r.ct_tcp;
        WindowReport {
            td_end: u32_at(w, base + l.td_end),
            td_maxend: u32_at(w, base + l.td_maxend),
            td_maxwin: u32_at(w, base + l.td_maxwin),
            td_maxack: u32_at(w, base + l.td_maxack),
            td_scale: u8_at(w, base + l.td_scale),
            liberal: u8_at(w, base + l.flags) & TCP_FLAG_BE_LIBERAL != 0,
        }
    };
    let orig_src = addr(&t[0], l.src_u3, family)?;
    let orig_sport = port(&t[0], l.src_port);
    let p = &r.packet;
    let (psrc, _) = crate::pipeline::events::addrs(p);
    Some(ConntrackReport {
        source: "kernel",
        direction: if psrc == orig_src && p.sport == orig_sport {
            crate::event::Direction::Original
        } else {
            crate::event::Direction::Reply
        },
        orig_src,
        orig_sport,
        orig_dst: addr(&t[0], l.dst_u3, family)?,
        orig_dport: port(&t[0], l.dst_port),
        reply_src: addr(&t[1], l.src_u3, family)?,
        reply_sport: port(&t[1], l.src_port),
        reply_dst: addr(&t[1], l.dst_u3, family)?,
        reply_dport: port(&t[1], l.dst_port),
        tcp_state: tcp_state(r, l),
        assured: r.ct_status & ips::ASSURED != 0,
        original_window: Some(window(0)),
        reply_window: Some(window(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::reason::render;

    /// 5.10 names no bound; the windows give the same figure 6.1 prints (the README's 6.12 run:
    /// seq 598143538, reply window td_maxend 3819433266, bound 3819433267).
    #[test]
    fn the_windows_tell_by_how_much_a_packet_missed_when_the_message_names_no_bound() {
        use crate::event::{Direction, WindowReport};
        let w = |td_end, td_maxend| WindowReport {
            td_end,
            td_maxend,
            td_maxwin: 0,
            td_maxack: 0,
            td_scale: 7,
            liberal: false,
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let ct = ConntrackReport {
            source: "kernel",
            direction: Direction::Reply,
            orig_src: a,
            orig_sport: 1,
            orig_dst: a,
            orig_dport: 2,
            reply_src: a,
            reply_sport: 2,
            reply_dst: a,
            reply_dport: 1,
            tcp_state: Some("ESTABLISHED"),
            assured: true,
            original_window: Some(w(3176641205, 3176706365)),
            reply_window: Some(w(3819369010, 3819433266)),
        };
        let seq_over = "SEQ is over the upper bound (over the window of the receiver)";
        assert_eq!(
            missed_by_window(seq_over, Some(&ct), 598143538, 0),
            missed_by("SEQ is over upper bound %u", 3819433267, 598143538, 0)
        );
        assert_eq!(
            missed_by_window(seq_over, Some(&ct), 598143538, 0),
            Some(1073677567)
        );
        let ack_over = "ACK is over the upper bound (ACKed data not seen yet)";
        assert_eq!(
            missed_by_window(ack_over, Some(&ct), 0, 3176641206 + 10),
            Some(10)
        );
        assert_eq!(missed_by_window("invalid state", Some(&ct), 1, 1), None);
        assert_eq!(missed_by_window(seq_over, None, 1, 1), None);
    }

    /// A format is made once and shared; past the bound, garbled records still render.
    #[test]
    fn formats_are_shared_and_bounded() {
        let rec = |words: &str| {
            let mut r = Reason::default();
            r.fmt[..words.len()].copy_from_slice(words.as_bytes());
            r
        };
        let mut f = Formats::default();
        let a = f.of(&rec("SEQ is over upper bound %u"));
        let b = f.of(&rec("SEQ is over upper bound %u"));
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..MAX_FORMATS + 10 {
            assert_eq!(
                &*f.of(&rec(&format!("garbled {i}"))),
                format!("garbled {i}")
            );
        }
        assert_eq!(f.0.len(), MAX_FORMATS);
    }

    #[test]
    fn renders_conntrack_messages_like_the_kernel() {
        assert_eq!(
            render(
                "SEQ is over upper bound %u (over the window of the receiver)",
                [2875013249, 0],
                None
            ),
            "SEQ is over upper bound 2875013249 (over the window of the receiver)"
        );
        assert_eq!(
            render(
                "packet (index %d) in dir %d invalid, state %s",
                [3, 1],
                Some("ESTABLISHED")
            ),
            "packet (index 3) in dir 1 invalid, state ESTABLISHED"
        );
        assert_eq!(
            render("invalid tcp flag combination", [0, 0], None),
            "invalid tcp flag combination"
        );
        assert_eq!(render("%u%% %lu %pI4 %u", [1, 2], None), "1% 2 ? ?");
        assert_eq!(render("trailing %", [0, 0], None), "trailing ?");
    }

    #[test]
    fn measures_the_miss() {
        assert_eq!(
            missed_by("SEQ is over upper bound %u (over", 1000, 1100, 0),
            Some(100)
        );
        assert_eq!(
            missed_by("ACK is over upper bound %u", u64::from(u32::MAX), 9, 9),
            Some(10)
        );
        assert_eq!(missed_by("invalid rst", 0, 1, 1), None);
    }

    #[test]
    fn decodes_the_entry_with_btf_offsets() {
        let l = CtLayout {
            src_u3: 0,
            src_port: 16,
            l3num: 18,
            dst_u3: 20,
            dst_port: 36,
            seen: 0,
            tcp_state_size: 20,
            state: 40,
            td_end: 0,
            td_maxend: 4,
            td_maxwin: 8,
            td_maxack: 12,
            td_scale: 16,
            flags: 17,
        };
        let mut r = Reason {
            has_ct: 1,
            ct_status: 1 << 2,
            ..Default::default()
        };
        let tuple = |src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16| {
            let mut t = [0u8; 40];
            t[..4].copy_from_slice(&src);
            t[16..18].copy_from_slice(&sport.to_be_bytes());
            t[18..20].copy_from_slice(&2u16.to_ne_bytes());
            t[20..24].copy_from_slice(&dst);
            t[36..38].copy_from_slice(&dport.to_be_bytes());
            t
        };
        r.ct_tuples[0] = tuple([10, 0, 0, 1], 40000, [10, 96, 0, 10], 80);
        r.ct_tuples[1] = tuple([10, 0, 0, 2], 8080, [10, 0, 0, 1], 40000);
        r.ct_tcp[20 + 4..20 + 8].copy_from_slice(&5000u32.to_ne_bytes());
        r.ct_tcp[20 + 17] = TCP_FLAG_BE_LIBERAL;
        r.ct_tcp[40] = 3;
        r.packet.family = 4;
        r.packet.saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        r.packet.sport = 8080;
        let c = conntrack(&r, &l).unwrap();
        assert_eq!(c.direction, crate::event::Direction::Reply);
        assert_eq!(c.orig_dst.to_string(), "10.96.0.10");
        assert_eq!(
            (c.orig_sport, c.orig_dport, c.reply_sport),
            (40000, 80, 8080)
        );
        assert_eq!(c.tcp_state, Some("ESTABLISHED"));
        assert!(c.assured);
        let w = c.reply_window.unwrap();
        assert_eq!((w.td_maxend, w.liberal), (5000, true));
        assert!(!c.original_window.unwrap().liberal);
        r.has_ct = 0;
        assert!(conntrack(&r, &l).is_none());
    }
}
