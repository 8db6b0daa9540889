//! The attach plan: every program ct-trace has, where it attaches, the kernel prototype it
//! assumes, the oldest kernel it works on, and what ct-trace does without it. This table is the
//! one place kernel differences live; preflight walks it, attaches what the running kernel
//! offers, and prints what it attached and what it skipped and why.

use std::{os::fd::OwnedFd, path::PathBuf};

use aya::{
    programs::{BtfTracePoint, ProgramError},
    Ebpf, EbpfLoader,
};

use crate::{
    btf::{BtfError, KernelBtf},
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
}

/// One row of the plan.
pub struct Probe {
    /// Program name in the eBPF object (at most 15 bytes: the kernel truncates).
    pub program: &'static str,
    pub attach: Attach,
    /// The kernel prototype the program reads its arguments by, and where it is defined.
    pub prototype: &'static str,
    /// Oldest kernel with this attach point.
    pub min_kernel: (u32, u32),
    /// What ct-trace does on kernels without it.
    pub fallback: &'static str,
}

pub const PLAN: &[Probe] = &[
    Probe {
        program: "ctt_rst_sent",
        attach: Attach::TpBtf("tcp_send_reset"),
        prototype: "include/trace/events/tcp.h: tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, const enum sk_rst_reason reason) (reason and the sk == NULL call site: 6.10)",
        min_kernel: (5, 5),
        fallback: "no rst_sent events; before 6.10 resets of packets no socket owns never reach the tracepoint (a kprobe on tcp_v4_send_reset is needed there)",
    },
    Probe {
        program: "ctt_rst_recv",
        attach: Attach::TpBtf("tcp_receive_reset"),
        prototype: "include/trace/events/tcp.h: tcp_receive_reset(struct sock *sk)",
        min_kernel: (5, 5),
        fallback: "no rst_received events",
    },
    Probe {
        program: "ctt_nf_verdict",
        attach: Attach::Netfilter,
        prototype: "include/linux/netfilter.h: struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; } at PRE_ROUTING and LOCAL_OUT, priority NF_IP_PRI_CONNTRACK + 1",
        min_kernel: (6, 4),
        fallback: "no invalid events in this version (the kretprobe on nf_conntrack_in is the planned fallback)",
    },
    Probe {
        program: "ctt_kfree_skb",
        attach: Attach::TpBtf("kfree_skb"),
        prototype: "include/trace/events/skb.h: kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk) (reason: 5.17, rx_sk: 6.12)",
        min_kernel: (5, 5),
        fallback: "fate of INVALID packets is unknown",
    },
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Btf(#[from] BtfError),
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
    /// Whether the INVALID verdict programs are attached (for at least one family).
    pub verdicts: bool,
    pub fate: bool,
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

/// Loads the object, then attaches every row of [`PLAN`] the kernel supports.
pub fn attach(object: &[u8], kbtf: &KernelBtf, version: (u32, u32)) -> Result<Attached, LoadError> {
    let offsets = kbtf.offsets()?;
    let rst_has_reason = kbtf.tracepoint_args("tcp_send_reset").unwrap_or(0) >= 3;
    let kfree_has_reason = kbtf.tracepoint_args("kfree_skb").unwrap_or(0) >= 3;
    let btf =
        aya::Btf::from_sys_fs().map_err(|e| LoadError::Object(aya::EbpfError::BtfError(e)))?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global("RST_HAS_REASON", &u8::from(rst_has_reason), true)
        .override_global("KFREE_HAS_REASON", &u8::from(kfree_has_reason), true)
        .load(object)
        .map_err(LoadError::Object)?;

    let mut out = Attached {
        ebpf,
        links: vec![],
        lines: vec![],
        verdicts: false,
        fate: false,
    };
    for probe in PLAN {
        if version < probe.min_kernel {
            out.lines.push(format!(
                "skipped {}: needs Linux {}.{}, this is {}.{}; {}",
                probe.program,
                probe.min_kernel.0,
                probe.min_kernel.1,
                version.0,
                version.1,
                probe.fallback
            ));
            continue;
        }
        match probe.attach {
            Attach::TpBtf(tp) => {
                if !kbtf.has_type(&format!("btf_trace_{tp}")) {
                    out.lines.push(format!(
                        "skipped {}: this kernel has no tracepoint {tp}; {}",
                        probe.program, probe.fallback
                    ));
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
            Attach::Netfilter => {
                if !kbtf.has_type("bpf_nf_ctx") {
                    out.lines.push(format!(
                        "skipped {}: this kernel has no netfilter BPF programs; {}",
                        probe.program, probe.fallback
                    ));
                    continue;
                }
                let nf = NetfilterProgram::load(object, probe.program, &out.ebpf)?;
                for family in [Family::Ipv4, Family::Ipv6] {
                    for hook in [HookNum::PreRouting, HookNum::LocalOut] {
                        let at = format!(
                            "netfilter {}/{} priority {}",
                            family.name(),
                            hook.name(),
                            crate::netfilter::PRIORITY
                        );
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
                            None => log::warn!(
                                "cannot list netfilter hooks (nfnetlink_hook, 5.14+): assuming conntrack is active for {}",
                                family.name()
                            ),
                            Some(true) => {}
                        }
                        out.links.push(nf.attach(family, hook)?);
                        out.verdicts = true;
                        out.lines
                            .push(format!("attached {} at {at}", probe.program));
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
