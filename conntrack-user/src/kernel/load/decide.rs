//! Which rows of the plan the running kernel gets, for an `--attach` mode: pure, no I/O.

use conntrack_common::plan::{Attach, Mode, Need, Probe, Role, MODES};

use super::{features::KernelFeatures, mode::AttachMode, LoadError};

/// What to do with one row on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Attach,
    /// Why not (and, where the row has one, what ct-trace does instead), as users read it.
    Skip(String),
}

/// The rows of a plan decided for a kernel and an `--attach` mode.
#[derive(Debug)]
pub struct Decided {
    /// The verdict's mode; `None` when the kernel runs none.
    pub mode: Option<Mode>,
    /// Every row, in plan order.
    pub rows: Vec<(&'static Probe, Decision)>,
}

impl Decided {
    /// Whether the kprobes on the reset functions report resets without a socket.
    pub fn old_resets(&self) -> bool {
        self.rows
            .iter()
            .any(|(p, d)| matches!(p.role, Role::OldResets(_)) && *d == Decision::Attach)
    }
}

/// The `--attach` value of a mode.
pub fn attach_mode(m: Mode) -> AttachMode {
    match m {
        Mode::Netfilter => AttachMode::Netfilter,
        Mode::Fexit => AttachMode::Fexit,
        Mode::Kprobe => AttachMode::Kprobe,
    }
}

/// The verdict's mode for `--attach wanted`: `auto` takes the first mode of the plan the kernel
/// runs; a mode it cannot run is an error.
pub fn choose_mode(feat: &KernelFeatures, wanted: AttachMode) -> Result<Option<Mode>, LoadError> {
    let caps = feat.capabilities();
    let m = match wanted {
        AttachMode::Auto => return Ok(Mode::auto(&caps)),
        AttachMode::Netfilter => Mode::Netfilter,
        AttachMode::Fexit => Mode::Fexit,
        AttachMode::Kprobe => Mode::Kprobe,
    };
    if m.runs_on(&caps) {
        return Ok(Some(m));
    }
    let lacks = why_not(feat, m);
    // Suggest what `auto` takes here, or else the mode that reaches the most kernels.
    let instead = Mode::auto(&caps).unwrap_or(m.other());
    Err(LoadError::Mode {
        mode: m.name(),
        why: format!("{lacks}; use --attach {}", instead.name()),
    })
}

/// Why the kernel does not run mode `m` (which it does not).
fn why_not(feat: &KernelFeatures, m: Mode) -> String {
    let caps = feat.capabilities();
    let (v, min) = (caps.version, m.min_kernel());
    match m.missing(&caps) {
        _ if v < min => format!(
            "this kernel ({}.{}) has no {} (Linux {}.{}+)",
            v.0,
            v.1,
            m.what(),
            min.0,
            min.1
        ),
        Some(Need::Kprobes) => "this kernel has no kprobes (CONFIG_KPROBES)".to_string(),
        Some(Need::Trampolines) => format!(
            "no BPF trampolines: {}",
            feat.trampolines.as_ref().err().map_or("", |e| e.as_str())
        ),
        _ => format!("this kernel has no {}", m.what()),
    }
}

/// Decides every row of `plan` for a kernel offering `feat` and `--attach wanted`, without I/O.
/// Errors: the kernel lacks the wanted mode, or a required row of the chosen mode cannot attach
/// ([`LoadError::Mode`]).
pub fn decide(
    plan: &'static [Probe],
    feat: &KernelFeatures,
    wanted: AttachMode,
) -> Result<Decided, LoadError> {
    let mode = choose_mode(feat, wanted)?;
    let mut rows: Vec<(&'static Probe, Decision)> = Vec::with_capacity(plan.len());
    for row in plan {
        let d = decide_row(plan, row, &rows, feat, (mode, wanted))?;
        rows.push((row, d));
    }
    // Rows that read one function in the prototypes of different kernels: the one that fits
    // attaches, and the others say so rather than that what it gives is lost.
    let attached: Vec<&'static Probe> = rows
        .iter()
        .filter(|(_, d)| *d == Decision::Attach)
        .map(|(p, _)| *p)
        .collect();
    for (row, d) in rows.iter_mut() {
        if *d == Decision::Attach {
            continue;
        }
        let alternate = attached
            .iter()
            .find(|p| p.attach == row.attach && p.role == row.role);
        if let (Some(alt), Some(func)) = (alternate, row.attach.function()) {
            *d = Decision::Skip(format!(
                "{} reads {func} in this kernel's prototype instead",
                alt.program
            ));
        }
    }
    Ok(Decided { mode, rows })
}

fn decide_row(
    plan: &[Probe],
    row: &Probe,
    earlier: &[(&Probe, Decision)],
    feat: &KernelFeatures,
    (mode, wanted): (Option<Mode>, AttachMode),
) -> Result<Decision, LoadError> {
    if let Some(why) = role_gate(plan, row, feat, mode, wanted) {
        return Ok(Decision::Skip(why));
    }
    let with_fallback = |why: String| Decision::Skip(format!("{why}; {}", row.fallback));
    let (v, min) = (feat.version, row.min_kernel);
    if v < min {
        return Ok(with_fallback(format!(
            "needs Linux {}.{}, this is {}.{}",
            min.0, min.1, v.0, v.1
        )));
    }
    let attached: Vec<Attach> = earlier
        .iter()
        .filter(|(_, d)| *d == Decision::Attach)
        .map(|(p, _)| p.attach)
        .collect();
    let Some(why) = row
        .needs
        .iter()
        .find_map(|&n| feat.lacks(n, row, &attached))
    else {
        return Ok(Decision::Attach);
    };
    if !row.role.required() {
        return Ok(with_fallback(why));
    }
    Err(LoadError::Mode {
        mode: match row.role {
            Role::Verdict(m) => m.name(),
            // Old resets are kprobes (and their role gate has checked their needs).
            _ => Mode::Kprobe.name(),
        },
        why: format!("cannot attach {}: {why}", row.program),
    })
}

/// Why the row's role keeps it out in this run, before its own needs are looked at.
fn role_gate(
    plan: &[Probe],
    row: &Probe,
    feat: &KernelFeatures,
    mode: Option<Mode>,
    wanted: AttachMode,
) -> Option<String> {
    let rank = |m: Option<Mode>| m.and_then(|m| MODES.iter().position(|&x| x == m));
    match row.role {
        Role::Verdict(m) if mode != Some(m) => {
            let from = format!(
                "the INVALID verdict comes from {} in this run",
                mode.map_or("nowhere", |m| attach_mode(m).source())
            );
            // A mode `auto` would have taken: say why it did not.
            let passed_over =
                wanted == AttachMode::Auto && rank(Some(m)) < rank(mode).or(Some(MODES.len()));
            Some(if passed_over {
                format!("{}; {from}", why_not(feat, m))
            } else {
                from
            })
        }
        Role::OldResets(form) if feat.has_form(form) => Some(format!(
            "not needed, {} {} on this kernel",
            form.tracepoint, form.does
        )),
        Role::OldResets(_) => {
            together(plan, row.role, feat).map(|why| format!("{why}; {}", row.fallback))
        }
        _ => None,
    }
}

/// Why the rows of `role` cannot all attach (they attach together or not at all).
fn together(plan: &[Probe], role: Role, feat: &KernelFeatures) -> Option<String> {
    let group = || plan.iter().filter(move |p| p.role == role);
    let (row, need) = group()
        .flat_map(|p| p.needs.iter().map(move |&n| (p, n)))
        .find(|&(p, n)| n != Need::ReturnProbe && feat.lacks(n, p, &[]).is_some())?;
    Some(match need {
        Need::Prototype => format!(
            "{} have another prototype here",
            group()
                .filter_map(|p| p.attach.function())
                .collect::<Vec<_>>()
                .join("/")
        ),
        _ => feat.lacks(need, row, &[]).unwrap_or_default(),
    })
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
