//! JSON lines of the reports a storm is made of (`invalid`, `ignored`), written by hand; every
//! other kind goes through serde. The `Serialize` of [`InvalidReport`] stays the definition of
//! the bytes: the tests below compare this writer with serde_json on reports of
//! every shape. Why by hand: through serde a line costs a visitor call per field, an escape
//! scan of every string byte by byte (the time, the flags, the hook, the fate are never
//! escaped) and a formatter for each address; writing them here made `ctt-pipeline` (the
//! userspace event path, BENCHMARKS.md) 1.2-1.4x faster in alternating runs.

use std::{io::Write as _, net::IpAddr};

use crate::event::{InvalidReport, InvalidShows, Packet, ReasonText, Report, Shows};

impl Report {
    pub fn json(&self) -> String {
        let mut buf = Vec::with_capacity(512);
        write(&mut buf, self);
        // Made of `&str`s and ASCII: UTF-8.
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Appends `r`'s JSON object (no newline) to `buf`.
pub fn write(buf: &mut Vec<u8>, r: &Report) {
    match r {
        Report::Invalid(x) => invalid(buf, "invalid", x),
        Report::Ignored(x) => invalid(buf, "ignored", x),
        // Serialising plain structs of strings, numbers and maps cannot fail.
        _ => {
            let _ = serde_json::to_writer(&mut *buf, r);
        }
    }
}

/// An `invalid` or `ignored` report, fields in the order its `Serialize` writes them (`None` is
/// `null` except for the fields it omits when unset).
fn invalid(buf: &mut Vec<u8>, kind: &str, r: &InvalidReport) {
    buf.extend_from_slice(b"{\"kind\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.push(b'"');
    packet_head::<InvalidShows>(buf, &r.packet);
    buf.extend_from_slice(b",\"in_iface\":");
    opt_str(buf, r.in_iface.as_deref());
    buf.extend_from_slice(b",\"out_iface\":");
    opt_str(buf, r.out_iface.as_deref());
    packet_tuple::<InvalidShows>(buf, &r.packet);
    buf.extend_from_slice(b",\"reason\":");
    reason(buf, &r.reason);
    if let Some(m) = r.missed_by {
        buf.extend_from_slice(b",\"missed_by\":");
        num(buf, m);
    }
    buf.extend_from_slice(b",\"fate\":\"");
    buf.extend_from_slice(r.fate.name().as_bytes());
    buf.push(b'"');
    if let Some(d) = &r.drop_reason {
        buf.extend_from_slice(b",\"drop_reason\":");
        string(buf, d);
    }
    buf.extend_from_slice(b",\"conntrack\":");
    match &r.conntrack {
        // Rare (a reason record with the kernel's entry, or a lookup's answer): serde's.
        Some(c) => {
            let _ = serde_json::to_writer(&mut *buf, c);
        }
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"tracked\":");
    buf.extend_from_slice(match r.tracked {
        Some(true) => b"true",
        Some(false) => b"false",
        None => b"null",
    });
    if let Some(e) = r.enrichment {
        buf.extend_from_slice(b",\"enrichment\":\"");
        buf.extend_from_slice(e.name().as_bytes());
        buf.push(b'"');
    }
    if let Some(s) = &r.service_name {
        buf.extend_from_slice(b",\"service_name\":");
        string(buf, s);
    }
    buf.push(b'}');
}

/// [`Packet::serialize_head`]'s fields, each after a comma.
fn packet_head<K: Shows>(buf: &mut Vec<u8>, p: &Packet) {
    buf.extend_from_slice(b",\"time\":\"");
    buf.extend_from_slice(&p.time.rfc3339());
    buf.extend_from_slice(b"\",\"netns\":");
    num(buf, p.netns);
    if K::HOOK {
        buf.extend_from_slice(b",\"hook\":\"");
        buf.extend_from_slice(p.hook.name().as_bytes());
        buf.push(b'"');
    }
}

/// [`Packet::serialize_tuple`]'s fields, each after a comma.
fn packet_tuple<K: Shows>(buf: &mut Vec<u8>, p: &Packet) {
    if K::PROTO {
        buf.extend_from_slice(b",\"proto\":");
        num(buf, p.proto);
    }
    buf.extend_from_slice(b",\"src\":");
    opt_ip(buf, p.src);
    buf.extend_from_slice(b",\"sport\":");
    opt_num(buf, p.sport);
    buf.extend_from_slice(b",\"dst\":");
    opt_ip(buf, p.dst);
    buf.extend_from_slice(b",\"dport\":");
    opt_num(buf, p.dport);
    buf.extend_from_slice(b",\"flags\":");
    match p.flags {
        Some(f) => {
            buf.push(b'"');
            buf.extend_from_slice(f.spell(&mut [0; 32]).as_bytes());
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
    if K::SEQ_ACK {
        buf.extend_from_slice(b",\"seq\":");
        opt_num(buf, p.seq);
        buf.extend_from_slice(b",\"ack\":");
        opt_num(buf, p.ack);
    }
    if K::LEN {
        buf.extend_from_slice(b",\"len\":");
        opt_num(buf, p.len);
    }
}

fn num(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt_num(buf: &mut Vec<u8>, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => num(buf, n),
        None => buf.extend_from_slice(b"null"),
    }
}

fn opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

/// A JSON string: copied as is when no byte needs escaping (interface names, reason words and
/// Service names nearly always), else escaped by serde_json.
fn string(buf: &mut Vec<u8>, s: &str) {
    // No early exit: the whole scan vectorises, and the strings are short.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20 && b != b'"' && b != b'\\'));
    if plain {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// A reason's words: a record's rendered straight into the line, escaped only if they need it.
fn reason(buf: &mut Vec<u8>, r: &ReasonText) {
    if let Some(s) = r.plain() {
        return string(buf, s);
    }
    let start = buf.len();
    buf.push(b'"');
    let _ = write!(buf, "{r}");
    if buf[start + 1..]
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    {
        buf.truncate(start);
        let _ = serde_json::to_writer(&mut *buf, r);
    } else {
        buf.push(b'"');
    }
}

fn opt_ip(buf: &mut Vec<u8>, a: Option<IpAddr>) {
    match a {
        Some(a) => ip(buf, a),
        None => buf.extend_from_slice(b"null"),
    }
}

/// An address as serde writes it (its `Display`, quoted); IPv4 without the formatter.
fn ip(buf: &mut Vec<u8>, a: IpAddr) {
    buf.push(b'"');
    match a {
        IpAddr::V4(a) => {
            let [x, y, z, w] = a.octets();
            num(buf, x);
            for o in [y, z, w] {
                buf.push(b'.');
                num(buf, o);
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(buf, "{a}");
        }
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{
        ConntrackReport, Direction, Enrichment, Fate, NfHook, ReasonText, TcpFlags, Time,
        WindowReport,
    };

    /// A small deterministic generator (xorshift), so a failure names its case.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// `f`'s value two times in three, else `None`.
        fn some<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
            (!self.next().is_multiple_of(3)).then(|| f(self))
        }
        fn text(&mut self) -> Arc<str> {
            let words = [
                "eth0",
                "SEQ is over upper bound 1234 (over the window of the receiver)",
                "quote \" and backslash \\ and tab \t",
                "ctl \u{1} \u{1f} del \u{7f}",
                "unicode é ✓",
                "",
                "default/web:http",
            ];
            words[(self.next() % words.len() as u64) as usize].into()
        }
        fn ip(&mut self) -> IpAddr {
            let x = self.next();
            if x.is_multiple_of(2) {
                IpAddr::from((x as u32).to_be_bytes())
            } else {
                IpAddr::from((u128::from(x) << 64 | u128::from(x >> 7)).to_be_bytes())
            }
        }
    }

    fn report(g: &mut Rng) -> InvalidReport {
        let window = |g: &mut Rng| WindowReport {
            td_end: g.next() as u32,
            td_maxend: g.next() as u32,
            td_maxwin: g.next() as u32,
            td_maxack: g.next() as u32,
            td_scale: g.next() as u8,
            liberal: g.next().is_multiple_of(2),
        };
        let conntrack = ConntrackReport {
            source: "kernel",
            direction: Direction::Reply,
            orig_src: g.ip(),
            orig_sport: g.next() as u16,
            orig_dst: g.ip(),
            orig_dport: g.next() as u16,
            reply_src: g.ip(),
            reply_sport: g.next() as u16,
            reply_dst: g.ip(),
            reply_dport: g.next() as u16,
            tcp_state: g.some(|_| "ESTABLISHED"),
            assured: g.next().is_multiple_of(2),
            original_window: g.some(window),
            reply_window: g.some(window),
        };
        let fates = [Fate::Dropped, Fate::Passed, Fate::Unknown, Fate::Accepted];
        let time = Time(g.next());
        let netns = g.next() as u32;
        let hook = NfHook::of(g.next() as u8 % 6);
        let (in_iface, out_iface) = (g.some(|g| g.text()), g.some(|g| g.text()));
        InvalidReport {
            packet: Packet {
                time,
                netns,
                hook,
                proto: g.next() as u8,
                src: Some(g.ip()),
                sport: g.some(|g| g.next() as u16),
                dst: Some(g.ip()),
                dport: g.some(|g| g.next() as u16),
                flags: g.some(|g| TcpFlags(g.next() as u8)),
                seq: g.some(|g| g.next() as u32),
                ack: g.some(|g| g.next() as u32),
                len: g.some(|g| g.next() as u16),
            },
            in_iface,
            out_iface,
            // Half a start-up message, half a record's format and values (rendered when written).
            reason: if g.next().is_multiple_of(2) {
                ReasonText::new(g.text())
            } else {
                let fmt = format!("{} %u over %x, %s", g.text());
                ReasonText::logged(fmt.into(), [g.next(), g.next()], g.some(|_| "SYN_SENT"))
            },
            missed_by: g.some(|g| g.next() as u32),
            fate: fates[(g.next() % 4) as usize],
            drop_reason: g.some(|g| g.text()),
            conntrack: g.some(|_| Box::new(conntrack)),
            tracked: g.some(|g| g.next().is_multiple_of(2)),
            enrichment: g.some(|_| Enrichment::Skipped),
            service_name: g.some(|g| g.text()),
        }
    }

    #[test]
    fn invalid_and_ignored_lines_are_serde_json_s_bytes() {
        let mut g = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..20_000 {
            let r = report(&mut g);
            for r in [Report::Invalid(r.clone()), Report::Ignored(r)] {
                let mut fast = Vec::new();
                write(&mut fast, &r);
                let serde = serde_json::to_string(&r).unwrap();
                assert_eq!(String::from_utf8(fast).unwrap(), serde, "case {case}");
            }
        }
    }
}
