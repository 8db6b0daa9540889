//! `ctt-pipeline N`: ct-trace's userspace event path alone, for `cargo xtask bench`: N INVALID
//! verdict records (as the netfilter program writes them, TCP, one flow each) through the
//! decoder, the correlator (lookups refused, as beyond the lookup limit in a storm) and the JSON
//! writer to stdout, in batches like the event loop's. Prints `pipeline N events in S s (R/s)`
//! on stderr. No kernel, no I/O but stdout: what the machine can write when nothing else is
//! competing for its CPUs.

use std::{io, time::Instant};

use conntrack_common::{Kind, Verdict, WIRE_VERSION};
use conntrack_user::{
    cli::Format,
    output::writer::Writer,
    pipeline::attribution::{Context, Correlator, Output},
    pipeline::events,
};

fn record(i: u64) -> Vec<u8> {
    let mut v = Verdict::default();
    v.header.version = WIRE_VERSION;
    v.header.kind = Kind::Invalid as u8;
    v.header.ts_ns = 1_000_000_000 + i * 1_000;
    v.packet.family = 4;
    v.packet.proto = 6;
    v.packet.tcp_flags = 0x03;
    v.packet.saddr[..4].copy_from_slice(&[10, 77, 2, 2]);
    v.packet.daddr[..4].copy_from_slice(&[10, 77, 9, 9]);
    v.packet.sport = 1024 + (i % 60_000) as u16;
    v.packet.dport = 80;
    v.packet.seq = i as u32;
    v.packet.ifindex = 3;
    v.skb = 0xffff_8880_0000_0000 + (i % 4096) * 256;
    // SAFETY: the bytes of a repr(C) record made of integers with explicit padding.
    unsafe {
        std::slice::from_raw_parts(
            (&v as *const Verdict).cast::<u8>(),
            std::mem::size_of::<Verdict>(),
        )
    }
    .to_vec()
}

fn main() {
    let n: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(n)) if n > 0 => n,
        _ => {
            eprintln!("usage: ctt-pipeline N");
            std::process::exit(2);
        }
    };
    let eth2: std::sync::Arc<str> = "eth2".into();
    let mut corr = Correlator::new(Context {
        boot_to_epoch_ns: 1_700_000_000_000_000_000,
        rst_reasons: Default::default(),
        drop_reasons: Default::default(),
        netfilter_drop: Some(1),
        fate_known: true,
        reason_unknown: Some(
            "unknown (the reason is read by kprobes on conntrack's log helpers; this kernel has no kprobes)"
                .into(),
        ),
        ct_layout: None,
        verdicts: true,
        own_netns: 4026531840,
        lookups: true,
        // As ct-trace's cache of interface names answers.
        ifname: Box::new(move |i| (i != 0).then(|| eth2.clone())),
    });
    // Records are made up front: the run measures the pipeline, not their making.
    let records: Vec<Vec<u8>> = (0..n).map(record).collect();
    let mut w = Writer::new(io::stdout().lock(), Format::Json);
    let mut out = Output::default();
    let mut written = 0u64;
    let t0 = Instant::now();
    for batch in records.chunks(2048) {
        let now = Instant::now();
        for b in batch {
            match events::decode(b) {
                Ok(ev) => corr.event(ev, now, &mut out),
                Err(e) => panic!("{e}"),
            }
        }
        for r in std::mem::take(&mut out.lookups) {
            corr.answer(r.token, None, &mut out);
        }
        corr.tick(now, false, &mut out);
        for r in out.reports.drain(..) {
            w.write(&r);
            written += 1;
        }
        w.flush().expect("stdout");
    }
    corr.tick(Instant::now(), true, &mut out);
    for r in out.reports.drain(..) {
        w.write(&r);
        written += 1;
    }
    w.flush().expect("stdout");
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "pipeline {written} events in {secs:.3} s ({:.0}/s)",
        written as f64 / secs
    );
}
