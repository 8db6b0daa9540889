//! The attach plan's consumer. The plan itself (every program, where it attaches, the prototype
//! it assumes, the kernels that have it, what it needs and what ct-trace does without it) is data
//! in [`conntrack_common::plan`]. Here: what the running kernel offers ([`KernelFeatures`], read
//! once), which rows it gets ([`decide`], pure), and attaching them ([`attach`], one small
//! function per attach kind), with the lines preflight prints: what was attached, what was
//! skipped and why.

use std::{
    collections::{HashMap, HashSet},
    os::fd::OwnedFd,
};

use aya::{
    programs::{BtfTracePoint, KProbe, ProgramError},
    Ebpf, EbpfLoader,
};
use conntrack_common::plan::{
    Attach, Capabilities, Form, Gives, Mode, Need, Probe, Role, Version, FORMS, KFREE_REASON,
    NETFILTER_CTX, PLAN, RST_COMPLETE,
};

use crate::{
    btf::{BtfError, KernelBtf, KernelFacts},
    cli::AttachMode,
    netfilter::{Family, HookNum, NetfilterError, NetfilterProgram},
    netlink, preflight,
    verifier::{program_error, ProgramLoadError},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("{0}")]
    Facts(String),
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no program `{0}`")]
    NoProgram(&'static str),
    /// The kernel rejected a program (verifier log), or aya could not load it.
    #[error(transparent)]
    Program(#[from] ProgramLoadError),
    #[error(transparent)]
    Netfilter(#[from] NetfilterError),
    #[error("no program could be attached on this kernel")]
    NothingAttached,
    #[error("--attach {mode}: {why}")]
    Mode { mode: &'static str, why: String },
    #[error("attaching `{program}` to {target}")]
    Kprobe {
        program: &'static str,
        target: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl LoadError {
    /// The full verifier log, when the kernel rejected a program.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            Self::Program(e) => e.verifier_log(),
            Self::Netfilter(NetfilterError::Verifier { log, .. }) => Some(log),
            _ => None,
        }
    }
}

/// What got attached, kept alive for as long as ct-trace runs (dropping it detaches).
pub struct Attached {
    pub ebpf: Ebpf,
    /// Netfilter links; closing them detaches.
    pub links: Vec<OwnedFd>,
    /// Lines for the user: "attached ..." / "skipped ...".
    pub lines: Vec<String>,
    /// Where INVALID verdicts come from; `None` when no verdict program is attached.
    pub mode: Option<AttachMode>,
    pub fate: bool,
    /// Whether the reason kprobes are attached; otherwise why not.
    pub reasons: Result<(), String>,
}

/// What the running kernel offers, as far as choosing rows goes: read once by [`Self::probe`],
/// then only looked at.
#[derive(Clone, Debug)]
pub struct KernelFeatures {
    pub version: Version,
    /// Kprobes (`CONFIG_KPROBES`).
    pub kprobes: bool,
    /// [`NETFILTER_CTX`] in the kernel's BTF (the plan adds the kernel version it needs).
    pub netfilter_link: bool,
    /// BTF types the kernel has among those asked for (`btf_trace_<tracepoint>`).
    pub types: HashSet<String>,
    /// Arguments each tracepoint passes to BTF programs.
    pub tracepoint_args: HashMap<String, usize>,
    /// Parameter names of the functions the kprobes attach to (absent: not described).
    pub func_params: HashMap<String, Vec<String>>,
    /// Whether conntrack's structures are readable, or why not.
    pub conntrack: Result<(), String>,
}

impl KernelFeatures {
    pub fn probe(kbtf: &KernelFacts, version: Version) -> Self {
        Self {
            version,
            kprobes: preflight::has_kprobes(),
            netfilter_link: kbtf.has_type(NETFILTER_CTX),
            types: kbtf.types.clone(),
            tracepoint_args: kbtf.tracepoint_args.clone(),
            func_params: kbtf.func_params.clone(),
            conntrack: kbtf.ct_offsets.as_ref().map(|_| ()).map_err(Clone::clone),
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            version: self.version,
            kprobes: self.kprobes,
            netfilter_link: self.netfilter_link,
        }
    }

    /// Whether a tracepoint passes the arguments of `form`.
    pub fn has_form(&self, form: Form) -> bool {
        self.tracepoint_args
            .get(form.tracepoint)
            .is_some_and(|&n| n >= form.args)
    }

    fn prototype(&self, func: &str, want: &[&str]) -> Result<(), String> {
        match self.func_params.get(func) {
            None => Err(format!(
                "the kernel's BTF does not describe {func} (not loaded, or inlined)"
            )),
            Some(have)
                if have.len() >= want.len() && have.iter().zip(want).all(|(h, w)| h == w) =>
            {
                Ok(())
            }
            Some(have) => Err(format!(
                "{func} has another prototype here ({}), ct-trace reads ({})",
                have.join(", "),
                want.join(", ")
            )),
        }
    }

    /// Why `row` cannot have `need` here; `earlier`: the rows decided before it.
    fn lacks(&self, need: Need, row: &Probe, earlier: &[(&Probe, Decision)]) -> Option<String> {
        match need {
            Need::Kprobes => (!self.kprobes).then(|| "this kernel has no kprobes".to_string()),
            Need::NetfilterLink => (!self.netfilter_link)
                .then(|| "this kernel has no netfilter BPF programs".to_string()),
            Need::Tracepoint => {
                let tp = row.attach.tracepoint()?;
                (!self.types.contains(&format!("btf_trace_{tp}")))
                    .then(|| format!("this kernel has no tracepoint {tp}"))
            }
            Need::Prototype => self.prototype(row.attach.function()?, row.params).err(),
            Need::ConntrackLayout => self
                .conntrack
                .as_ref()
                .err()
                .map(|e| format!("conntrack's structures are not readable: {e}")),
            Need::ReturnProbe => {
                let ret = Attach::Kretprobe(row.attach.function()?);
                let attached = earlier
                    .iter()
                    .any(|(p, d)| p.attach == ret && *d == Decision::Attach);
                (!attached).then(|| "its return probe is not attached".to_string())
            }
        }
    }
}

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
        AttachMode::Kprobe => Mode::Kprobe,
    };
    if m.runs_on(&caps) {
        return Ok(Some(m));
    }
    let lacks = match m.missing(&caps) {
        Some(Need::Kprobes) => "this kernel has no kprobes (CONFIG_KPROBES)".to_string(),
        _ => {
            let (v, min) = (caps.version, m.min_kernel());
            format!(
                "this kernel ({}.{}) has no {} (Linux {}.{}+)",
                v.0,
                v.1,
                m.what(),
                min.0,
                min.1
            )
        }
    };
    Err(LoadError::Mode {
        mode: m.name(),
        why: format!("{lacks}; use --attach {}", m.other().name()),
    })
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
        let d = decide_row(plan, row, &rows, feat, mode)?;
        rows.push((row, d));
    }
    Ok(Decided { mode, rows })
}

fn decide_row(
    plan: &[Probe],
    row: &Probe,
    earlier: &[(&Probe, Decision)],
    feat: &KernelFeatures,
    mode: Option<Mode>,
) -> Result<Decision, LoadError> {
    if let Some(why) = role_gate(plan, row, feat, mode) {
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
    let Some(why) = row.needs.iter().find_map(|&n| feat.lacks(n, row, earlier)) else {
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
) -> Option<String> {
    match row.role {
        Role::Verdict(m) if mode != Some(m) => Some(format!(
            "the INVALID verdict comes from {} in this run",
            mode.map_or("nowhere", |m| attach_mode(m).source())
        )),
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

/// Values for the programs' read-only globals.
pub struct Globals {
    /// ct-trace's network namespace: the kprobes report conntrack of this namespace only.
    pub netns: u32,
    /// Records each CPU may send per second (0: no limit).
    pub budget_per_cpu: u32,
    pub filter: conntrack_common::Filter,
    /// Addresses of conntrack's hook functions (kallsyms), zero when unknown.
    pub ct_hook_fns: [u64; 4],
}

/// Reads from the kernel's BTF what [`attach`] and the event path need: the types, tracepoints
/// and functions [`PLAN`] names, and the enums of reset and drop reasons.
pub fn facts(kbtf: &KernelBtf) -> KernelFacts {
    let mut types = vec![NETFILTER_CTX.to_string()];
    let mut tracepoints: Vec<&str> = FORMS.iter().map(|f| f.tracepoint).collect();
    let mut funcs = Vec::new();
    for p in PLAN {
        if let Some(tp) = p.attach.tracepoint() {
            types.push(format!("btf_trace_{tp}"));
            tracepoints.push(tp);
        }
        funcs.extend(p.attach.function());
    }
    kbtf.facts(
        &types,
        &tracepoints,
        &funcs,
        &["sk_rst_reason", "skb_drop_reason"],
    )
}

/// Loads the object with its read-only globals set for this kernel and these decisions.
fn load_object(
    object: &[u8],
    kbtf: &KernelFacts,
    feat: &KernelFeatures,
    decided: &Decided,
    globals: &Globals,
) -> Result<(Ebpf, aya::Btf), LoadError> {
    let offsets = kbtf
        .offsets
        .ok_or_else(|| LoadError::Facts(kbtf.offsets_error.clone()))?;
    log::debug!(
        "kernel offsets: {offsets:?}; conntrack hook functions: {:x?}",
        globals.ct_hook_fns
    );
    let netfilter_drop = kbtf
        .enum_names("skb_drop_reason")
        .into_iter()
        .find(|(_, n)| n == "SKB_DROP_REASON_NETFILTER_DROP")
        .map_or(u32::MAX, |(v, _)| v);
    let flag = |b: bool| u8::from(b);
    let btf =
        aya::Btf::from_sys_fs().map_err(|e| LoadError::Object(aya::EbpfError::BtfError(e)))?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global(
            "CT_OFFSETS",
            kbtf.ct_offsets.as_ref().unwrap_or(&Default::default()),
            true,
        )
        .override_global("RST_HAS_REASON", &flag(feat.has_form(RST_COMPLETE)), true)
        .override_global("RST_KPROBED", &flag(decided.old_resets()), true)
        .override_global("KFREE_HAS_REASON", &flag(feat.has_form(KFREE_REASON)), true)
        .override_global("TARGET_NETNS", &globals.netns, true)
        .override_global("EVENT_BUDGET", &globals.budget_per_cpu, true)
        .override_global("NETFILTER_DROP", &netfilter_drop, true)
        .override_global("CT_HOOK_FNS", &globals.ct_hook_fns, true)
        .override_global("FILTER", &globals.filter, true)
        .load(object)
        .map_err(LoadError::Object)?;
    Ok((ebpf, btf))
}

/// Loads the object, then attaches every row of [`PLAN`] [`decide`] keeps.
pub fn attach(
    object: &[u8],
    kbtf: &KernelFacts,
    feat: &KernelFeatures,
    wanted: AttachMode,
    globals: &Globals,
) -> Result<Attached, LoadError> {
    let decided = decide(PLAN, feat, wanted)?;
    let (ebpf, btf) = load_object(object, kbtf, feat, &decided, globals)?;
    let mut out = Attached {
        ebpf,
        links: vec![],
        lines: vec![],
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
            Attach::Netfilter => attach_netfilter(&mut out, object, row.program),
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
    Ok(())
}

/// Links the netfilter program at every family and hook where conntrack runs in this network
/// namespace; returns whether any link was made.
fn attach_netfilter(
    out: &mut Attached,
    object: &[u8],
    program: &'static str,
) -> Result<bool, LoadError> {
    let nf = NetfilterProgram::load(object, program, &out.ebpf)?;
    let mut any = false;
    for family in [Family::Ipv4, Family::Ipv6] {
        for hook in [HookNum::PreRouting, HookNum::LocalOut] {
            let at = format!("netfilter {}/{}", family.name(), hook.name());
            // Conntrack registers its hooks in a namespace only when a rule or NAT needs them;
            // without them `_nfct` is 0 on every packet, which would read as a flood of INVALID
            // verdicts.
            match netlink::conntrack_hooked(family as u8, hook as u32) {
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
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A kernel with ct-trace's tracepoints and functions in their pre-6.10 prototypes.
    fn kernel(
        version: Version,
        kprobes: bool,
        netfilter_link: bool,
        rst_args: usize,
    ) -> KernelFeatures {
        let tps = [
            ("tcp_send_reset", rst_args),
            ("tcp_receive_reset", 1),
            ("kfree_skb", 3),
        ];
        let funcs: [(&str, &[&str]); 5] = [
            ("tcp_v4_send_reset", &["sk", "skb"]),
            ("tcp_v6_send_reset", &["sk", "skb"]),
            ("nf_conntrack_in", &["skb", "state"]),
            (
                "nf_ct_l4proto_log_invalid",
                &["skb", "ct", "state", "fmt", "..."],
            ),
            (
                "nf_l4proto_log_invalid",
                &["skb", "state", "protonum", "fmt", "..."],
            ),
        ];
        KernelFeatures {
            version,
            kprobes,
            netfilter_link,
            types: tps.iter().map(|(t, _)| format!("btf_trace_{t}")).collect(),
            tracepoint_args: tps.iter().map(|&(t, n)| (t.to_string(), n)).collect(),
            func_params: funcs
                .iter()
                .map(|(f, p)| (f.to_string(), strings(p)))
                .collect(),
            conntrack: Ok(()),
        }
    }

    /// Debian 12: kprobes, no netfilter link, tcp_send_reset(sk, skb), kfree_skb with reason.
    fn debian_6_1() -> KernelFeatures {
        kernel((6, 1), true, false, 2)
    }

    /// Debian 13 and later: kprobes, the netfilter link, tcp_send_reset(sk, skb, reason) and
    /// kfree_skb(skb, location, reason, rx_sk); the reset functions take the reason too.
    fn debian(version: Version) -> KernelFeatures {
        let mut k = kernel(version, true, true, 3);
        k.tracepoint_args.insert("kfree_skb".into(), 4);
        for f in ["tcp_v4_send_reset", "tcp_v6_send_reset"] {
            k.func_params
                .insert(f.into(), strings(&["sk", "skb", "reason"]));
        }
        k
    }

    /// The build host: a 6.18 sandbox kernel without kprobes.
    fn sandbox_6_18() -> KernelFeatures {
        KernelFeatures {
            kprobes: false,
            ..debian((6, 18))
        }
    }

    fn attached(d: &Decided) -> Vec<&'static str> {
        d.rows
            .iter()
            .filter(|(_, d)| *d == Decision::Attach)
            .map(|(p, _)| p.program)
            .collect()
    }

    fn skipped<'a>(d: &'a Decided, program: &str) -> &'a str {
        d.rows
            .iter()
            .find_map(|(p, d)| match d {
                Decision::Skip(why) if p.program == program => Some(why.as_str()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{program} is not skipped"))
    }

    fn mode_error(r: Result<Decided, LoadError>) -> String {
        match r {
            Err(e @ LoadError::Mode { .. }) => e.to_string(),
            Err(e) => panic!("not a mode error: {e}"),
            Ok(d) => panic!("decided {d:?}"),
        }
    }

    const NETFILTER_ROWS: [&str; 6] = [
        "ctt_rst_sent",
        "ctt_rst_recv",
        "ctt_nf_verdict",
        "ctt_ct_log",
        "ctt_l4_log",
        "ctt_kfree_skb",
    ];

    #[test]
    fn debian_6_1_runs_the_kprobes_and_the_old_resets() {
        let k = debian_6_1();
        for wanted in [AttachMode::Auto, AttachMode::Kprobe] {
            let d = decide(PLAN, &k, wanted).unwrap();
            assert_eq!(d.mode, Some(Mode::Kprobe));
            assert_eq!(
                attached(&d),
                [
                    "ctt_rst_sent",
                    "ctt_rst_v4",
                    "ctt_rst_v6",
                    "ctt_rst_recv",
                    "ctt_ct_in_ret",
                    "ctt_ct_in",
                    "ctt_ct_log",
                    "ctt_l4_log",
                    "ctt_kfree_skb"
                ]
            );
            assert_eq!(
                skipped(&d, "ctt_nf_verdict"),
                "the INVALID verdict comes from the kretprobe on nf_conntrack_in (--attach kprobe) in this run"
            );
            assert!(d.old_resets());
            assert!(!k.has_form(RST_COMPLETE) && k.has_form(KFREE_REASON));
        }
        assert_eq!(
            mode_error(decide(PLAN, &k, AttachMode::Netfilter)),
            "--attach netfilter: this kernel (6.1) has no netfilter BPF programs (Linux 6.4+); use --attach kprobe"
        );
    }

    #[test]
    fn debian_6_12_and_7_2_prefer_the_netfilter_link() {
        for k in [debian((6, 12)), debian((7, 2))] {
            for wanted in [AttachMode::Auto, AttachMode::Netfilter] {
                let d = decide(PLAN, &k, wanted).unwrap();
                assert_eq!(d.mode, Some(Mode::Netfilter));
                assert_eq!(attached(&d), NETFILTER_ROWS);
                assert_eq!(
                    skipped(&d, "ctt_rst_v4"),
                    "not needed, tcp_send_reset reports resets without a socket on this kernel"
                );
                assert_eq!(
                    skipped(&d, "ctt_ct_in"),
                    "the INVALID verdict comes from the netfilter link (--attach netfilter) in this run"
                );
                assert!(!d.old_resets());
            }
            let d = decide(PLAN, &k, AttachMode::Kprobe).unwrap();
            assert_eq!(d.mode, Some(Mode::Kprobe));
            assert_eq!(
                attached(&d),
                [
                    "ctt_rst_sent",
                    "ctt_rst_recv",
                    "ctt_ct_in_ret",
                    "ctt_ct_in",
                    "ctt_ct_log",
                    "ctt_l4_log",
                    "ctt_kfree_skb"
                ]
            );
            assert_eq!(
                skipped(&d, "ctt_nf_verdict"),
                "the INVALID verdict comes from the kretprobe on nf_conntrack_in (--attach kprobe) in this run"
            );
        }
    }

    #[test]
    fn sandbox_6_18_has_no_kprobes() {
        let k = sandbox_6_18();
        for wanted in [AttachMode::Auto, AttachMode::Netfilter] {
            let d = decide(PLAN, &k, wanted).unwrap();
            assert_eq!(d.mode, Some(Mode::Netfilter));
            assert_eq!(
                attached(&d),
                [
                    "ctt_rst_sent",
                    "ctt_rst_recv",
                    "ctt_nf_verdict",
                    "ctt_kfree_skb"
                ]
            );
            // The lines of `ct-trace -d 1` on this host before the plan moved to conntrack-common.
            let lines: Vec<String> = d
                .rows
                .iter()
                .filter_map(|(p, d)| match d {
                    Decision::Skip(why) => Some(format!("skipped {}: {why}", p.program)),
                    Decision::Attach => None,
                })
                .collect();
            assert_eq!(
                lines,
                [
                    "skipped ctt_rst_v4: not needed, tcp_send_reset reports resets without a socket on this kernel",
                    "skipped ctt_rst_v6: not needed, tcp_send_reset reports resets without a socket on this kernel",
                    "skipped ctt_ct_in_ret: the INVALID verdict comes from the netfilter link (--attach netfilter) in this run",
                    "skipped ctt_ct_in: the INVALID verdict comes from the netfilter link (--attach netfilter) in this run",
                    "skipped ctt_ct_log: this kernel has no kprobes; the reason and the conntrack window of INVALID packets are unknown",
                    "skipped ctt_l4_log: this kernel has no kprobes; the reason of packets refused before conntrack looked them up (bad flags, checksum) is unknown",
                ]
            );
        }
        assert_eq!(
            mode_error(decide(PLAN, &k, AttachMode::Kprobe)),
            "--attach kprobe: this kernel has no kprobes (CONFIG_KPROBES); use --attach netfilter"
        );
    }

    #[test]
    fn without_a_verdict_source_the_tracepoints_still_attach() {
        let k = KernelFeatures {
            kprobes: false,
            ..debian_6_1()
        };
        let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
        assert_eq!(d.mode, None);
        assert_eq!(
            attached(&d),
            ["ctt_rst_sent", "ctt_rst_recv", "ctt_kfree_skb"]
        );
        assert_eq!(
            skipped(&d, "ctt_ct_in_ret"),
            "the INVALID verdict comes from nowhere in this run"
        );
        assert_eq!(
            skipped(&d, "ctt_rst_v6"),
            "this kernel has no kprobes; resets of IPv6 packets no socket owns are not seen before Linux 6.10 (the tracepoint skips them)"
        );
        assert!(!d.old_resets());
    }

    #[test]
    fn old_resets_attach_together_or_not_at_all() {
        let mut k = debian_6_1();
        k.func_params
            .insert("tcp_v6_send_reset".into(), strings(&["skb"]));
        let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
        assert_eq!(
            skipped(&d, "ctt_rst_v4"),
            "tcp_v4_send_reset/tcp_v6_send_reset have another prototype here; resets of IPv4 packets no socket owns are not seen before Linux 6.10 (the tracepoint skips them)"
        );
        assert!(skipped(&d, "ctt_rst_v6").starts_with("tcp_v4_send_reset/tcp_v6_send_reset"));
        assert!(!d.old_resets());
        assert_eq!(d.mode, Some(Mode::Kprobe));
    }

    #[test]
    fn reasons_need_kernel_5_16_and_conntracks_layout() {
        let mut k = debian_6_1();
        k.conntrack = Err("no nf_conn".into());
        let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
        assert_eq!(
            skipped(&d, "ctt_ct_log"),
            "conntrack's structures are not readable: no nf_conn; the reason and the conntrack window of INVALID packets are unknown"
        );
        assert!(attached(&d).contains(&"ctt_ct_in"));
        let d = decide(PLAN, &kernel((5, 15), true, false, 2), AttachMode::Auto).unwrap();
        assert_eq!(
            skipped(&d, "ctt_l4_log"),
            "needs Linux 5.16, this is 5.15; the reason of packets refused before conntrack looked them up (bad flags, checksum) is unknown"
        );
        let mut k = debian_6_1();
        k.func_params.remove("nf_ct_l4proto_log_invalid");
        let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
        assert!(skipped(&d, "ctt_ct_log")
            .starts_with("the kernel's BTF does not describe nf_ct_l4proto_log_invalid"));
        assert!(attached(&d).contains(&"ctt_l4_log"));
    }

    #[test]
    fn a_verdict_row_that_cannot_attach_is_an_error() {
        let mut k = debian((6, 12));
        k.func_params.insert(
            "nf_conntrack_in".into(),
            strings(&["net", "pf", "hooknum", "skb"]),
        );
        assert_eq!(
            mode_error(decide(PLAN, &k, AttachMode::Kprobe)),
            "--attach kprobe: cannot attach ctt_ct_in_ret: nf_conntrack_in has another prototype here (net, pf, hooknum, skb), ct-trace reads (skb, state)"
        );
        // The netfilter mode does not look at the kprobes' prototypes.
        assert_eq!(
            decide(PLAN, &k, AttachMode::Auto).unwrap().mode,
            Some(Mode::Netfilter)
        );
        // An entry probe without its return probe.
        static ENTRY_ONLY: &[Probe] = &[PLAN[6]];
        assert_eq!(ENTRY_ONLY[0].program, "ctt_ct_in");
        assert_eq!(
            mode_error(decide(ENTRY_ONLY, &debian_6_1(), AttachMode::Kprobe)),
            "--attach kprobe: cannot attach ctt_ct_in: its return probe is not attached"
        );
    }

    #[test]
    fn missing_tracepoints_are_skipped() {
        let mut k = sandbox_6_18();
        k.types.remove("btf_trace_kfree_skb");
        let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
        assert_eq!(
            skipped(&d, "ctt_kfree_skb"),
            "this kernel has no tracepoint kfree_skb; fate of INVALID packets is unknown"
        );
    }
}
