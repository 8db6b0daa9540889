//! ct-trace's userspace event path alone (`ctt-pipeline`), without a kernel or a flood.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context as _, Result};

use super::{
    numbers::group,
    report::{median, Section},
    Bins, Config,
};

/// Events/s of ct-trace's userspace event path alone (`ctt-pipeline`), one value per run.
pub(super) struct Pipeline {
    events: u64,
    pub(super) rates: Vec<f64>,
}

/// Runs `ctt-pipeline` (decode -> correlate -> JSON to /dev/null) three times (once in smoke).
pub(super) fn pipeline(bins: &Bins, cfg: &Config) -> Result<Pipeline> {
    let events: u64 = if cfg.smoke { 100_000 } else { 1_000_000 };
    let mut rates = Vec::new();
    for _ in 0..if cfg.smoke { 1 } else { 3 } {
        let out = Command::new(&bins.pipeline)
            .arg(events.to_string())
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("running {}", bins.pipeline))?;
        ensure!(out.status.success(), "ctt-pipeline failed ({})", out.status);
        let err = String::from_utf8_lossy(&out.stderr);
        // `pipeline N events in S s (R/s)`
        let rate = err
            .rsplit('(')
            .next()
            .and_then(|r| {
                r.trim()
                    .trim_end_matches(')')
                    .trim_end_matches("/s")
                    .parse()
                    .ok()
            })
            .with_context(|| format!("unexpected ctt-pipeline output: {err}"))?;
        rates.push(rate);
    }
    Ok(Pipeline { events, rates })
}

pub(super) fn pipeline_section(p: &Pipeline) -> Section {
    let (lo, hi) = p
        .rates
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    Section {
        title: "userspace event path alone".into(),
        about: format!(
            "ct-trace's decoder, correlator and JSON writer on {} INVALID verdict records made in memory (`ctt-pipeline`), output to /dev/null: what the userspace side can write when it does not share the CPUs with a flood and the kernel's softirqs",
            group(p.events)
        ),
        header: vec!["runs", "events/s median", "min-max"],
        rows: vec![vec![
            p.rates.len().to_string(),
            group(median(&p.rates) as u64),
            format!("{}-{}", group(lo as u64), group(hi as u64)),
        ]],
        notes: vec![],
    }
}
