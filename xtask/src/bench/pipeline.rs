//! ct-trace's userspace event path alone (`ctt-pipeline`), without a kernel or a flood.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context as _, Result};

use super::{
    numbers::group,
    report::{median, Section},
    Bins, Config,
};

/// Names another build's `ctt-pipeline` (e.g. one of an older commit's, built in a worktree)
/// to measure against this one in the same run.
pub(super) const BASELINE_ENV: &str = "CTT_PIPELINE_BASELINE";

/// Events/s of ct-trace's userspace event path alone (`ctt-pipeline`), one value per run.
pub(super) struct Pipeline {
    events: u64,
    pub(super) rates: Vec<f64>,
    /// Another build's binary and its rates, run alternately with this one's.
    baseline: Option<(String, Vec<f64>)>,
}

/// Runs `ctt-pipeline` (decode -> correlate -> JSON to /dev/null) three times (once in smoke);
/// with `$CTT_PIPELINE_BASELINE`, that binary too, alternately (baseline, this build, ...), so
/// both see the same load and the ratio holds when the machine is shared.
pub(super) fn pipeline(bins: &Bins, cfg: &Config) -> Result<Pipeline> {
    let events: u64 = if cfg.smoke { 100_000 } else { 1_000_000 };
    let baseline = std::env::var(BASELINE_ENV).ok().filter(|b| !b.is_empty());
    let mut rates = Vec::new();
    let mut base_rates = Vec::new();
    for _ in 0..if cfg.smoke { 1 } else { 3 } {
        if let Some(b) = &baseline {
            base_rates.push(run(b, events)?);
        }
        rates.push(run(&bins.pipeline, events)?);
    }
    Ok(Pipeline {
        events,
        rates,
        baseline: baseline.map(|b| (b, base_rates)),
    })
}

/// One run of a `ctt-pipeline` binary: its events/s.
fn run(bin: &str, events: u64) -> Result<f64> {
    let out = Command::new(bin)
        .arg(events.to_string())
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("running {bin}"))?;
    ensure!(out.status.success(), "{bin} failed ({})", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    // `pipeline N events in S s (R/s)`
    err.rsplit('(')
        .next()
        .and_then(|r| {
            r.trim()
                .trim_end_matches(')')
                .trim_end_matches("/s")
                .parse()
                .ok()
        })
        .with_context(|| format!("unexpected output of {bin}: {err}"))
}

fn row(build: &str, rates: &[f64], ratio: String) -> Vec<String> {
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    vec![
        build.into(),
        rates.len().to_string(),
        group(median(rates) as u64),
        format!("{}-{}", group(lo as u64), group(hi as u64)),
        ratio,
    ]
}

pub(super) fn pipeline_section(p: &Pipeline) -> Section {
    let mut rows = vec![row("this build", &p.rates, "-".into())];
    let mut notes = vec![];
    if let Some((bin, base)) = &p.baseline {
        // The runs alternate: each of this build's runs is compared with the baseline run just
        // before it, and the median of those ratios is the one that counts.
        let ratios: Vec<f64> = p.rates.iter().zip(base).map(|(r, b)| r / b).collect();
        rows[0][4] = format!("{:.2}", median(&ratios));
        rows.push(row("baseline", base, "1.00".into()));
        notes.push(format!(
            "baseline: `{bin}` (`{BASELINE_ENV}`), run alternately with this build; `x baseline` is the median of the ratios of each run to the baseline run before it"
        ));
    }
    Section {
        title: "userspace event path alone".into(),
        about: format!(
            "ct-trace's decoder, correlator and JSON writer on {} INVALID verdict records made in memory (`ctt-pipeline`), output to /dev/null: what the userspace side can write when it does not share the CPUs with a flood and the kernel's softirqs",
            group(p.events)
        ),
        header: vec!["build", "runs", "events/s median", "min-max", "x baseline"],
        rows,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_is_shown_beside_this_build_with_the_median_ratio_of_its_rounds() {
        // A stand-in binary that prints the line ctt-pipeline prints.
        let dir = std::env::temp_dir().join(format!("ctt-pipeline-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("fake");
        std::fs::write(
            &bin,
            "#!/bin/sh\necho \"pipeline $1 events in 0.5 s (250000/s)\" >&2\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(run(bin.to_str().unwrap(), 7).unwrap(), 250000.0);
        std::fs::remove_dir_all(&dir).unwrap();

        let p = Pipeline {
            events: 1_000_000,
            rates: vec![900_000.0, 600_000.0, 1_000_000.0],
            baseline: Some(("base".into(), vec![300_000.0, 300_000.0, 250_000.0])),
        };
        let s = pipeline_section(&p);
        assert_eq!(
            s.rows[0],
            ["this build", "3", "900,000", "600,000-1,000,000", "3.00"]
        );
        assert_eq!(
            s.rows[1],
            ["baseline", "3", "300,000", "250,000-300,000", "1.00"]
        );
        assert!(s.notes[0].contains("`base`"), "{:?}", s.notes);
    }
}
