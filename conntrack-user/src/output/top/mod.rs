//! `ct-trace top`: who fills the conntrack table, a snapshot every interval (`node::top` reads
//! it): on a terminal the full-screen view (`view`); otherwise (piped, `--once`, `-c`)
//! text, one screen per snapshot, or `-o json`, one object per line.

mod stop;
mod view;

use std::{
    io::{self, IsTerminal as _, Write},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::ValueEnum as _;

use self::stop::{catch_signals, stopped};
use crate::{
    cli::{AttachMode, Format, TopArgs},
    node::{
        caused::{self, Tracer},
        doctor::{mem_total, writeups_max},
        services::{Rulesets, MAX_ENTRIES},
        top::{Group, Sampler, Snapshot},
    },
    output::text::rfc3339,
};

pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    catch_signals();
    // Service names from kube-proxy's rules, read once: a top of a table that changes every
    // second does not need them fresher than its start.
    let names = Rulesets::read().parse(MAX_ENTRIES);
    let count = if args.once { Some(1) } else { args.count };
    // On a terminal, until interrupted: the full-screen view, which shows as many rows as the
    // screen has (its own sorts need more than `--limit`'s default).
    let view = args.output == Format::Text && count.is_none() && io::stdout().is_terminal();
    let limit = if view {
        args.limit.max(500)
    } else {
        args.limit
    };
    let budget = args.cpu_budget as f64 / 100.0;
    // The tracer first, attached before the table's baseline is read: the first snapshot's
    // resets and its table cover the same interval. It lives as long as this function (its
    // drop stops the child), on the thread that started it (the child's PR_SET_PDEATHSIG).
    let mut tracer = None;
    if !args.no_resets {
        let mode = args
            .attach
            .to_possible_value()
            .expect("no skipped variants");
        let mut t = Tracer::start(mode.get_name());
        // With `auto` a tracer that cannot attach is a line in the view (the table is still
        // worth showing); a mode the user named and this kernel lacks is bad input, refused
        // as `ct-trace --attach` refuses it: its one line and its exit code.
        if t.wait_ready(caused::ATTACH_WAIT, stopped) == caused::State::Failed
            && args.attach != AttachMode::Auto
        {
            if let Some((why, code)) = t.failure() {
                eprintln!("{why}");
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)));
            }
        }
        tracer = Some(t);
    }
    let mut resets = tracer.as_ref().map(Tracer::reader);
    let mut sampler = Sampler::start(names, limit as usize, args.cap as usize, budget)
        .context("reading the conntrack table through ctnetlink (needs CAP_NET_ADMIN)")?;
    sampler.ram_max = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))
        .map(|ram| writeups_max(ram, usize::BITS).max);
    if view {
        view::run(sampler, resets, args.interval).context("the terminal view")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut shown = 0u64;
    let mut out = io::stdout().lock();
    loop {
        if !sampler
            .pass(args.interval, stopped)
            .context("following the conntrack table's events")?
        {
            break;
        }
        let mut s = sampler
            .sample()
            .context("reading the conntrack table through ctnetlink")?;
        s.resets = resets.as_mut().map(|r| r.snapshot(limit as usize));
        let r = match args.output {
            Format::Json => writeln!(out, "{}", json(&s)),
            Format::Text => text(&mut out, &s),
        }
        .and_then(|_| out.flush());
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            r => r.context("writing the snapshot")?,
        }
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A snapshot as one JSON line, `kind` and `time` first like every report ct-trace prints.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    kind: &'static str,
    time: String,
    #[serde(flatten)]
    snapshot: &'a Snapshot,
}

fn json(s: &Snapshot) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    serde_json::to_string(&JsonLine {
        kind: "top",
        time: rfc3339(now),
        snapshot: s,
    })
    .expect("a snapshot serializes")
}

fn rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{r:.1}/s"))
}

fn text(w: &mut impl Write, s: &Snapshot) -> io::Result<()> {
    let fill = s.fill.map_or("?".into(), |f| format!("{:.1}%", f * 100.0));
    let max = s.max.map_or("?".into(), |m| m.to_string());
    writeln!(
        w,
        "conntrack table of netns {}: {} / {max} entries ({fill}; high at {:.0}%{}), over {:.1} s",
        s.netns,
        s.entries,
        s.alert_fill * 100.0,
        s.ram_max.map_or(String::new(), |m| format!(
            "; the write-ups' size for this RAM: {m}"
        )),
        s.interval_s
    )?;
    writeln!(
        w,
        "new {}  invalid {}  drop {}  early_drop {}  insert_failed {}  (dump: {:.0} ms of CPU; resyncs {}{}){}",
        rate(Some(s.per_s.new)),
        rate(s.per_s.invalid),
        rate(s.per_s.drop),
        rate(s.per_s.early_drop),
        rate(s.per_s.insert_failed),
        s.dump_cpu_ms,
        s.resyncs,
        if s.unwatched > 0 {
            format!("; {} entries from before top, checked by dumps", s.unwatched)
        } else {
            String::new()
        },
        s.counters_source
            .map_or(" (kernel counters unreadable)".into(), |c| format!(
                " (counters: {})",
                serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ))
    )?;
    if let Some(r) = &s.resets {
        resets_line(w, r)?;
    }
    for (title, rows) in [
        ("SERVICE", &s.by_service),
        ("BACKEND", &s.by_backend),
        ("CLIENT", &s.by_client),
        ("STATE", &s.by_state),
    ] {
        writeln!(w)?;
        table(w, title, rows)?;
    }
    if let Some(r) = s.resets.as_ref().filter(|r| r.caused > 0) {
        for (title, rows) in [
            ("SERVICE (resets caused)", &r.by_service),
            ("BACKEND (resets caused)", &r.by_backend),
            ("CLIENT (resets caused)", &r.by_client),
        ] {
            writeln!(w)?;
            reset_table(w, title, rows)?;
        }
    }
    writeln!(w)
}

/// The resets line: what the tracer counted, or why it counts nothing.
fn resets_line(w: &mut impl Write, r: &caused::Resets) -> io::Result<()> {
    match r.state {
        caused::State::Starting => writeln!(w, "resets caused: (the tracer is still attaching)"),
        caused::State::Failed if r.caused == 0 => writeln!(
            w,
            "resets caused: unknown (the tracer failed: {})",
            r.error.as_deref().unwrap_or("?")
        ),
        state => writeln!(
            w,
            "resets caused: {} since start ({:.1}/s; invalid packet {}, entry lost {}){}{}",
            r.caused,
            r.per_s,
            r.invalid_packet,
            r.entry_lost,
            if r.unseen > 0 {
                format!("; {} events lost, some resets may be missing", r.unseen)
            } else {
                String::new()
            },
            if state == caused::State::Failed {
                format!(" (the tracer ended: {})", r.error.as_deref().unwrap_or("?"))
            } else {
                String::new()
            }
        ),
    }
}

fn reset_table(w: &mut impl Write, title: &str, rows: &[caused::Group]) -> io::Result<()> {
    let width = rows
        .iter()
        .map(|r| r.key.len())
        .chain([title.len()])
        .max()
        .unwrap_or(0);
    writeln!(w, "{title:<width$}  {:>8}  NAME", "RESETS")?;
    for r in rows {
        writeln!(
            w,
            "{:<width$}  {:>8}  {}",
            r.key,
            r.resets,
            r.name.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

fn table(w: &mut impl Write, title: &str, rows: &[Group]) -> io::Result<()> {
    let width = rows
        .iter()
        .map(|r| r.key.len())
        .chain([title.len()])
        .max()
        .unwrap_or(0);
    writeln!(w, "{title:<width$}  {:>8}  {:>6}  NAME", "ENTRIES", "NEW")?;
    for r in rows {
        writeln!(
            w,
            "{:<width$}  {:>8}  {:>6}  {}",
            r.key,
            r.entries,
            r.new,
            r.name.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}
