//! Attaching the rows [`decide`] keeps: one function per attach kind, each adding the line
//! preflight prints.

use std::os::fd::OwnedFd;

use aya::{
    programs::{BtfTracePoint, KProbe},
    Ebpf,
};
use conntrack_common::plan::{Attach, Gives, Probe, Role, PLAN};

use super::{
    decide::{attach_mode, decide, Decision},
    features::KernelFeatures,
    globals::{load_object, Globals},
    mode::AttachMode,
    LoadError,
};
use crate::{
    kernel::btf::KernelFacts,
    kernel::netfilter::{Family, HookNum, NetfilterProgram},
    kernel::progstats::ProgramSet,
    kernel::trampoline,
    kernel::verifier::program_error,
};

/// Whether conntrack's hook runs at (family, hook) in this network namespace; `None` when the
/// hooks cannot be listed. The caller's node layer reads it (nfnetlink_hook): the kernel layer
/// only asks.
pub type ConntrackHooked<'a> = &'a dyn Fn(Family, HookNum) -> Option<bool>;

/// What got attached, kept alive for as long as ct-trace runs (dropping it detaches).
pub struct Attached {
    pub ebpf: Ebpf,
    /// Netfilter and fexit links; closing them detaches.
    pub links: Vec<OwnedFd>,
    /// Programs loaded by ct-trace's own loader (netfilter, fexit), by name.
    pub own: Vec<(&'static str, OwnedFd)>,
    /// Lines for the user: "attached ..." / "skipped ...".
    pub lines: Vec<String>,
    /// (program, attach point) of every attachment made.
    pub programs: Vec<(&'static str, String)>,
    /// Where INVALID verdicts come from; `None` when no verdict program is attached.
    pub mode: Option<AttachMode>,
    pub fate: bool,
    /// Whether the reason kprobes are attached; otherwise why not.
    pub reasons: Result<(), String>,
}

/// Loads the object, then attaches every row of [`PLAN`] [`decide`] keeps.
pub fn attach(
    object: &[u8],
    kbtf: &KernelFacts,
    feat: &KernelFeatures,
    wanted: AttachMode,
    globals: &Globals,
    hooked: ConntrackHooked<'_>,
) -> Result<Attached, LoadError> {
    let decided = decide(PLAN, feat, wanted)?;
    let (ebpf, btf) = load_object(object, kbtf, feat, &decided, globals)?;
    let mut out = Attached {
        ebpf,
        links: vec![],
        own: vec![],
        lines: vec![],
        programs: vec![],
        mode: None,
        fate: false,
        reasons: Err(if feat.kprobes {
            "the conntrack log helpers could not be probed".into()
        } else {
            "the reason is read by kprobes on conntrack's log helpers; this kernel has no kprobes"
                .into()
        }),
    };
    let mut any = false;
    for (row, decision) in &decided.rows {
        if let Decision::Skip(why) = decision {
            out.lines.push(format!("skipped {}: {why}", row.program));
            continue;
        }
        let attached = match row.attach {
            Attach::TpBtf(tp) => attach_tp_btf(&mut out, row.program, tp, &btf).map(|()| true),
            Attach::Kprobe(f) => attach_kprobe(&mut out, row.program, "kprobe", f).map(|()| true),
            Attach::Kretprobe(f) => {
                attach_kprobe(&mut out, row.program, "kretprobe", f).map(|()| true)
            }
            Attach::Netfilter => attach_netfilter(&mut out, object, row.program, hooked),
            Attach::Fexit(f) => attach_fexit(&mut out, object, row.program, f, kbtf).map(|()| true),
        }?;
        if attached {
            any = true;
            out.learn(row);
        }
    }
    if !any {
        return Err(LoadError::NothingAttached);
    }
    Ok(out)
}

impl Attached {
    /// The attached programs, for reading what they cost (see [`ProgramSet`]).
    pub fn program_set(&self) -> ProgramSet {
        use std::os::fd::AsFd as _;
        let mut fds: Vec<(&'static str, std::os::fd::BorrowedFd<'_>)> = Vec::new();
        for (name, _) in &self.programs {
            if fds.iter().any(|(n, _)| n == name) {
                continue;
            }
            if let Some((_, fd)) = self.own.iter().find(|(n, _)| n == name) {
                fds.push((name, fd.as_fd()));
            } else if let Some(Ok(fd)) = self.ebpf.program(name).map(|p| p.fd()) {
                fds.push((name, fd.as_fd()));
            }
        }
        ProgramSet::new(&fds, &self.programs)
    }

    /// Records what the run has now that `row` is attached.
    fn learn(&mut self, row: &Probe) {
        match (row.gives, row.role) {
            (Gives::Verdicts, Role::Verdict(m)) => self.mode = Some(attach_mode(m)),
            (Gives::Reasons, _) => self.reasons = Ok(()),
            (Gives::Fate, _) => self.fate = true,
            _ => {}
        }
    }
}

fn attach_tp_btf(
    out: &mut Attached,
    program: &'static str,
    tp: &'static str,
    btf: &aya::Btf,
) -> Result<(), LoadError> {
    let prog: &mut BtfTracePoint = out
        .ebpf
        .program_mut(program)
        .ok_or(LoadError::NoProgram(program))?
        .try_into()
        .map_err(|e| program_error(program, e))?;
    prog.load(tp, btf).map_err(|e| program_error(program, e))?;
    prog.attach().map_err(|e| program_error(program, e))?;
    out.lines.push(format!("attached {program} at tp_btf/{tp}"));
    out.programs.push((program, format!("tp_btf/{tp}")));
    Ok(())
}

/// A kprobe or kretprobe (the object's section says which; `kind` names it in the line).
fn attach_kprobe(
    out: &mut Attached,
    program: &'static str,
    kind: &str,
    func: &'static str,
) -> Result<(), LoadError> {
    let prog: &mut KProbe = out
        .ebpf
        .program_mut(program)
        .ok_or(LoadError::NoProgram(program))?
        .try_into()
        .map_err(|e| program_error(program, e))?;
    prog.load().map_err(|e| program_error(program, e))?;
    prog.attach(func, 0).map_err(|source| LoadError::Kprobe {
        program,
        target: func,
        source,
    })?;
    out.lines
        .push(format!("attached {program} at {kind}/{func}"));
    out.programs.push((program, format!("{kind}/{func}")));
    Ok(())
}

/// Links the netfilter program at every family and hook where conntrack runs in this network
/// namespace; returns whether any link was made.
fn attach_netfilter(
    out: &mut Attached,
    object: &[u8],
    program: &'static str,
    hooked: ConntrackHooked<'_>,
) -> Result<bool, LoadError> {
    let nf = NetfilterProgram::load(object, program, &out.ebpf)?;
    let mut any = false;
    for family in [Family::Ipv4, Family::Ipv6] {
        for hook in [HookNum::PreRouting, HookNum::LocalOut] {
            let at = format!("netfilter {}/{}", family.name(), hook.name());
            // Conntrack registers its hooks in a namespace only when a rule or NAT needs them;
            // without them `_nfct` is 0 on every packet, which would read as a flood of INVALID
            // verdicts.
            match hooked(family, hook) {
                Some(false) => {
                    out.lines.push(format!(
                        "skipped {program} at {at}: conntrack is not active for {} in this network namespace (no rule or NAT uses it)",
                        family.name()
                    ));
                    continue;
                }
                None => log::debug!(
                    "cannot list netfilter hooks (nfnetlink_hook, 5.14+): assuming conntrack is active for {}",
                    family.name()
                ),
                Some(true) => {}
            }
            let (link, priority) = nf.attach_free(family, hook)?;
            out.links.push(link);
            any = true;
            out.lines
                .push(format!("attached {program} at {at} priority {priority}"));
            out.programs.push((program, at));
        }
    }
    if any {
        out.own.push((program, nf.into_fd()));
    }
    Ok(any)
}

/// An fexit program on `func`, through the BTF of the module that has it (ct-trace's own
/// loader: aya cannot attach to a module's function).
fn attach_fexit(
    out: &mut Attached,
    object: &[u8],
    program: &'static str,
    func: &'static str,
    kbtf: &KernelFacts,
) -> Result<(), LoadError> {
    // The row's Prototype need found the function in the BTF.
    let target = kbtf.func_ids.get(func).ok_or_else(|| LoadError::Mode {
        mode: "fexit",
        why: format!("the kernel's BTF does not describe {func}"),
    })?;
    let (prog, link) = trampoline::attach_fexit(object, program, &out.ebpf, func, target)?;
    out.links.push(link);
    out.own.push((program, prog.fd));
    let at = format!("fexit/{func}");
    let via = target
        .module
        .as_deref()
        .map_or(String::new(), |m| format!(" (BTF of module {m})"));
    out.lines.push(format!("attached {program} at {at}{via}"));
    out.programs.push((program, at));
    Ok(())
}
