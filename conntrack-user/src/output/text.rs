//! Text lines of the reports (`-o text`): one aligned line per event, its fields in the order
//! README.md shows them.

use std::fmt::Write as _;

use crate::event::{
    endpoint_of, how_name, EvictedReport, MidstreamReport, Packet, Report, ResetCause,
    TableFullReport, Time,
};

impl Report {
    pub fn text(&self) -> String {
        let mut s = String::new();
        match self {
            Self::RstSent(r) | Self::RstReceived(r) => {
                packet_text(&mut s, self.kind(), &r.packet);
                let _ = write!(s, " reason={}", opt(&r.reason));
                match r.cause {
                    Some(ResetCause::EntryLost) => s.push_str(" caused_by=entry_lost"),
                    Some(ResetCause::Stray) => s.push_str(" caused_by=stray"),
                    Some(ResetCause::InvalidPacket) => s.push_str(" caused_by=invalid"),
                    None => {}
                }
            }
            Self::Invalid(r) | Self::Ignored(r) => {
                let p = &r.packet;
                packet_text(&mut s, self.kind(), p);
                let _ = write!(
                    s,
                    " len={} hook={} fate={} reason={}",
                    opt(&p.len),
                    p.hook,
                    r.fate.name(),
                    r.reason,
                );
                if let Some(m) = r.missed_by {
                    let _ = write!(s, " missed_by={m}");
                }
                if let Some(c) = &r.conntrack {
                    let _ = write!(
                        s,
                        " ct={}:{}>{}:{} state={}{}",
                        c.orig_src,
                        c.orig_sport,
                        c.orig_dst,
                        c.orig_dport,
                        c.tcp_state.unwrap_or("-"),
                        if c.assured { ",ASSURED" } else { "" }
                    );
                    for (dir, w) in [("orig", &c.original_window), ("reply", &c.reply_window)] {
                        if let Some(w) = w {
                            let _ = write!(
                                s,
                                " {dir}_win=end:{},maxend:{},maxwin:{},scale:{}{}",
                                w.td_end,
                                w.td_maxend,
                                w.td_maxwin,
                                w.td_scale,
                                if w.liberal { ",liberal" } else { "" }
                            );
                        }
                    }
                }
                service_name_text(&mut s, &r.service_name);
            }
            Self::Attribution(r) => {
                let _ = write!(
                    s,
                    "{} {:<12} client={} service={} backend={} reset={}>{} netns={} invalid_reason={} fate={} delay={}us",
                    r.time,
                    self.kind(),
                    opt(&r.client),
                    opt(&r.service),
                    r.backend,
                    r.reset_src,
                    r.reset_dst,
                    r.reset_netns,
                    r.invalid_reason,
                    r.fate.name(),
                    r.delay_us,
                );
                if let Some(l) = &r.lost {
                    let _ = write!(s, " cause={} lost={}", r.cause, how_name(l.how));
                }
                service_name_text(&mut s, &r.service_name);
            }
            Self::TableFull(r) => text_table_full(&mut s, r),
            Self::Evicted(r) => text_evicted(&mut s, r),
            Self::Midstream(r) => text_midstream(&mut s, r),
            Self::Lost(r) | Self::Suppressed(r) => {
                let _ = write!(
                    s,
                    "{} {:<12} counter={} count={}",
                    r.time,
                    self.kind(),
                    r.counter,
                    r.count
                );
            }
            Self::Flow(f) => {
                let _ = write!(
                    s,
                    "{:>6}  {:<24} {:<24} {:<24} {:<32} {} / {}",
                    f.resets,
                    f.client,
                    f.service,
                    f.backend,
                    f.reasons.join("; "),
                    f.first,
                    f.last
                );
            }
            // Text mode prints its summary as prose on stderr; this is only a fallback.
            Self::Summary(_) => s.push_str(&self.json()),
        }
        s
    }
}

/// ` service_name=ns/name:port` at the end of a text line, when known.
pub fn service_name_text(s: &mut String, name: &Option<std::sync::Arc<str>>) {
    if let Some(n) = name {
        let _ = write!(s, " service_name={n}");
    }
}

/// Nanoseconds since the epoch as RFC 3339 with nanoseconds (`2026-11-22T03:21:07.123456789Z`).
pub fn rfc3339(epoch_ns: u64) -> String {
    Time(epoch_ns).to_string()
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), |v| v.to_string())
}

/// `time kind netns=... src > dst flags`: how every line about a packet starts.
fn packet_start(s: &mut String, kind: &str, p: &Packet) {
    let _ = write!(
        s,
        "{} {:<12} netns={:<10} {:>22} > {:<22} {:<8}",
        p.time,
        kind,
        p.netns,
        endpoint_of(p.src, p.sport),
        endpoint_of(p.dst, p.dport),
        opt(&p.flags),
    );
}

/// [`packet_start`] and the sequence numbers, for the kinds whose line shows them.
fn packet_text(s: &mut String, kind: &str, p: &Packet) {
    packet_start(s, kind, p);
    let _ = write!(s, " seq={:<10} ack={:<10}", opt(&p.seq), opt(&p.ack));
}

pub fn text_table_full(s: &mut String, r: &TableFullReport) {
    packet_start(s, "table_full", &r.packet);
    let _ = write!(s, " entries={}/{}", opt(&r.entries), opt(&r.max));
    service_name_text(s, &r.service_name);
}

pub fn text_evicted(s: &mut String, r: &EvictedReport) {
    let e = &r.entry;
    let _ = write!(
        s,
        "{} {:<12} netns={:<10} {:>22} > {:<22} backend={} state={}{} entries={}/{}{}",
        r.time,
        "evicted",
        r.netns,
        e.orig_src,
        e.orig_dst,
        e.reply_src,
        e.tcp_state.unwrap_or("-"),
        if e.assured { ",ASSURED" } else { "" },
        opt(&r.entries),
        opt(&r.max),
        if r.certain { "" } else { " (inferred)" },
    );
    service_name_text(s, &r.service_name);
}

pub fn text_midstream(s: &mut String, r: &MidstreamReport) {
    let p = r.packet();
    packet_text(s, "midstream", p);
    let _ = write!(
        s,
        " len={} hook={} lost={}",
        opt(&p.len),
        p.hook,
        how_name(r.lost.how),
    );
    if let Some(e) = &r.lost.entry {
        let _ = write!(s, " was={}>{}>{}", e.orig_src, e.orig_dst, e.reply_src);
    }
    if let Some(t) = &r.lost.time {
        let _ = write!(s, " at={t}");
    }
    service_name_text(s, &r.service_name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{NfHook, ResetReport, TcpFlags};

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339(1_000_000_001), "1970-01-01T00:00:01.000000001Z");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = Report::RstSent(ResetReport {
            packet: Packet {
                time: Time(0),
                netns: 4026531840,
                hook: NfHook::Unknown,
                proto: 6,
                src: Some("10.0.0.1".parse().unwrap()),
                sport: Some(80),
                dst: Some("fd00::2".parse().unwrap()),
                dport: Some(4000),
                flags: Some(TcpFlags(0x14)),
                seq: Some(0),
                ack: Some(1),
                len: Some(0),
            },
            reason: Some("NO_SOCKET".into()),
            iface: None,
            trigger: None,
            socket: Some(false),
            caused_by_invalid: false,
            cause: None,
            enrichment: None,
        });
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["kind"], "rst_sent");
        for f in [
            "time", "kind", "netns", "src", "sport", "dst", "dport", "flags", "seq", "ack",
            "reason",
        ] {
            assert!(v.get(f).is_some(), "missing {f} in {v}");
        }
        assert_eq!(v["dst"], "fd00::2");
        assert!(r.text().contains("[fd00::2]:4000"), "{}", r.text());
    }
}
