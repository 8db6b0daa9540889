//! The posture as text (one row per fact, then the verdict and the advice) or as JSON.

use std::{
    io::{self, Write},
    time::Duration,
};

use serde::Serialize;

use super::{inspect, Table, DEFAULT_MAX_PER_BUCKET};
use crate::report::Format;

/// The names the JSON output uses, for the text output.
pub(super) fn name(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

pub(super) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

fn row(w: &mut impl Write, label: &str, value: impl std::fmt::Display) -> io::Result<()> {
    writeln!(w, "  {label:<37}{value}")
}

pub(super) fn write_table(w: &mut impl Write, t: &Table) -> io::Result<()> {
    let pct = t
        .utilisation
        .map_or("unknown".into(), |u| format!("{:.1}%", u * 100.0));
    row(
        w,
        "table pressure",
        format!(
            "{pct} of nf_conntrack_max: {} (a global limit on this namespace's entries)",
            opt(t.pressure.map(name))
        ),
    )?;
    let chains = if t.long_chains == Some(true) {
        ": long hash chains when full"
    } else {
        ""
    };
    row(
        w,
        "table max per bucket",
        format!(
            "{} (the kernel's own sizing: {DEFAULT_MAX_PER_BUCKET}){chains}",
            opt(t.max_per_bucket.map(|r| format!("{r:.2}")))
        ),
    )?;
    let gib = t
        .ram_bytes
        .map(|b| format!("{:.1}", b as f64 / f64::from(1u32 << 30)));
    row(
        w,
        "table max vs RAM",
        format!(
            "{}: {} GiB of RAM allows {}",
            opt(t.max_vs_ram.map(name)),
            opt(gib),
            opt(t.recommended_max)
        ),
    )?;
    let timeouts: Vec<String> = (t.tcp_timeouts.fields().iter())
        .map(|(k, v)| format!("{k} {}", opt(*v)))
        .collect();
    row(
        w,
        "tcp timeouts (s)",
        format!("{}; tcp_loose {}", timeouts.join(", "), opt(t.tcp_loose)),
    )?;
    let deltas = match &t.deltas {
        _ if t.window_s == 0.0 => "not sampled (--window 0)".to_string(),
        None => "unknown".to_string(),
        Some(d) => {
            let d: Vec<String> = (d.fields().iter())
                .map(|(k, v)| format!("{k} +{}", opt(*v)))
                .collect();
            format!("over {} s: {}", t.window_s, d.join(", "))
        }
    };
    row(w, "table counter deltas", deltas)?;
    row(w, "table verdict", name(t.verdict))
}

pub fn run_doctor(format: Format, window: Duration, w: &mut impl Write) -> io::Result<()> {
    let p = inspect(window);
    if format == Format::Json {
        return writeln!(w, "{}", serde_json::to_string(&p).unwrap_or_default());
    }
    writeln!(w, "netns {}", p.netns)?;
    let u8s = |v: Option<u8>| opt(v.map(u64::from));
    row(w, "nf_conntrack_tcp_be_liberal", u8s(p.tcp_be_liberal))?;
    row(
        w,
        "nf_conntrack_tcp_ignore_invalid_rst",
        u8s(p.tcp_ignore_invalid_rst),
    )?;
    row(
        w,
        "conntrack table",
        format!(
            "{} / {} entries ({} buckets)",
            opt(p.entries),
            opt(p.max),
            opt(p.buckets)
        ),
    )?;
    write_table(w, &p.table)?;
    let counters: Vec<String> = p.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
    row(w, "kernel counters", counters.join(", "))?;
    row(w, "kube-proxy", p.kube_proxy.unwrap_or("not seen"))?;
    let n = &p.service_names;
    let names = if n.kube_proxy.is_empty() {
        "none: no kube-proxy rules in this namespace (events carry no service_name)".to_string()
    } else {
        format!(
            "{} mode: {} Service ports at {} addresses, {} endpoints{}",
            n.kube_proxy.join(" and "),
            n.services,
            n.addresses,
            n.endpoints,
            if n.over_limit > 0 {
                format!(" ({} more left out: over the limit)", n.over_limit)
            } else {
                String::new()
            }
        )
    };
    row(w, "service names", names)?;
    if p.drop_rules.is_empty() {
        row(w, "INVALID drop rules", "none")?;
    }
    for r in &p.drop_rules {
        row(
            w,
            "INVALID drop rule",
            format!(
                "{} {}: {} (packets {})",
                r.source,
                r.family,
                r.rule,
                opt(r.packets)
            ),
        )?;
    }
    writeln!(w, "verdict: {}", p.verdict)?;
    for a in &p.advice {
        writeln!(w, "  {a}")?;
    }
    Ok(())
}
