//! The attach plan: every program ct-trace has, where it attaches, the kernel prototype it
//! assumes, the oldest kernel it works on, and what ct-trace does without it. This table is the
//! one place kernel differences live; preflight walks it, attaches what the running kernel
//! offers, and prints what it attached and what it skipped and why.

use std::{os::fd::OwnedFd, path::PathBuf};

use aya::{
    programs::{BtfTracePoint, KProbe, ProgramError},
    Ebpf, EbpfLoader,
};

use crate::{
    btf::{BtfError, KernelBtf, KernelFacts},
    cli::AttachMode,
    netfilter::{Family, HookNum, NetfilterError, NetfilterProgram},
    netlink,
};

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A BTF-enabled tracepoint (`tp_btf/<name>`).
    TpBtf(&'static str),
    /// A netfilter link in ct-trace's network namespace, one per family and hook.
    Netfilter,
    /// A kprobe on a kernel function's entry.
    Kprobe(&'static str),
    /// A kretprobe on a kernel function's return.
    Kretprobe(&'static str),
}

/// Why a row is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// On every kernel that has the attach point.
    Always,
    /// The INVALID verdict in this attach mode (one mode per run).
    Verdict(AttachMode),
    /// Why conntrack refused a packet, and its conntrack entry at that moment.
    Reason,
    /// Resets of packets no socket owns, on kernels whose tracepoint skips them (before 6.10).
    OldResets,
}

/// One row of the plan.
pub struct Probe {
    /// Program name in the eBPF object (at most 15 bytes: the kernel truncates).
    pub program: &'static str,
    pub attach: Attach,
    /// The kernel prototype the program reads its arguments by, and where it is defined.
    pub prototype: &'static str,
    /// For kprobes: the leading parameter names the running kernel's BTF must show (`...` for a
    /// variadic tail); a kernel with another prototype is skipped, never read wrong.
    pub params: &'static [&'static str],
    /// Oldest kernel with this attach point.
    pub min_kernel: (u32, u32),
    pub role: Role,
    /// What ct-trace does on kernels without it.
    pub fallback: &'static str,
}

pub const PLAN: &[Probe] = &[
    Probe {
        program: "ctt_rst_sent",
        attach: Attach::TpBtf("tcp_send_reset"),
        prototype: "include/trace/events/tcp.h: tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, const enum sk_rst_reason reason) (reason and the sk == NULL call site: 6.10)",
        params: &[],
        min_kernel: (5, 5),
        role: Role::Always,
        fallback: "no rst_sent events",
    },
    Probe {
        program: "ctt_rst_v4",
        attach: Attach::Kprobe("tcp_v4_send_reset"),
        prototype: "net/ipv4/tcp_ipv4.c: static void tcp_v4_send_reset(const struct sock *sk, struct sk_buff *skb)",
        params: &["sk", "skb"],
        min_kernel: (5, 5),
        role: Role::OldResets,
        fallback: "resets of IPv4 packets no socket owns are not seen before Linux 6.10 (the tracepoint skips them)",
    },
    Probe {
        program: "ctt_rst_v6",
        attach: Attach::Kprobe("tcp_v6_send_reset"),
        prototype: "net/ipv6/tcp_ipv6.c: static void tcp_v6_send_reset(const struct sock *sk, struct sk_buff *skb)",
        params: &["sk", "skb"],
        min_kernel: (5, 5),
        role: Role::OldResets,
        fallback: "resets of IPv6 packets no socket owns are not seen before Linux 6.10 (the tracepoint skips them)",
    },
    Probe {
        program: "ctt_rst_recv",
        attach: Attach::TpBtf("tcp_receive_reset"),
        prototype: "include/trace/events/tcp.h: tcp_receive_reset(struct sock *sk)",
        params: &[],
        min_kernel: (5, 5),
        role: Role::Always,
        fallback: "no rst_received events",
    },
    Probe {
        program: "ctt_nf_verdict",
        attach: Attach::Netfilter,
        prototype: "include/linux/netfilter.h: struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; } at PRE_ROUTING and LOCAL_OUT, priority NF_IP_PRI_CONNTRACK + 1",
        params: &[],
        min_kernel: (6, 4),
        role: Role::Verdict(AttachMode::Netfilter),
        fallback: "the INVALID verdict comes from the kretprobe on nf_conntrack_in (--attach kprobe)",
    },
    // The return probe before the entry probe: an entry without its return would fill the
    // per-CPU argument stack for nothing.
    Probe {
        program: "ctt_ct_in_ret",
        attach: Attach::Kretprobe("nf_conntrack_in"),
        prototype: "net/netfilter/nf_conntrack_core.c: unsigned int nf_conntrack_in(struct sk_buff *skb, const struct nf_hook_state *state); INVALID = returns with skb->_nfct == 0 and not NF_DROP",
        params: &["skb", "state"],
        min_kernel: (4, 19),
        role: Role::Verdict(AttachMode::Kprobe),
        fallback: "no invalid events without kprobes on kernels before 6.4",
    },
    Probe {
        program: "ctt_ct_in",
        attach: Attach::Kprobe("nf_conntrack_in"),
        prototype: "net/netfilter/nf_conntrack_core.c: nf_conntrack_in(struct sk_buff *skb, const struct nf_hook_state *state): arguments kept on a per-CPU stack for the return probe",
        params: &["skb", "state"],
        min_kernel: (4, 19),
        role: Role::Verdict(AttachMode::Kprobe),
        fallback: "no invalid events without kprobes on kernels before 6.4",
    },
    Probe {
        program: "ctt_ct_log",
        attach: Attach::Kprobe("nf_ct_l4proto_log_invalid"),
        prototype: "net/netfilter/nf_conntrack_proto.c: void nf_ct_l4proto_log_invalid(const struct sk_buff *skb, const struct nf_conn *ct, const struct nf_hook_state *state, const char *fmt, ...)",
        params: &["skb", "ct", "state", "fmt", "..."],
        min_kernel: (5, 16),
        role: Role::Reason,
        fallback: "the reason and the conntrack window of INVALID packets are unknown",
    },
    Probe {
        program: "ctt_l4_log",
        attach: Attach::Kprobe("nf_l4proto_log_invalid"),
        prototype: "net/netfilter/nf_conntrack_proto.c: void nf_l4proto_log_invalid(const struct sk_buff *skb, const struct nf_hook_state *state, u8 protonum, const char *fmt, ...)",
        params: &["skb", "state", "protonum", "fmt", "..."],
        min_kernel: (5, 16),
        role: Role::Reason,
        fallback: "the reason of packets refused before conntrack looked them up (bad flags, checksum) is unknown",
    },
    Probe {
        program: "ctt_kfree_skb",
        attach: Attach::TpBtf("kfree_skb"),
        prototype: "include/trace/events/skb.h: kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk) (reason: 5.17, rx_sk: 6.12)",
        params: &[],
        min_kernel: (5, 5),
        role: Role::Always,
        fallback: "fate of INVALID packets is unknown",
    },
];

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
    #[error("the kernel rejected `{program}` ({source}); verifier log in {log_path}")]
    Verifier {
        program: &'static str,
        log_path: String,
        log: String,
        source: std::io::Error,
    },
    #[error("loading `{program}`")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
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
            Self::Verifier { log, .. } | Self::Netfilter(NetfilterError::Verifier { log, .. }) => {
                Some(log)
            }
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

/// Writes a verifier log where the one-line error can point to; returns its path.
pub(crate) fn write_log(program: &str, log: &str) -> String {
    let path: PathBuf = std::env::temp_dir().join(format!("ct-trace-verifier-{program}.log"));
    let _ = std::fs::write(&path, log);
    path.display().to_string()
}

fn program_error(program: &'static str, e: ProgramError) -> LoadError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            LoadError::Verifier {
                program,
                log_path: write_log(program, &log),
                log,
                source: io_error,
            }
        }
        source => LoadError::Program { program, source },
    }
}

/// What the running kernel offers, as far as choosing rows goes.
pub struct KernelFeatures {
    pub version: (u32, u32),
    pub kprobes: bool,
    /// `BPF_PROG_TYPE_NETFILTER` (6.4+).
    pub netfilter: bool,
    /// `tcp:tcp_send_reset` fires for resets without a socket and passes the reason (6.10+).
    pub rst_tracepoint_complete: bool,
}

impl KernelFeatures {
    pub fn probe(kbtf: &KernelFacts, version: (u32, u32)) -> Self {
        Self {
            version,
            kprobes: crate::preflight::has_kprobes(),
            netfilter: version >= (6, 4) && kbtf.has_type("bpf_nf_ctx"),
            rst_tracepoint_complete: kbtf.tracepoint_args("tcp_send_reset").unwrap_or(0) >= 3,
        }
    }

    /// The verdict source for `--attach`: `auto` takes the netfilter link where there is one
    /// (no per-packet cost beyond one load), else the kretprobe.
    pub fn mode(&self, wanted: AttachMode) -> Result<Option<AttachMode>, LoadError> {
        let v = self.version;
        match wanted {
            AttachMode::Netfilter if !self.netfilter => Err(LoadError::Mode {
                mode: "netfilter",
                why: format!("this kernel ({}.{}) has no netfilter BPF programs (Linux 6.4+); use --attach kprobe", v.0, v.1),
            }),
            AttachMode::Kprobe if !self.kprobes => Err(LoadError::Mode {
                mode: "kprobe",
                why: "this kernel has no kprobes (CONFIG_KPROBES); use --attach netfilter".into(),
            }),
            AttachMode::Auto if self.netfilter => Ok(Some(AttachMode::Netfilter)),
            AttachMode::Auto if self.kprobes => Ok(Some(AttachMode::Kprobe)),
            AttachMode::Auto => Ok(None),
            m => Ok(Some(m)),
        }
    }
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

fn params_match(kbtf: &KernelFacts, func: &str, want: &[&str]) -> Result<(), String> {
    match kbtf.func_params(func) {
        None => Err(format!(
            "the kernel's BTF does not describe {func} (not loaded, or inlined)"
        )),
        Some(have) if have.len() >= want.len() && have.iter().zip(want).all(|(h, w)| h == w) => {
            Ok(())
        }
        Some(have) => Err(format!(
            "{func} has another prototype here ({}), ct-trace reads ({})",
            have.join(", "),
            want.join(", ")
        )),
    }
}

/// Reads from the kernel's BTF what [`attach`] and the event path need: the types, tracepoints
/// and functions [`PLAN`] names, and the enums of reset and drop reasons.
pub fn facts(kbtf: &KernelBtf) -> KernelFacts {
    let mut types = vec!["bpf_nf_ctx".to_string()];
    let mut tracepoints = vec!["tcp_send_reset", "kfree_skb"];
    let mut funcs = Vec::new();
    for p in PLAN {
        match p.attach {
            Attach::TpBtf(tp) => {
                types.push(format!("btf_trace_{tp}"));
                tracepoints.push(tp);
            }
            Attach::Kprobe(f) | Attach::Kretprobe(f) => funcs.push(f),
            Attach::Netfilter => {}
        }
    }
    kbtf.facts(
        &types,
        &tracepoints,
        &funcs,
        &["sk_rst_reason", "skb_drop_reason"],
    )
}

/// Loads the object, then attaches every row of [`PLAN`] the kernel supports.
pub fn attach(
    object: &[u8],
    kbtf: &KernelFacts,
    feat: &KernelFeatures,
    wanted: AttachMode,
    globals: &Globals,
) -> Result<Attached, LoadError> {
    let version = feat.version;
    let mode = feat.mode(wanted)?;
    let offsets = kbtf
        .offsets
        .ok_or_else(|| LoadError::Facts(kbtf.offsets_error.clone()))?;
    log::debug!(
        "kernel offsets: {offsets:?}; conntrack hook functions: {:x?}",
        globals.ct_hook_fns
    );
    let ct_offsets = kbtf.ct_offsets.clone();
    let kfree_has_reason = kbtf.tracepoint_args("kfree_skb").unwrap_or(0) >= 3;
    let netfilter_drop = kbtf
        .enum_names("skb_drop_reason")
        .into_iter()
        .find(|(_, n)| n == "SKB_DROP_REASON_NETFILTER_DROP")
        .map_or(u32::MAX, |(v, _)| v);
    let old_resets = !feat.rst_tracepoint_complete
        && feat.kprobes
        && ["tcp_v4_send_reset", "tcp_v6_send_reset"]
            .iter()
            .all(|f| params_match(kbtf, f, &["sk", "skb"]).is_ok());
    let btf =
        aya::Btf::from_sys_fs().map_err(|e| LoadError::Object(aya::EbpfError::BtfError(e)))?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global(
            "CT_OFFSETS",
            ct_offsets.as_ref().unwrap_or(&Default::default()),
            true,
        )
        .override_global(
            "RST_HAS_REASON",
            &u8::from(feat.rst_tracepoint_complete),
            true,
        )
        .override_global("RST_KPROBED", &u8::from(old_resets), true)
        .override_global("KFREE_HAS_REASON", &u8::from(kfree_has_reason), true)
        .override_global("TARGET_NETNS", &globals.netns, true)
        .override_global("EVENT_BUDGET", &globals.budget_per_cpu, true)
        .override_global("NETFILTER_DROP", &netfilter_drop, true)
        .override_global("CT_HOOK_FNS", &globals.ct_hook_fns, true)
        .override_global("FILTER", &globals.filter, true)
        .load(object)
        .map_err(LoadError::Object)?;

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
    let mut ct_in_ret = false;
    for probe in PLAN {
        let skip = |out: &mut Attached, why: String| {
            out.lines.push(format!(
                "skipped {}: {why}; {}",
                probe.program, probe.fallback
            ));
        };
        match probe.role {
            Role::Verdict(m) if Some(m) != mode => {
                out.lines.push(format!(
                    "skipped {}: the INVALID verdict comes from {} in this run",
                    probe.program,
                    mode.map_or("nowhere", |m| m.source())
                ));
                continue;
            }
            Role::OldResets if feat.rst_tracepoint_complete => {
                out.lines.push(format!(
                    "skipped {}: not needed, tcp_send_reset reports resets without a socket on this kernel",
                    probe.program
                ));
                continue;
            }
            Role::OldResets if !old_resets => {
                skip(
                    &mut out,
                    if feat.kprobes {
                        "tcp_v4_send_reset/tcp_v6_send_reset have another prototype here".into()
                    } else {
                        "this kernel has no kprobes".into()
                    },
                );
                continue;
            }
            _ => {}
        }
        if version < probe.min_kernel {
            skip(
                &mut out,
                format!(
                    "needs Linux {}.{}, this is {}.{}",
                    probe.min_kernel.0, probe.min_kernel.1, version.0, version.1
                ),
            );
            continue;
        }
        match probe.attach {
            Attach::TpBtf(tp) => {
                if !kbtf.has_type(&format!("btf_trace_{tp}")) {
                    skip(&mut out, format!("this kernel has no tracepoint {tp}"));
                    continue;
                }
                let prog: &mut BtfTracePoint = out
                    .ebpf
                    .program_mut(probe.program)
                    .ok_or(LoadError::NoProgram(probe.program))?
                    .try_into()
                    .map_err(|e| program_error(probe.program, e))?;
                prog.load(tp, &btf)
                    .map_err(|e| program_error(probe.program, e))?;
                prog.attach().map_err(|e| program_error(probe.program, e))?;
                out.lines
                    .push(format!("attached {} at tp_btf/{tp}", probe.program));
                if tp == "kfree_skb" {
                    out.fate = true;
                }
            }
            Attach::Kprobe(func) | Attach::Kretprobe(func) => {
                let required = matches!(probe.role, Role::Verdict(_) | Role::OldResets);
                let why = if !feat.kprobes {
                    Some("this kernel has no kprobes".to_string())
                } else if probe.role == Role::Reason && ct_offsets.is_err() {
                    Some(format!(
                        "conntrack's structures are not readable: {}",
                        ct_offsets
                            .as_ref()
                            .err()
                            .map(|e| e.to_string())
                            .unwrap_or_default()
                    ))
                } else if probe.program == "ctt_ct_in" && !ct_in_ret {
                    Some("its return probe is not attached".to_string())
                } else {
                    params_match(kbtf, func, probe.params).err()
                };
                if let Some(why) = why {
                    if required {
                        return Err(LoadError::Mode {
                            mode: if probe.role == Role::OldResets {
                                "kprobe"
                            } else {
                                mode.map_or("auto", |m| m.name())
                            },
                            why: format!("cannot attach {}: {why}", probe.program),
                        });
                    }
                    skip(&mut out, why);
                    continue;
                }
                let prog: &mut KProbe = out
                    .ebpf
                    .program_mut(probe.program)
                    .ok_or(LoadError::NoProgram(probe.program))?
                    .try_into()
                    .map_err(|e| program_error(probe.program, e))?;
                prog.load().map_err(|e| program_error(probe.program, e))?;
                prog.attach(func, 0).map_err(|source| LoadError::Kprobe {
                    program: probe.program,
                    target: func,
                    source,
                })?;
                let kind = if matches!(probe.attach, Attach::Kretprobe(_)) {
                    "kretprobe"
                } else {
                    "kprobe"
                };
                out.lines
                    .push(format!("attached {} at {kind}/{func}", probe.program));
                match probe.program {
                    "ctt_ct_in_ret" => ct_in_ret = true,
                    "ctt_ct_in" => out.mode = Some(AttachMode::Kprobe),
                    "ctt_ct_log" => out.reasons = Ok(()),
                    _ => {}
                }
            }
            Attach::Netfilter => {
                let nf = NetfilterProgram::load(object, probe.program, &out.ebpf)?;
                for family in [Family::Ipv4, Family::Ipv6] {
                    for hook in [HookNum::PreRouting, HookNum::LocalOut] {
                        let at = format!("netfilter {}/{}", family.name(), hook.name());
                        // Conntrack registers its hooks in a namespace only when a rule or NAT
                        // needs them; without them `_nfct` is 0 on every packet, which would read
                        // as a flood of INVALID verdicts.
                        match netlink::conntrack_hooked(family as u8, hook as u32) {
                            Some(false) => {
                                out.lines.push(format!(
                                    "skipped {} at {at}: conntrack is not active for {} in this network namespace (no rule or NAT uses it)",
                                    probe.program,
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
                        out.mode = Some(AttachMode::Netfilter);
                        out.lines.push(format!(
                            "attached {} at {at} priority {priority}",
                            probe.program
                        ));
                    }
                }
            }
        }
    }
    if out.lines.iter().all(|l| l.starts_with("skipped")) {
        return Err(LoadError::NothingAttached);
    }
    Ok(out)
}
