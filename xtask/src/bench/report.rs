//! The tables: formatting of numbers, a section per part (printed by `bench`), and
//! BENCHMARKS.md.

use std::{process::Command, thread};

use anyhow::Result;

use super::{hotpath::Hot, numbers::group, observer::Observer, startup::Startup, storm::Storm};
use crate::host::output;

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub(super) fn spread(v: &[f64], f: impl Fn(f64) -> String) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}-{}", f(min), f(max))
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

pub(super) struct Section {
    pub(super) title: String,
    /// One sentence: what the section measures.
    pub(super) about: String,
    pub(super) header: Vec<&'static str>,
    pub(super) rows: Vec<Vec<String>>,
    pub(super) notes: Vec<String>,
}

pub(super) fn sections(hot: &Hot, storm: &Storm, startup: &Startup) -> Vec<Section> {
    let mut out = vec![hot_section(hot), storm_section(storm)];
    out.extend(klog_section(storm));
    out.push(startup_section(startup));
    out
}

/// A hot path's header and rows: each workload with each observer, the median, its min-max,
/// the median's ratio to no observer's and the min-max of the rounds' own ratios (round r's run
/// against no observer's run of round r).
pub(super) fn hot_rows(hot: &Hot) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut rows = Vec::new();
    for r in &hot.rows {
        let none = hot
            .rows
            .iter()
            .find(|n| n.workload == r.workload && n.observer == Observer::None);
        let m = median(&r.values);
        let ratio = m / none.map_or(f64::NAN, |n| median(&n.values));
        let per_round: Vec<f64> = none
            .map(|n| r.values.iter().zip(&n.values).map(|(v, n)| v / n).collect())
            .unwrap_or_default();
        rows.push(vec![
            r.workload.name().to_string(),
            r.workload.unit().to_string(),
            r.observer.name().to_string(),
            r.workload.fmt(m),
            spread(&r.values, |v| r.workload.fmt(v)),
            format!("{ratio:.3}"),
            spread(&per_round, |v| format!("{v:.3}")),
        ]);
    }
    (
        vec![
            "workload",
            "unit",
            "observer",
            "median",
            "min-max",
            "vs none",
            "vs none, rounds min-max",
        ],
        rows,
    )
}

/// The hot path's table on the host.
fn hot_section(hot: &Hot) -> Section {
    let (header, rows) = hot_rows(hot);
    let n = hot.rows.first().map_or(0, |r| r.values.len());
    let mut notes = vec![format!(
        "{n} interleaved round(s) per workload; round r runs the observers in an order rotated by r"
    )];
    if hot.invalid_seen > 0 {
        notes.push(format!(
            "ct-trace counted {} INVALID verdicts during the hot-path runs",
            hot.invalid_seen
        ));
    }
    Section {
        title: "hot path: throughput through the node's Service DNAT".into(),
        about: "What an observer on the node costs ordinary traffic: bulk TCP (iperf3, one stream), 64-byte request/response on one connection (rr) and on a new connection each (crr), client -> Service 10.96.0.10 (DNAT on the node) -> server, with no observer, with ct-trace (`-o json` to /dev/shm, default attach mode and budget) and with `tcpdump -i any -w /dev/null` on the node; median of the rounds, min-max, the median's ratio to no observer's and the min-max of the rounds' own ratios.".into(),
        header,
        rows,
        notes,
    }
}

/// The storm's table: the flood's rate with each observer and ct-trace's reconciliation.
fn storm_section(storm: &Storm) -> Section {
    let none_rate = storm.runs.first().map_or(f64::NAN, |r| r.flood.rate);
    let mut rows = Vec::new();
    let mut notes = vec![format!(
        "{} SYN|FIN segments from the server namespace at full speed, INVALID at the node's prerouting, then blackholed; events/s written = INVALID events shown / (flood start -> the last INVALID event reached the output file); CPU s = ct-trace's utime+stime at the end (after ready: minus what start-up used)",
        group(storm.count)
    )];
    for r in &storm.runs {
        let mut row = vec![
            r.label.clone(),
            group(r.flood.rate.round() as u64),
            format!("{:.3}", r.flood.rate / none_rate),
            format!("{:.3}", r.flood.secs),
        ];
        match &r.ct {
            Some(c) => {
                row.extend([
                    group(c.kernel),
                    group(c.counted),
                    group(c.shown),
                    group(c.suppressed),
                    group(c.lost),
                    group(c.events_per_s.round() as u64),
                    format!("{:.2} / {:.2}", c.cpu_total, c.cpu_after_ready),
                    mib(c.peak_rss_kib as f64),
                    pass(c.check_kernel.ok),
                    pass(c.check_sum.ok),
                ]);
                notes.push(format!(
                    "{}: {} lines written; {}: {}; {}: {}",
                    r.label,
                    group(c.lines),
                    c.check_kernel.what,
                    pass(c.check_kernel.ok),
                    c.check_sum.what,
                    pass(c.check_sum.ok)
                ));
            }
            None => {
                row.push(group(r.kernel));
                row.extend(std::iter::repeat_n("-".to_string(), 9));
            }
        }
        rows.push(row);
    }
    if let Some(c) = storm.runs.iter().find_map(|r| r.ct.as_ref()) {
        notes.push(format!("ct-trace's INVALID verdicts: {}", c.attach));
    }
    Section {
        title: "storm: a flood of INVALID segments".into(),
        about: "What ct-trace costs and keeps up with when every packet is INVALID: the flood's rate with no observer and with ct-trace at its default event budget and without one, the kernel's count of INVALID verdicts beside ct-trace's (which must be equal, and equal to shown + suppressed + filtered + lost + unprinted), events written per second, ct-trace's CPU time and peak memory.".into(),
        header: vec![
            "observer",
            "flood/s",
            "vs none",
            "flood s",
            "kernel Δ",
            "counted",
            "shown",
            "suppressed",
            "lost",
            "events/s written",
            "CPU s (all / after ready)",
            "peak RSS MiB",
            "counted == kernel",
            "counted == sum",
        ],
        rows,
        notes,
    }
}

/// The kernel log's table, when the storm ran with it.
fn klog_section(storm: &Storm) -> Option<Section> {
    let ct_rates: Vec<(String, f64)> = storm
        .runs
        .iter()
        .filter(|r| r.ct.is_some())
        .map(|r| (r.label.clone(), r.flood.rate))
        .collect();
    let k = storm.runs.iter().find(|r| r.klog.is_some())?;
    let none_rate = storm.runs.first().map_or(f64::NAN, |r| r.flood.rate);
    let mut rows = vec![
        vec!["segments sent".to_string(), group(k.flood.sent)],
        vec!["kernel Δ (INVALID verdicts)".to_string(), group(k.kernel)],
    ];
    let mut notes = Vec::new();
    match k.klog.as_ref().unwrap() {
        Ok(l) => {
            rows.push(vec![
                "log lines (read from /dev/kmsg)".into(),
                group(l.read),
            ]);
            rows.push(vec![
                "log records overwritten before read".into(),
                group(l.overwritten),
            ]);
            rows.push(vec![
                "log lines, read + overwritten".into(),
                group(l.read + l.overwritten),
            ]);
            rows.push(vec![
                "of them in dmesg after the flood".into(),
                group(l.ring_lines),
            ]);
            notes.push("lines counted by the sequence numbers of /dev/kmsg between two marker records, read as they came (a dmesg before/after diff cannot count them: the ring buffer keeps only its last lines)".into());
            notes.extend(l.notes.iter().cloned());
        }
        Err(why) => {
            rows.push(vec!["log lines".into(), "not measured".into()]);
            notes.push(format!("log lines not measured: {why}"));
        }
    }
    rows.push(vec![
        "flood/s with the kernel log".into(),
        group(k.flood.rate.round() as u64),
    ]);
    rows.push(vec![
        "flood/s, no observer".into(),
        group(none_rate.round() as u64),
    ]);
    rows.push(vec![
        "kernel log vs no observer".into(),
        format!("{:.3}", k.flood.rate / none_rate),
    ]);
    for (label, rate) in &ct_rates {
        rows.push(vec![
            format!("flood/s, {label}"),
            group(rate.round() as u64),
        ]);
        rows.push(vec![
            format!("kernel log vs {label}"),
            format!("{:.3}", k.flood.rate / rate),
        ]);
    }
    Some(Section {
        title: "kernel log: conntrack's own logging of the same storm".into(),
        about: "The alternative built into the kernel, on the same flood without ct-trace: `net.netfilter.nf_conntrack_log_invalid=6` in the node namespace (each INVALID TCP segment logged through nf_log_syslog), how many lines reached the kernel log and the flood's rate beside no observer and ct-trace.".into(),
        header: vec!["measure", "value"],
        rows,
        notes,
    })
}

/// The start-up table: exec to ready, peak and idle memory.
fn startup_section(startup: &Startup) -> Section {
    let f0 = |v: f64| format!("{v:.0}");
    Section {
        title: "start-up".into(),
        about: "How long `ct-trace -q --ready-file F` takes from exec (`ip netns exec` in the node namespace) to the ready file (every program attached), its peak memory at that point and its resident memory after 2 s idle.".into(),
        header: vec!["measure", "median", "min-max"],
        rows: vec![
            vec![
                "exec -> ready file (ms)".into(),
                f0(median(&startup.ready_ms)),
                spread(&startup.ready_ms, f0),
            ],
            vec![
                "peak RSS at ready (VmHWM, MiB)".into(),
                mib(median(&startup.peak_kib)),
                spread(&startup.peak_kib, mib),
            ],
            vec![
                "RSS after 2 s idle (VmRSS, MiB)".into(),
                mib(median(&startup.idle_kib)),
                spread(&startup.idle_kib, mib),
            ],
        ],
        notes: vec![format!("{} run(s)", startup.ready_ms.len())],
    }
}

fn pass(ok: bool) -> String {
    if ok { "PASS" } else { "FAIL" }.into()
}

fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut t = format!(
        "| {} |\n|{}\n",
        header
            .iter()
            .map(|h| esc(h))
            .collect::<Vec<_>>()
            .join(" | "),
        " --- |".repeat(header.len())
    );
    for r in rows {
        t += &format!(
            "| {} |\n",
            r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    t
}

pub(super) fn markdown(
    sections: &[Section],
    storm: &Storm,
    load_before: &str,
    load_after: &str,
    elapsed: f64,
) -> Result<String> {
    let command = std::iter::once("cargo xtask".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    let kernel = output(Command::new("uname").arg("-r"))?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let attach = storm
        .runs
        .iter()
        .find_map(|r| r.ct.as_ref())
        .map_or("?".to_string(), |c| c.attach.clone());

    let mut md = String::from("# Benchmarks\n\n");
    md += "Written by `cargo xtask bench` (`xtask/src/bench/`), in network namespaces of its own (client -- node -- server, the integration tests' topology). Numbers from one invocation on one machine: compare them with each other, not across machines. Ratios are from interleaved runs in the same invocation.\n\n";
    md += &format!("- command: `{command}`\n");
    md += &format!("- date: {}\n", date.trim());
    md += &format!("- kernel: {}\n", kernel.trim());
    md += &format!(
        "- machine: {nproc} CPUs ({cpu}), {:.1} GiB memory\n",
        mem_kib / 1024.0 / 1024.0
    );
    md += &format!("- ct-trace's INVALID verdicts: {attach}\n");
    md += &format!(
        "- load average (1, 5, 15 min) before / after: {load_before} / {load_after}; the run took {elapsed:.0} s\n"
    );
    // What the VM part ran on, read as `vm::run_jobs` chooses it (`--accel auto`), not assumed.
    let accel = if crate::vm::kvm_usable() {
        "KVM: the guest's CPU is the host's, virtualized; its rates are still a one-vCPU guest's, so the ratios to no observer within the same guest run compare the modes"
    } else {
        "TCG, no usable KVM on this machine: the guest's CPU is emulated, so absolute rates there mean nothing; only the ratios to no observer within the same guest run, and the kernel's own nanoseconds a program run (emulated too, but the same for every mode), compare the modes"
    };
    md += &format!("- the \"VM\" sections measure the attach modes inside Debian kernels under qemu, with {accel}. Correctness of every mode is the VM matrix's (`cargo xtask test`)\n");
    for s in sections {
        md += &format!("\n## {}\n\n{}\n\n", capitalize(&s.title), s.about);
        md += &md_table(&s.header, &s.rows);
        if !s.notes.is_empty() {
            md += "\n";
            for n in &s.notes {
                md += &format!("- {n}\n");
            }
        }
    }
    Ok(md)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_groups() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn markdown_tables() {
        assert_eq!(
            md_table(&["a", "b"], &[vec!["1".into(), "x|y".into()]]),
            "| a | b |\n| --- | --- |\n| 1 | x\\|y |\n"
        );
    }
}
