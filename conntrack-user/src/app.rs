//! `ct-trace` itself: preflight, attach, stream events, and the exit summary.

use std::{
    io::{self, Write as _},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use conntrack_common::Counter;
use log::{info, warn};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    attribution::{Context, Correlator},
    btf::KernelBtf,
    cli::{Cli, Command},
    doctor, events, kstat, load,
    netlink::Conntrack,
    preflight::{self, PreflightError},
    report::{Format, LostReport, Report, Writer},
};

/// Exit codes: 0 success, 1 runtime failure, 2 the user must change something (privileges).
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<PreflightError>().is_some()
        || matches!(
            e.downcast_ref::<load::LoadError>(),
            Some(load::LoadError::Mode { .. })
        )
    {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Doctor { output }) => doctor::run(output),
        None => trace(&cli),
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

struct Counters {
    map: PerCpuArray<MapData, u64>,
    last: [u64; conntrack_common::COUNTERS as usize],
}

impl Counters {
    fn read(&self, c: Counter) -> u64 {
        self.map
            .get(&(c as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Lost-event reports for the failure counters that moved since the last call.
    fn lost(&mut self, corr: &Correlator, out: &mut Vec<Report>) {
        for c in [
            Counter::RingFull,
            Counter::ReadFailed,
            Counter::MapUpdateFailed,
            Counter::StackLost,
        ] {
            let now = self.read(c);
            let delta = now.saturating_sub(self.last[c as usize]);
            if delta > 0 {
                self.last[c as usize] = now;
                out.push(Report::Lost(LostReport {
                    time: corr.time(boot_now()),
                    kind: "lost",
                    counter: c.name(),
                    count: delta,
                }));
            }
        }
    }
}

fn boot_now() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

#[derive(Default)]
struct Tally {
    by_kind: std::collections::BTreeMap<&'static str, u64>,
    decode_errors: u64,
    printed: u64,
}

fn trace(cli: &Cli) -> anyhow::Result<ExitCode> {
    preflight::check_caps(preflight::effective_caps())?;
    let kbtf = KernelBtf::load()?;
    let version = preflight::kernel_version();
    let own_netns =
        kstat::netns_inode("self").context("reading this process's network namespace")?;
    let features = load::KernelFeatures::probe(&kbtf, version);
    let globals = load::Globals { netns: own_netns };
    let attached = match load::attach(crate::EBPF_OBJECT, &kbtf, &features, cli.attach, &globals) {
        Ok(a) => a,
        Err(e) => {
            if let Some(log) = e.verifier_log() {
                log::debug!("verifier log:\n{log}");
            }
            return Err(e.into());
        }
    };
    let load::Attached {
        mut ebpf,
        links,
        lines,
        mode,
        fate,
        reasons,
    } = attached;
    let verdicts = mode.is_some();
    for l in &lines {
        info!("{l}");
    }
    info!(
        "INVALID verdicts: {}; reasons: {}",
        mode.map_or("not watched on this kernel", |m| m.source()),
        match &reasons {
            Ok(()) => "conntrack's log helpers (kprobes)".to_string(),
            Err(why) => format!("unknown ({why})"),
        }
    );
    let kernel_invalid_start = if verdicts {
        kstat::invalid().ok()
    } else {
        None
    };

    let ring = RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .context("the eBPF object has no EVENTS map")?,
    )
    .context("opening the EVENTS ring buffer")?;
    let counters_map = PerCpuArray::try_from(
        ebpf.take_map("COUNTERS_MAP")
            .context("the eBPF object has no COUNTERS_MAP map")?,
    )
    .context("opening COUNTERS_MAP")?;
    let mut counters = Counters {
        map: counters_map,
        last: [0; conntrack_common::COUNTERS as usize],
    };

    let drop_reasons = kbtf.enum_names("skb_drop_reason");
    let netfilter_drop = drop_reasons
        .iter()
        .find(|(_, n)| n.as_str() == "SKB_DROP_REASON_NETFILTER_DROP")
        .map(|(v, _)| *v);
    let ct_layout = kbtf
        .ct_layout()
        .map_err(|e| warn!("conntrack entries in reasons cannot be decoded: {e}"))
        .ok();
    let ctx = Context {
        boot_to_epoch_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        rst_reasons: kbtf.enum_names("sk_rst_reason"),
        drop_reasons,
        netfilter_drop,
        fate_known: fate,
        reason_unknown: reasons.err().map(|why| format!("unknown ({why})")),
        ct_layout,
        verdicts,
        own_netns,
        conntrack: Conntrack::open()
            .map_err(|e| warn!("ctnetlink unavailable, no conntrack entries in events: {e}"))
            .ok(),
        kernel_invalid: verdicts
            .then(|| Box::new(|| kstat::invalid().ok()) as Box<dyn FnMut() -> Option<u64>>),
    };
    drop(kbtf);
    let mut corr = Correlator::new(ctx);

    if let Some(path) = &cli.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the ready file {}", path.display()))?;
    }
    info!("tracing; press Ctrl-C to stop");

    let mut tally = Tally::default();
    let stdout = io::stdout().lock();
    let mut writer = Writer::new(stdout, cli.output);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let result = rt.block_on(run(
        cli,
        ring,
        &mut corr,
        &mut counters,
        &mut writer,
        &mut tally,
    ));

    // Detach first: the counts below then describe a closed interval.
    drop(links);
    let kernel_invalid_end = if verdicts {
        kstat::invalid().ok()
    } else {
        None
    };
    let broken_pipe = match result {
        Ok(()) => false,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => true,
        Err(e) => return Err(e).context("writing events"),
    };

    if cli.summary && !broken_pipe {
        print_flows(&corr, cli.output, &mut io::stdout().lock()).ok();
    }
    summary(
        &tally,
        &counters,
        &corr,
        verdicts,
        own_netns,
        kernel_invalid_start,
        kernel_invalid_end,
    );
    Ok(ExitCode::SUCCESS)
}

async fn run<W: io::Write>(
    cli: &Cli,
    ring: RingBuf<MapData>,
    corr: &mut Correlator,
    counters: &mut Counters,
    writer: &mut Writer<W>,
    tally: &mut Tally,
) -> io::Result<()> {
    // SAFETY: the ring buffer owns its fd and the AsyncFd owns the ring buffer, so the fd stays
    // open for as long as it is registered.
    let mut afd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let deadline = cli.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut out = Vec::new();
    let mut stop = false;
    while !stop {
        tokio::select! {
            _ = sigint.recv() => stop = true,
            _ = sigterm.recv() => stop = true,
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => stop = true,
            _ = tick.tick() => {
                corr.tick(Instant::now(), false, &mut out);
                counters.lost(corr, &mut out);
            }
            guard = afd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), corr, tally, &mut out);
                guard.clear_ready();
            }
        }
        if stop {
            // Everything already in the ring buffer belongs to the interval.
            drain(afd.get_mut(), corr, tally, &mut out);
            corr.tick(Instant::now(), true, &mut out);
            counters.lost(corr, &mut out);
        }
        for r in out.drain(..) {
            *tally.by_kind.entry(r.kind()).or_default() += 1;
            if cli.summary {
                continue;
            }
            writer.write(&r)?;
            tally.printed += 1;
            if cli.count.is_some_and(|n| tally.printed >= n) {
                stop = true;
                break;
            }
        }
    }
    Ok(())
}

fn drain(
    ring: &mut RingBuf<MapData>,
    corr: &mut Correlator,
    tally: &mut Tally,
    out: &mut Vec<Report>,
) {
    let now = Instant::now();
    while let Some(item) = ring.next() {
        match events::decode(&item) {
            Ok(ev) => corr.event(ev, now, out),
            Err(e) => {
                tally.decode_errors += 1;
                log::debug!("undecodable record: {e}");
            }
        }
    }
}

fn print_flows(corr: &Correlator, format: Format, w: &mut impl io::Write) -> io::Result<()> {
    let flows = corr.summary();
    if format == Format::Text {
        writeln!(
            w,
            "{:>6}  {:<24} {:<24} {:<24} {:<32} FIRST / LAST",
            "RESETS", "CLIENT", "SERVICE", "BACKEND", "REASONS"
        )?;
    }
    for ((client, service, backend), s) in flows {
        match format {
            Format::Text => writeln!(
                w,
                "{:>6}  {:<24} {:<24} {:<24} {:<32} {} / {}",
                s.resets,
                client,
                service,
                backend,
                s.reasons.join("; "),
                s.first,
                s.last
            )?,
            Format::Json => writeln!(
                w,
                "{}",
                serde_json::json!({
                    "kind": "flow", "client": client, "service": service, "backend": backend,
                    "resets": s.resets, "reasons": s.reasons, "first": s.first, "last": s.last,
                })
            )?,
        }
    }
    w.flush()
}

fn summary(
    tally: &Tally,
    counters: &Counters,
    corr: &Correlator,
    verdicts: bool,
    netns: u32,
    k_start: Option<u64>,
    k_end: Option<u64>,
) {
    let kinds: Vec<String> = [
        "invalid",
        "ignored",
        "rst_sent",
        "rst_received",
        "attribution",
    ]
    .iter()
    .map(|k| format!("{k} {}", tally.by_kind.get(k).copied().unwrap_or(0)))
    .collect();
    let ring_full = counters.read(Counter::RingFull);
    let stack_lost = counters.read(Counter::StackLost);
    let lost = ring_full + counters.read(Counter::ReadFailed) + tally.decode_errors + stack_lost;
    eprintln!(
        "ct-trace: events: {}; lost {lost} (ring buffer full {ring_full}, unreadable packets {}, undecodable records {}, kretprobe stack {stack_lost}, map update failures {})",
        kinds.join(", "),
        counters.read(Counter::ReadFailed),
        tally.decode_errors,
        counters.read(Counter::MapUpdateFailed),
    );
    let ct_dropped = counters.read(Counter::CtDropped);
    if ct_dropped > 0 {
        eprintln!(
            "ct-trace: conntrack dropped {ct_dropped} packets it could not track (table full or no memory; the kernel counts them as `drop`)"
        );
    }
    let expired = counters.read(Counter::PendingExpired);
    if expired > 0 {
        eprintln!(
            "ct-trace: {expired} resets matched an INVALID packet older than {} s and were not attributed",
            conntrack_common::PENDING_RST_MAX_AGE_NS / 1_000_000_000
        );
    }
    if verdicts {
        match (k_start, k_end) {
            (Some(a), Some(b)) => {
                let kernel = b.saturating_sub(a);
                let reported = tally.by_kind.get("invalid").copied().unwrap_or(0);
                let seen = reported + ring_full;
                let verdict = if kernel == reported {
                    "equal".to_string()
                } else {
                    format!("DIFFERENT by {}", kernel as i64 - reported as i64)
                };
                eprintln!(
                    "ct-trace: INVALID verdicts in netns {netns}: ct-trace {reported}, kernel {kernel}: {verdict}",
                );
                if corr.unconfirmed > 0 {
                    eprintln!(
                        "ct-trace: {} packets had no conntrack entry but were not counted INVALID by the kernel (conntrack not active for them); not reported",
                        corr.unconfirmed
                    );
                }
                if kernel != reported && seen == kernel {
                    eprintln!("ct-trace: the difference is the events lost to a full ring buffer");
                }
            }
            _ => eprintln!(
                "ct-trace: cannot read {}: no comparison with the kernel's INVALID counter",
                kstat::PATH
            ),
        }
    }
    if corr.reasons_unmatched > 0 {
        eprintln!(
            "ct-trace: conntrack logged {} refused packets that are not reported (not TCP, or no verdict program to tell INVALID from ignored)",
            corr.reasons_unmatched
        );
    }
    let flows = corr.summary();
    if !flows.is_empty() {
        eprintln!("ct-trace: resets caused by INVALID packets, by flow:");
        let mut buf = Vec::new();
        let _ = print_flows(corr, Format::Text, &mut buf);
        let _ = io::stderr().write_all(&buf);
    }
}
