//! `ct-trace` itself: preflight, attach, stream events, and the exit summary.
//!
//! The event loop only moves data: it drains the ring buffer in bounded batches into the
//! correlator (pure), hands lookups to the enrichment thread without waiting, and writes the
//! reports buffered, one flush per batch. Counts come from the kernel's per-CPU counters.

use std::{
    io::{self, Write as _},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use log::{info, warn};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    cli::Format,
    cli::{Cli, Command, Resets},
    event::Report,
    kernel::btf::KernelBtf,
    kernel::load,
    kernel::maps::{Counters, CtMax},
    kernel::preflight::{self, PreflightError},
    node::doctor,
    node::kstat,
    output::{
        metrics,
        sink::{Sink, Tally},
        summary::{print_flows, print_summary, summarize, table_tally, KernelInvalid},
        writer::Writer,
    },
    pipeline::attribution::{Context, Correlator},
    pipeline::enrich::{Enricher, IfNames},
    pipeline::notices::Notices,
};

/// Records handled per batch before the reports are written: bounds the memory a burst takes.
const BATCH: usize = 2048;
/// Batches per wake-up before the loop looks at signals and timers again.
const BATCHES_PER_WAKE: usize = 32;
/// How often the counters are read for `lost`/`suppressed` notices in the stream.
const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// `ct-trace lab` in a build without the `lab` feature (the DaemonSet's image).
#[derive(Debug, thiserror::Error)]
#[error("this build has no lab (built without the `lab` feature): `ct-trace lab` needs a default build (`cargo build --release`)")]
pub struct NoLab;

/// Exit codes: 0 success, 1 runtime failure, 2 the user must change something (privileges, a
/// build with the lab).
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<PreflightError>().is_some()
        || e.downcast_ref::<NoLab>().is_some()
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
        Some(Command::Doctor { args }) => doctor::run(args),
        Some(Command::Top { args }) => crate::output::top::run(args),
        #[cfg(feature = "lab")]
        Some(Command::Lab { action }) => crate::lab::run(action),
        #[cfg(not(feature = "lab"))]
        Some(Command::Lab { .. }) => Err(NoLab.into()),
        None => trace(&cli),
    }
}

/// Returns freed heap memory to the kernel: start-up parses the kernel's BTF (tens of MiB) and
/// frees it, and glibc would otherwise keep it resident for the whole run.
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory.
    unsafe { libc::malloc_trim(0) };
}

/// One run, its phases in order: preflight, attach, open the maps, stream, detach, summarize.
/// Kept as one function (about 150 lines) because each phase hands its state to the next, and
/// the kernel counters must be read at exact points between them.
fn trace(cli: &Cli) -> anyhow::Result<ExitCode> {
    preflight::check_caps(preflight::effective_caps())?;
    let version = preflight::kernel_version();
    preflight::check_kernel(version)?;
    preflight::raise_memlock(version)?;
    if let Some(n) = cli.netns {
        if !kstat::netns_exists(n) {
            return Err(preflight::PreflightError::NoSuchNetns(n).into());
        }
    }
    let started = Instant::now();
    // Listening before anything is attached: a taken port fails the run cleanly.
    let listener = cli
        .metrics
        .map(|a| metrics::http::bind(a).with_context(|| format!("--metrics: cannot listen on {a}")))
        .transpose()?;
    // Created, and the ready file's place checked, before anything is attached: an unusable
    // file fails the run cleanly. The ready file is removed when `ready` drops, however the
    // run ends after this.
    let pcap = cli
        .pcap
        .as_deref()
        .map(crate::output::pcap::PcapWriter::create)
        .transpose()
        .context("--pcap")?;
    let mut ready = cli
        .ready_file
        .as_deref()
        .map(crate::private::ReadyFile::check)
        .transpose()
        .context("--ready-file")?;
    preflight::log_memory("at start");
    let kbtf = load::facts(&KernelBtf::load()?);
    // The parsed BTF is gone: give its memory back before aya parses its own copy.
    trim_heap();
    preflight::log_memory("after BTF");
    let own_netns =
        kstat::netns_inode("self").context("reading this process's network namespace")?;
    let features = load::KernelFeatures::probe(&kbtf, version, cli.attach);
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting the CPUs")?
        .max(1) as u32;
    let kallsyms = preflight::kallsyms();
    let ct_hook_fns = preflight::conntrack_hook_fns(&kallsyms);
    let globals = load::Globals {
        netns: own_netns,
        budget_per_cpu: cli.event_budget.div_ceil(cpus),
        filter: cli.filter(),
        ct_hook_fns,
        nf_hook_slow: preflight::nf_hook_slow(&kallsyms).unwrap_or_default(),
    };
    drop(kallsyms);
    // The kernel's counter is read around attaching and detaching: `kernel` spans from before
    // the first program is attached to after the last is detached, `kernel_while_attached` from
    // after the last is attached to before the first is detached. ct-trace's count lies between
    // the two, and equals both when no INVALID packet arrives during attach and detach.
    // Listening for destroyed entries before attaching: the kernel sends those events only for
    // entries created while someone listens (`nf_conntrack_events=2`).
    let watcher = crate::pipeline::destroy::Watcher::start(crate::event::time::boot_now)
        .map_err(|e| warn!("conntrack destroy events unavailable, lost entries are not named: {e}"))
        .ok();
    if watcher.is_some() && version < (5, 11) {
        // ctnetlink's DESTROY events carry the entry's protocol state from 5.11 (commit
        // 86d21fc74745 "netfilter: ctnetlink: add timeout and protoinfo to destroy events").
        info!("conntrack's destroy events carry no TCP state before Linux 5.11: lost and evicted entries have tcp_state null");
    }
    let stats_before = kstat::read().ok();
    let kernel_before = kstat::invalid().ok();
    let attached = match load::attach(
        crate::EBPF_OBJECT,
        &kbtf,
        &features,
        cli.attach,
        &globals,
        &crate::node::netlink::conntrack_hooked_at,
    ) {
        Ok(a) => a,
        Err(e) => {
            if let Some(log) = e.verifier_log() {
                log::debug!("verifier log:\n{log}");
            }
            return Err(e.into());
        }
    };
    let costs = attached.program_set();
    let metric_costs = attached.program_set();
    let load::Attached {
        mut ebpf,
        links,
        own,
        lines,
        programs,
        mode,
        fate,
        reasons,
    } = attached;
    let verdicts = mode.is_some();
    preflight::log_memory("after attach");
    announce(
        cli,
        &lines,
        mode,
        &reasons,
        ct_hook_fns,
        globals.budget_per_cpu,
    );
    let kernel_attached = kstat::invalid().ok();

    let (ring, counters, mut ct_max) = open_maps(&mut ebpf)?;
    let mut notices = Notices::new();

    let enricher = Enricher::start()
        .map_err(|e| warn!("ctnetlink unavailable, no conntrack entries in events: {e}"))
        .ok();
    // Service names from kube-proxy's rules in this namespace, kept current by their own
    // thread; its first reading is in before the ready file is written.
    let services = crate::node::services::Refresher::start()
        .map_err(|e| warn!("service names unavailable, events carry no service_name: {e}"))
        .ok();
    let ctx = correlator_context(
        &kbtf,
        fate,
        globals.located_drops(&features),
        reasons,
        verdicts,
        own_netns,
        enricher.is_some(),
    );
    let rst_names = listener
        .as_ref()
        .map(|_| kbtf.enum_names("sk_rst_reason"))
        .unwrap_or_default();
    drop(kbtf);
    // aya's parsed BTF and the object's copies are gone too.
    trim_heap();
    let mut corr = Correlator::new(ctx);
    corr.set_service_names(services.as_ref().map(|s| s.lookup()));
    preflight::log_memory("when ready");

    // The signals that end the run are caught before the ready file says ct-trace is ready:
    // whoever stops it once it is (a test, `top`'s tracer) gets the summary and a clean detach.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let [int, term, hup] = {
        let _in_rt = rt.enter();
        // SIGHUP: a closed terminal (or `kill -HUP`) ends the run like Ctrl-C, with the summary.
        [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .map(tokio::signal::unix::signal)
    };
    let mut signals = [int?, term?, hup?];
    if let Some(r) = &mut ready {
        r.create(&format!("{}\n", std::process::id()))
            .context("--ready-file")?;
    }
    info!("tracing; press Ctrl-C to stop");

    let mut sink = Sink {
        cli,
        writer: Writer::new(io::stdout().lock(), cli.output),
        tally: Tally::default(),
        closed: false,
        buffered: 0,
        broken_pipe: false,
        metrics: listener.as_ref().map(|_| {
            metrics::Metrics::new(
                &metrics::BuildInfo {
                    version: env!("CARGO_PKG_VERSION"),
                    kernel: &preflight::kernel_release(),
                    mode: mode.map_or("none", |m| m.name()),
                },
                &programs,
                rst_names,
                metric_costs,
                &metrics::table::TableConfig {
                    netns: own_netns,
                    top_services: cli.metrics_top_services.into(),
                    names: services.as_ref().map(|s| s.lookup()).unwrap_or_default(),
                },
            )
        }),
        pcap,
    };
    let scrapes = listener.map(|l| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The address bound, not the one asked for: `:0` gets its port from the kernel, and
        // `:PORT` may have fallen back to IPv4.
        match l.local_addr() {
            Ok(a) => info!("metrics at http://{a}/metrics"),
            Err(e) => warn!("metrics: the address bound is unknown: {e}"),
        }
        rt.spawn(metrics::http::serve(l, tx));
        rx
    });
    let mut pipe = crate::pipeline::pipe::Pipe::new(
        &mut corr,
        enricher.as_ref(),
        watcher.as_ref(),
        &mut ct_max,
    );
    let mut ring = rt
        .block_on(run(
            cli,
            ring,
            &mut pipe,
            (&counters, &mut notices),
            &mut sink,
            scrapes,
            &mut signals,
        ))
        .context("writing events")?;

    // Detach everything first: the counts below then describe a closed interval, and every
    // record of it is in the ring buffer.
    let kernel_detaching = kstat::invalid().ok();
    drop(links);
    drop(own);
    let missed_runs = kstat::missed_runs(&ebpf);
    let costs = costs.costs();
    drop(ebpf);
    let kernel_after = kstat::invalid().ok();
    let stats_after = kstat::read().ok();
    // The last destroy events of the run (the thread reads every 100 ms).
    if let Some(w) = &watcher {
        w.wait_quiet(Duration::from_millis(500), Duration::from_secs(3));
    }
    let kernel = verdicts.then_some(KernelInvalid {
        outer: kernel_before.zip(kernel_after),
        inner: kernel_attached.zip(kernel_detaching),
    });
    // What is left is a batch of its own: the table is read again if its events need it.
    pipe.next_tick();
    pipe.drain(&mut ring, usize::MAX, Instant::now());
    pipe.settle(Instant::now(), true);
    notices.push(&counters, pipe.corr, &mut pipe.out.reports);
    let decode_errors = pipe.decode_errors;
    sink.put(pipe.ordered_all()).context("writing events")?;
    sink.tally.decode_errors = decode_errors;

    let flows = corr.summary();
    if cli.summary && !sink.broken_pipe {
        print_flows(cli, &flows);
    }
    let mut summary = summarize(
        &sink.tally,
        &counters,
        &corr,
        own_netns,
        kernel,
        missed_runs.as_ref(),
        started.elapsed(),
    );
    summary.programs = costs;
    summary.table = table_tally(
        &sink.tally,
        &counters,
        &corr,
        (stats_before.as_ref(), stats_after.as_ref()),
        watcher.as_ref().map_or(0, |w| {
            w.overflows.load(std::sync::atomic::Ordering::Relaxed)
        }),
    );
    if cli.output == Format::Json && !sink.broken_pipe {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{}", Report::Summary(Box::new(summary.clone())).json());
        let _ = out.flush();
    }
    print_summary(&summary, &corr, verdicts, &flows);
    Ok(ExitCode::SUCCESS)
}

/// The event loop; returns the ring buffer when it is time to stop.
async fn run<W: io::Write>(
    cli: &Cli,
    ring: RingBuf<MapData>,
    pipe: &mut crate::pipeline::pipe::Pipe<'_>,
    (counters, notices): (&Counters, &mut Notices),
    sink: &mut Sink<'_, W>,
    mut scrapes: Option<tokio::sync::mpsc::Receiver<metrics::http::Scrape>>,
    [sigint, sigterm, sighup]: &mut [tokio::signal::unix::Signal; 3],
) -> io::Result<RingBuf<MapData>> {
    // SAFETY: the ring buffer owns its fd and the AsyncFd owns the ring buffer, so the fd stays
    // open for as long as it is registered.
    let mut afd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    // A duration beyond what the clock can add is as good as none.
    let deadline = cli
        .duration
        .and_then(|d| tokio::time::Instant::now().checked_add(d));
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last_notice = Instant::now();
    // A named namespace that is deleted while ct-trace watches it (`ip netns del`, a pod going
    // away) ends the run: nothing will happen there any more.
    let own = kstat::netns_inode("self").unwrap_or(0);
    let named = kstat::netns_name(own);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break,
            Some(reply) = async {
                match scrapes.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // What the ring buffer holds first, so the scrape shows what the kernel counted.
                pipe.drain(afd.get_mut(), usize::MAX, Instant::now());
                sink.put(pipe.ordered())?;
                if let Some(m) = &mut sink.metrics {
                    // The table as it is now (a scrape is rare: two small /proc reads).
                    pipe.read_table();
                    m.undecodable = pipe.decode_errors;
                    m.refresh(counters, pipe.batch.entries.map(u64::from), pipe.batch.ct_max.map(u64::from));
                    m.answer(reply, Instant::now());
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                pipe.next_tick();
                // Records below the wake-up threshold come without a wake-up: collect them.
                for _ in 0..BATCHES_PER_WAKE {
                    let n = pipe.drain(afd.get_mut(), BATCH, now);
                    sink.put(pipe.ordered())?;
                    if n < BATCH {
                        break;
                    }
                }
                pipe.settle(now, false);
                if let Some(m) = &mut sink.metrics {
                    m.poll(now);
                }
                if now.duration_since(last_notice) >= NOTICE_EVERY {
                    last_notice = now;
                    notices.push(counters, pipe.corr, &mut pipe.out.reports);
                    pipe.refresh_max();
                    if let Some(path) = &named {
                        if !kstat::netns_still_named(path, own) {
                            warn!("the network namespace {} was deleted: stopping", path.display());
                            break;
                        }
                    }
                }
            }
            guard = afd.readable_mut() => {
                let mut guard = guard?;
                let mut empty = false;
                for _ in 0..BATCHES_PER_WAKE {
                    let n = pipe.drain(guard.get_inner_mut(), BATCH, Instant::now());
                    sink.put(pipe.ordered())?;
                    if n < BATCH {
                        empty = true;
                        break;
                    }
                }
                // Readiness is edge-triggered: clear it only once the ring buffer is empty,
                // so records left behind by a bounded wake-up are read at the next turn.
                if empty {
                    guard.clear_ready();
                }
            }
        }
        sink.put(pipe.ordered())?;
        if sink.closed && (sink.broken_pipe || cli.count.is_some()) {
            break;
        }
    }
    Ok(afd.into_inner())
}

/// The start-up lines on stderr: what was attached, where INVALID verdicts and reasons come
/// from, the event budget and which resets are shown.
fn announce(
    cli: &Cli,
    lines: &[String],
    mode: Option<crate::kernel::load::AttachMode>,
    reasons: &Result<(), String>,
    ct_hook_fns: [u64; 4],
    budget_per_cpu: u32,
) {
    let verdicts = mode.is_some();
    for l in lines {
        info!("{l}");
    }
    info!(
        "INVALID verdicts: {}; reasons: {}",
        mode.map_or("not watched on this kernel", |m| m.source()),
        match reasons {
            Ok(()) => "conntrack's log helpers (kprobes)".to_string(),
            Err(why) => format!("unknown ({why})"),
        }
    );
    if verdicts && ct_hook_fns == [0; 4] {
        warn!("conntrack's hook functions are not in /proc/kallsyms: packets of a family conntrack does not track here cannot be told from INVALID ones");
    }
    info!(
        "event budget: {}; resets shown: {}",
        if cli.event_budget == 0 {
            "none".to_string()
        } else {
            format!("{} events/s ({} per CPU)", cli.event_budget, budget_per_cpu)
        },
        match cli.resets {
            Resets::Caused => {
                "those caused by a packet of a tracked flow that conntrack let through without its NAT (--resets all for every one, strays included)"
            }
            Resets::All => "all",
        }
    );
}

/// What the correlator needs to know of the kernel and of this run.
#[allow(clippy::too_many_arguments)]
fn correlator_context(
    kbtf: &crate::kernel::btf::KernelFacts,
    fate: bool,
    located_drops: bool,
    reasons: Result<(), String>,
    verdicts: bool,
    own_netns: u32,
    lookups: bool,
) -> Context {
    let (drop_reasons, netfilter_drop) = if located_drops {
        // Before 5.17 the kernel gives no reason; the programs tell a netfilter drop by where
        // the packet was freed (see conntrack_common::DROP_IN_NETFILTER).
        let names = [
            (conntrack_common::DROP_IN_NETFILTER, "NETFILTER_DROP"),
            (
                conntrack_common::DROP_ELSEWHERE,
                "unknown (freed outside netfilter; kfree_skb has no reason before Linux 5.17)",
            ),
        ];
        (
            names.iter().map(|(v, n)| (*v, n.to_string())).collect(),
            Some(conntrack_common::DROP_IN_NETFILTER),
        )
    } else {
        let names = kbtf.enum_names("skb_drop_reason");
        let nf = names
            .iter()
            .find(|(_, n)| n.as_str() == "SKB_DROP_REASON_NETFILTER_DROP")
            .map(|(v, _)| *v);
        (names, nf)
    };
    let ct_layout = kbtf
        .ct_layout
        .clone()
        .map_err(|e| warn!("conntrack entries in reasons cannot be decoded: {e}"))
        .ok();
    let mut ifnames = IfNames::new();
    Context {
        boot_to_epoch_ns: crate::event::time::boot_to_epoch_ns(),
        rst_reasons: kbtf.enum_names("sk_rst_reason"),
        drop_reasons,
        netfilter_drop,
        fate_known: fate,
        reason_unknown: reasons.err().map(|why| format!("unknown ({why})")),
        ct_layout,
        verdicts,
        own_netns,
        lookups,
        ifname: Box::new(move |i| ifnames.name(i)),
    }
}

/// The maps userspace reads and writes while tracing, taken out of the loaded object.
fn open_maps(ebpf: &mut aya::Ebpf) -> anyhow::Result<(RingBuf<MapData>, Counters, CtMax)> {
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
    let counters = Counters::new(
        counters_map,
        ebpf.take_map("RST_REASONS")
            .and_then(|m| PerCpuArray::try_from(m).ok()),
    );
    let ct_max = CtMax::new(
        ebpf.take_map("CT_MAX")
            .and_then(|m| Array::try_from(m).ok()),
    );
    Ok((ring, counters, ct_max))
}
