//! The posture as text (one row per fact, then the verdict and the advice) or as JSON.

use std::{
    io::{self, Write},
    time::Duration,
};

use serde::Serialize;

use super::{inspect, rules, sizing, Posture, Table, VsDefault};
use crate::{cli::Format, node::tools::RulesRead};

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
    let own = match t.version() {
        Some(v) => format!("this kernel's own default: {}", sizing::default_factor(v)),
        None => "the kernel's own default: 1 since Linux 5.15, 4 before".into(),
    };
    row(
        w,
        "table max per bucket",
        format!(
            "{} ({own}){chains}",
            opt(t.max_per_bucket.map(|r| format!("{r:.2}")))
        ),
    )?;
    row(w, "table max vs RAM", vs_ram(t))?;
    let writeups = t
        .writeups
        .as_ref()
        .map(|s| format!("{} ({})", s.max, s.formula));
    row(w, "table max by the write-ups", opt(writeups))?;
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

/// `nf_conntrack_max` against this kernel's own default for the node's RAM, with the formula.
fn vs_ram(t: &Table) -> String {
    let gib = t
        .ram_bytes
        .map(|b| format!("{:.1}", b as f64 / f64::from(1u32 << 30)));
    let (Some(d), Some(vs)) = (&t.kernel_default, t.max_vs_kernel_default) else {
        return format!(
            "unknown: max {}, {} GiB of RAM, kernel {}",
            opt(t.max),
            opt(gib),
            opt(t.kernel.as_ref())
        );
    };
    let vs = match vs {
        VsDefault::Below => "below",
        VsDefault::At => "at",
        VsDefault::Above => "above",
    };
    format!(
        "{} is {vs} this kernel's own default for {} GiB of RAM on {}: max {}, buckets {} ({})",
        opt(t.max),
        opt(gib),
        opt(t.kernel.as_ref()),
        d.max,
        opt(d.buckets),
        d.formula
    )
}

/// The rulesets row: which were read, and why the others were not.
fn rulesets_row(p: &Posture) -> String {
    let read: Vec<&str> = (p.rulesets.iter())
        .filter(|r| r.read)
        .map(|r| r.command.as_str())
        .collect();
    let cap = if p.cap_net_admin {
        ""
    } else {
        "no CAP_NET_ADMIN; "
    };
    let unread = rules::unread(&p.rulesets).join("; ");
    match p.rules_read {
        RulesRead::All => format!("all: {}", read.join(", ")),
        RulesRead::Partial => format!("{}; not read: {cap}{unread}", read.join(", ")),
        RulesRead::Nothing => format!("none: {cap}{unread}"),
    }
}

/// Why `unread` (`` `command`: why `` each) were not read, short: the missing capability and
/// the commands when that is the cause (the rulesets row has each error), else the errors.
fn briefly(p: &Posture, unread: &[String]) -> String {
    if p.cap_net_admin {
        return unread.join("; ");
    }
    let cmds: Vec<&str> = (unread.iter())
        .map(|u| u.split_once(": ").map_or(u.as_str(), |(c, _)| c))
        .collect();
    format!("no CAP_NET_ADMIN: {} failed", cmds.join(", "))
}

/// The service-names row: what kube-proxy's rules name here, or that they could not be read.
fn names_row(p: &Posture) -> String {
    let n = &p.service_names;
    let unread = || briefly(p, &n.unread);
    let modes = match &n.kube_proxy {
        None => {
            return format!(
                "unknown: kube-proxy's rules could not be read ({})",
                unread()
            )
        }
        Some(m) if m.is_empty() => {
            return "none: no kube-proxy rules in this namespace (events carry no service_name)"
                .into()
        }
        Some(m) => m.join(" and "),
    };
    let mut s = format!(
        "{modes} mode: {} Service ports at {} addresses, {} endpoints",
        n.services, n.addresses, n.endpoints
    );
    if n.over_limit > 0 {
        s.push_str(&format!(
            " ({} more left out: over the limit)",
            n.over_limit
        ));
    }
    if !n.unread.is_empty() {
        s.push_str(&format!("; not read: {}", unread()));
    }
    s
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
    if let Some(who) = &p.who {
        for (what, rows) in [
            ("fills it: services", &who.by_service),
            ("fills it: backends", &who.by_backend),
            ("fills it: clients", &who.by_client),
            ("fills it: states", &who.by_state),
        ] {
            let groups: Vec<String> = rows
                .iter()
                .map(|g| match &g.name {
                    Some(n) => format!("{} ({n}) {}", g.key, g.entries),
                    None => format!("{} {}", g.key, g.entries),
                })
                .collect();
            row(w, what, groups.join(", "))?;
        }
    }
    let counters: Vec<String> = p.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let from = match p.counters_source {
        Some(s) => format!(" (from {})", s.describe()),
        None => " (unreadable: no /proc/net/stat/nf_conntrack, no ctnetlink statistics)".into(),
    };
    row(
        w,
        "kernel counters",
        format!("{}{from}", counters.join(", ")),
    )?;
    row(w, "rulesets read", rulesets_row(&p))?;
    let kube_proxy = match p.kube_proxy {
        Some("unknown") => "unknown: not seen in the rulesets read, and not all could be read",
        Some(mode) => mode,
        None => "not seen",
    };
    row(w, "kube-proxy", kube_proxy)?;
    row(w, "service names", names_row(&p))?;
    match p.drop_rules.as_deref() {
        None => row(
            w,
            "INVALID drop rules",
            format!(
                "unknown: could not read the rulesets ({})",
                briefly(&p, &rules::unread(&p.rulesets))
            ),
        )?,
        Some([]) => row(w, "INVALID drop rules", "none")?,
        Some(_) if p.rules_read != RulesRead::All => row(
            w,
            "INVALID drop rules",
            format!(
                "those below, in the rulesets read; others unknown ({})",
                briefly(&p, &rules::unread(&p.rulesets))
            ),
        )?,
        Some(_) => {}
    }
    for r in p.drop_rules.iter().flatten() {
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
