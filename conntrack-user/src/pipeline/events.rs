//! Decoding ring-buffer records into typed events. A record that is too short, from another
//! build (version), or of an unknown kind is an error, never a panic or garbage.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use conntrack_common::{
    Drop, Header, Kind, Packet, Pressure, Reason, Reset, Verdict, WIRE_VERSION,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record has wire version {0}, this ct-trace speaks {WIRE_VERSION}")]
    Version(u8),
    #[error("record has unknown kind {0}")]
    Kind(u8),
    #[error("{kind:?} record of {len} bytes, expected {want}")]
    Truncated { kind: Kind, len: usize, want: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Reset(Kind, Reset),
    Invalid(Verdict),
    Drop(Drop),
    Reason(Box<Reason>),
    /// `Kind::Midstream` or `Kind::TableFull`.
    Pressure(Kind, Pressure),
}

impl Event {
    /// The record's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Event::Reset(k, _) | Event::Pressure(k, _) => *k,
            Event::Invalid(_) => Kind::Invalid,
            Event::Drop(_) => Kind::Drop,
            Event::Reason(_) => Kind::Reason,
        }
    }

    /// The record's CLOCK_BOOTTIME, as the program read it.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Reset(_, r) => r.header.ts_ns,
            Event::Invalid(v) => v.header.ts_ns,
            Event::Drop(d) => d.header.ts_ns,
            Event::Reason(r) => r.header.ts_ns,
            Event::Pressure(_, p) => p.header.ts_ns,
        }
    }
}

fn read<T: Copy>(b: &[u8], kind: Kind) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if b.len() < want {
        return Err(DecodeError::Truncated {
            kind,
            len: b.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a repr(C) type of integers and byte arrays (any bit pattern
    // is valid), read unaligned because ring buffer records are only 8-byte aligned.
    Ok(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
}

pub fn decode(b: &[u8]) -> Result<Event, DecodeError> {
    if b.len() < std::mem::size_of::<Header>() {
        return Err(DecodeError::Short(b.len()));
    }
    let (version, kind) = (b[0], b[1]);
    if version != WIRE_VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind = Kind::try_from(kind).map_err(DecodeError::Kind)?;
    Ok(match kind {
        Kind::RstSent | Kind::RstReceived => Event::Reset(kind, read(b, kind)?),
        Kind::Invalid => Event::Invalid(read(b, kind)?),
        Kind::Drop => Event::Drop(read(b, kind)?),
        Kind::Reason => Event::Reason(Box::new(read(b, kind)?)),
        Kind::Midstream | Kind::TableFull => Event::Pressure(kind, read(b, kind)?),
    })
}

/// Addresses of a packet in their usual text forms.
pub fn addrs(p: &Packet) -> (IpAddr, IpAddr) {
    let v = |a: &[u8; 16]| -> IpAddr {
        if p.family == 6 {
            Ipv6Addr::from(*a).into()
        } else {
            Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
        }
    };
    (v(&p.saddr), v(&p.daddr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value with explicit padding.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    fn reset() -> Reset {
        let mut r = Reset::default();
        r.header.version = WIRE_VERSION;
        r.header.kind = Kind::RstSent as u8;
        r.packet.family = 4;
        r.packet.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.packet.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        r.packet.sport = 80;
        r.packet.seq = 7;
        r
    }

    #[test]
    fn decodes_a_reset() {
        let r = reset();
        assert_eq!(decode(&bytes(&r)), Ok(Event::Reset(Kind::RstSent, r)));
        let (s, d) = addrs(&r.packet);
        assert_eq!(
            (s.to_string(), d.to_string()),
            ("10.0.0.1".into(), "10.0.0.2".into())
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut b = bytes(&reset());
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::Version(99)));
        b[0] = WIRE_VERSION;
        b[1] = 200;
        assert_eq!(decode(&b), Err(DecodeError::Kind(200)));
        b[1] = Kind::Invalid as u8;
        assert!(matches!(
            decode(&b[..40]),
            Err(DecodeError::Truncated { .. })
        ));
        for n in 0..b.len() {
            let _ = decode(&b[..n]);
        }
    }

    fn corpus_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
    }

    /// Valid records of every kind, as the programs write them.
    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        let mut v = Verdict::default();
        v.header.version = WIRE_VERSION;
        v.header.kind = Kind::Invalid as u8;
        v.packet = reset().packet;
        v.packet.proto = 6;
        v.skb = 0xffff_8880_0000_1000;
        let mut d = Drop::default();
        d.header.version = WIRE_VERSION;
        d.header.kind = Kind::Drop as u8;
        d.skb = v.skb;
        let mut r = Reason::default();
        r.header.version = WIRE_VERSION;
        r.header.kind = Kind::Reason as u8;
        r.packet = v.packet;
        r.has_ct = 1;
        let fmt = b"SEQ is over upper bound %u (over the window of the receiver)";
        r.fmt[..fmt.len()].copy_from_slice(fmt);
        r.args = [u64::MAX, 7];
        r.ct_tcp = [0xff; conntrack_common::CT_TCP_BYTES];
        let mut rr = reset();
        rr.header.kind = Kind::RstReceived as u8;
        let mut m = Pressure::default();
        m.header.version = WIRE_VERSION;
        m.header.kind = Kind::Midstream as u8;
        m.packet = v.packet;
        m.packet.tcp_flags = 0x18;
        m.skb = v.skb;
        m.entries = u32::MAX;
        let mut f = m;
        f.header.kind = Kind::TableFull as u8;
        f.packet.tcp_flags = 0x02;
        f.entries = 40;
        vec![
            ("rst_sent", bytes(&reset())),
            ("rst_received", bytes(&rr)),
            ("invalid", bytes(&v)),
            ("drop", bytes(&d)),
            ("reason", bytes(&r)),
            ("midstream", bytes(&m)),
            ("table_full", bytes(&f)),
        ]
    }

    /// Decodes, then runs what decodes through the correlator, which must not panic either.
    fn exercise(b: &[u8], corr: &mut crate::pipeline::attribution::Correlator) {
        let mut out = crate::pipeline::attribution::Output::default();
        if let Ok(ev) = decode(b) {
            corr.event(ev, std::time::Instant::now(), &mut out);
        }
    }

    fn correlator() -> crate::pipeline::attribution::Correlator {
        let layout = crate::kernel::btf::CtLayout {
            src_u3: 0,
            src_port: 16,
            l3num: 18,
            dst_u3: 20,
            dst_port: 36,
            seen: 0,
            tcp_state_size: 24,
            state: 50,
            td_end: 0,
            td_maxend: 4,
            td_maxwin: 8,
            td_maxack: 12,
            td_scale: 16,
            flags: 17,
        };
        crate::pipeline::attribution::Correlator::new(crate::pipeline::attribution::Context {
            boot_to_epoch_ns: 0,
            rst_reasons: Default::default(),
            drop_reasons: Default::default(),
            netfilter_drop: Some(1),
            fate_known: true,
            reason_unknown: None,
            ct_layout: Some(layout),
            verdicts: true,
            own_netns: 0,
            lookups: true,
            ifname: Box::new(|_| None),
        })
    }

    #[test]
    fn the_checked_in_corpus_decodes_to_what_each_file_says() {
        if std::env::var_os("CT_TRACE_WRITE_CORPUS").is_some() {
            write_corpus();
        }
        let mut corr = correlator();
        let samples = samples();
        let mut n = 0;
        for e in std::fs::read_dir(corpus_dir()).expect("the corpus is checked in") {
            let path = e.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            let b = std::fs::read(&path).unwrap();
            // Each file decodes to what its name says: a layout drift fails here, and the
            // corpus is written anew with CT_TRACE_WRITE_CORPUS=1.
            let sample = |base: &str| {
                let (_, s) = samples
                    .iter()
                    .find(|(k, _)| *k == base)
                    .unwrap_or_else(|| panic!("{name}: no sample `{base}`"));
                decode(s).unwrap()
            };
            let got = decode(&b);
            match name.as_str() {
                "empty" => assert_eq!(got, Err(DecodeError::Short(0)), "{name}"),
                "unknown-kind" => assert_eq!(got, Err(DecodeError::Kind(200)), "{name}"),
                n if n.ends_with("-other-version") => assert_eq!(
                    got,
                    Err(DecodeError::Version(WIRE_VERSION.wrapping_add(1))),
                    "{name}"
                ),
                n if n.ends_with("-truncated") => {
                    let want = sample(n.trim_end_matches("-truncated"));
                    assert!(
                        matches!(got, Err(DecodeError::Truncated { kind, .. }) if kind == want.kind()),
                        "{name}: {got:?}"
                    );
                }
                n => assert_eq!(got, Ok(sample(n)), "{name}"),
            }
            exercise(&b, &mut corr);
            n += 1;
        }
        assert_eq!(n, samples.len() * 3 + 2, "corpus of {n} files");
        let mut out = crate::pipeline::attribution::Output::default();
        corr.tick(std::time::Instant::now(), true, &mut out);
    }

    #[test]
    fn random_and_mutated_records_never_panic() {
        // xorshift64*: deterministic, so a failure reproduces.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut corr = correlator();
        let samples = samples();
        for i in 0..50_000 {
            let mut b = if i % 2 == 0 {
                samples[(rand() % samples.len() as u64) as usize].1.clone()
            } else {
                (0..rand() % 600).map(|_| rand() as u8).collect()
            };
            // Mutations: flip bytes (kind and version stay plausible half the time), truncate.
            for _ in 0..(rand() % 8) {
                if !b.is_empty() {
                    let at = (rand() % b.len() as u64) as usize;
                    b[at] = rand() as u8;
                }
            }
            if i % 3 == 0 && b.len() > 2 {
                b[0] = WIRE_VERSION;
                b[1] = (rand() % 7) as u8;
            }
            if rand() % 5 == 0 {
                b.truncate((rand() % (b.len() as u64 + 1)) as usize);
            }
            exercise(&b, &mut corr);
        }
        let mut out = crate::pipeline::attribution::Output::default();
        corr.tick(std::time::Instant::now(), true, &mut out);
    }

    /// Rewrites the checked-in corpus (`CT_TRACE_WRITE_CORPUS=1 cargo test -p conntrack-user
    /// corpus`), after a wire format change.
    fn write_corpus() {
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, b) in samples() {
            std::fs::write(dir.join(format!("{name}.bin")), &b).unwrap();
            std::fs::write(dir.join(format!("{name}-truncated.bin")), &b[..b.len() / 2]).unwrap();
            let mut v = b.clone();
            v[0] = WIRE_VERSION.wrapping_add(1);
            std::fs::write(dir.join(format!("{name}-other-version.bin")), &v).unwrap();
        }
        std::fs::write(dir.join("empty.bin"), []).unwrap();
        // A whole header, so that the kind is what fails (4 bytes only ever said `Short`).
        let mut unknown = vec![0u8; std::mem::size_of::<Header>()];
        unknown[..2].copy_from_slice(&[WIRE_VERSION, 200]);
        std::fs::write(dir.join("unknown-kind.bin"), unknown).unwrap();
    }

    #[test]
    fn ipv6_addresses_print_in_their_usual_form() {
        let mut p = Packet {
            family: 6,
            ..Default::default()
        };
        p.saddr[15] = 1;
        p.daddr[..2].copy_from_slice(&[0xfd, 0x00]);
        let (s, d) = addrs(&p);
        assert_eq!(
            (s.to_string(), d.to_string()),
            ("::1".into(), "fd00::".into())
        );
    }
}
