//! The attach plan as data: every program ct-trace has, where it attaches, the kernel prototype
//! it assumes, the oldest kernel it works on, what else it needs from the running kernel, why it
//! is attached, what the run learns from it, and what ct-trace does without it; and the attach
//! modes of the INVALID verdict, whose requirements are those of their verdict rows.
//!
//! This is the one place kernel versions live (comments citing kernel history aside).
//! conntrack-user decides from it which rows the running kernel gets (`load::decide`), xtask
//! which modes a test kernel runs. Plain `&'static` data, no allocation: this crate is also
//! built for the bpf target.

/// A kernel version, `(major, minor)`.
pub type Version = (u32, u32);

/// The oldest kernel ct-trace runs on: every program sends its records through a BPF ring
/// buffer (commit 457f44363a88 "bpf: Implement BPF ring buffer and verifier support for it",
/// Linux 5.8) and stamps them with `bpf_ktime_get_boot_ns()` (71d19214776e, 5.8). Below it
/// ct-trace refuses to start, in one line; every row's `min_kernel` is at least this.
pub const FLOOR: Version = (5, 8);

/// Kernels without BTF for modules (module BTF came in 5.11, commit 36e68442d1af "bpf: Load
/// and verify kernel module BTFs"): the prototypes of nf_conntrack's functions cannot be read there, so a row
/// names the kernels whose source was read to have its prototype ([`Probe::vouched`]).
pub const NO_MODULE_BTF: (Version, Version) = (FLOOR, (5, 10));

/// Where the INVALID verdict comes from (`--attach`); one mode per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The BPF netfilter link right behind conntrack's hooks.
    Netfilter,
    /// One fexit program on `nf_conntrack_in` (a BPF trampoline).
    Fexit,
    /// The kretprobe (and kprobe) on `nf_conntrack_in`.
    Kprobe,
}

/// The modes in the order `--attach auto` prefers them: the netfilter link costs one program
/// run per packet and needs no kprobes; the fexit program one run through a trampoline (a
/// direct call); the kprobe pair two runs, one of them through the kretprobe's return
/// trampoline, and a per-CPU map write per packet.
pub const MODES: [Mode; 3] = [Mode::Netfilter, Mode::Fexit, Mode::Kprobe];

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
    /// An fexit program on a kernel function (a BPF trampoline; a module's function through the
    /// module's BTF).
    Fexit(&'static str),
}

/// A tracepoint's newer form, told by how many arguments it passes to BTF programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Form {
    pub tracepoint: &'static str,
    /// Arguments (after the tracepoint's `void *`) from which the form is there.
    pub args: usize,
    /// The kernel that introduced it; for people only, the argument count decides.
    pub since: Version,
    /// What the tracepoint does in this form, as users read it: `<tracepoint> <does>`.
    pub does: &'static str,
}

/// `tcp:tcp_send_reset(sk, skb, reason)`: fires for resets without a socket too, and passes the
/// reason (`enum sk_rst_reason`).
pub const RST_COMPLETE: Form = Form {
    tracepoint: "tcp_send_reset",
    args: 3,
    since: (6, 10),
    does: "reports resets without a socket",
};

/// `skb:kfree_skb(skb, location, reason)`: passes the drop reason (`enum skb_drop_reason`).
pub const KFREE_REASON: Form = Form {
    tracepoint: "kfree_skb",
    args: 3,
    since: (5, 17),
    does: "passes the drop reason",
};

/// Every form ct-trace tells apart (their tracepoints' argument counts are read at start-up).
pub const FORMS: [Form; 2] = [RST_COMPLETE, KFREE_REASON];

/// The BTF type of the netfilter program's context: the kernel has BPF netfilter links.
pub const NETFILTER_CTX: &str = "bpf_nf_ctx";

/// Why a row is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// On every kernel that has the attach point.
    Always,
    /// The INVALID verdict in this attach mode. Required: once its mode is chosen, a row that
    /// cannot attach is an error, not a skip.
    Verdict(Mode),
    /// Why conntrack refused a packet, and its conntrack entry at that moment.
    Reason,
    /// Resets of packets no socket owns, on kernels whose reset tracepoint lacks this form (it
    /// skips them). Required, and all rows of the role attach or none does: the eBPF side is told
    /// once whether kprobes report these resets.
    OldResets(Form),
}

impl Role {
    /// Whether a need the row lacks (its role allowing it) is an error rather than a skip.
    pub const fn required(self) -> bool {
        matches!(self, Role::Verdict(_) | Role::OldResets(_))
    }
}

/// What a row needs from the running kernel besides its version, checked in the order listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Kprobes (`CONFIG_KPROBES`).
    Kprobes,
    /// BPF netfilter links: [`NETFILTER_CTX`] in the kernel's BTF.
    NetfilterLink,
    /// The row's tracepoint: its `btf_trace_<name>` typedef in the kernel's BTF.
    Tracepoint,
    /// The row's function in the kernel's BTF, its leading parameters named as the row's
    /// `params`: a kernel with another prototype is skipped, never read wrong.
    Prototype,
    /// Conntrack's structures (`struct nf_conn` in nf_conntrack's BTF): the row reads them.
    ConntrackLayout,
    /// The kretprobe on the same function, attached by an earlier row: an entry probe without its
    /// return would fill the per-CPU argument stack for nothing.
    ReturnProbe,
    /// BPF trampolines (fentry/fexit): an arch and config property (x86-64 since 5.5) that a
    /// kernel or its security policy may still refuse, so it is probed, not assumed.
    Trampolines,
}

impl Need {
    /// Needs that are properties of the kernel build (as opposed to BTF details): they decide
    /// which modes a kernel runs.
    pub const fn capability(self) -> bool {
        matches!(
            self,
            Need::Kprobes | Need::NetfilterLink | Need::Trampolines
        )
    }
}

/// What the run learns once a row is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gives {
    /// Resets (`rst_sent`, `rst_received`).
    Resets,
    /// INVALID verdicts: the run's mode is the row's ([`Role::Verdict`]).
    Verdicts,
    /// Half of a pair; the other row gives the result.
    Part,
    /// Why conntrack refused packets and their entries: the run knows reasons.
    Reasons,
    /// Reasons for some packets only (refused before the lookup); not enough to know reasons.
    SomeReasons,
    /// The fate of INVALID packets (dropped or let through).
    Fate,
}

/// One row of the plan.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Program name in the eBPF object (at most 15 bytes: the kernel truncates).
    pub program: &'static str,
    pub attach: Attach,
    /// The kernel prototype the program reads its arguments by, and where it is defined.
    pub prototype: &'static str,
    /// For [`Need::Prototype`]: the leading parameter names the running kernel's BTF must show
    /// (`...` for a variadic tail).
    pub params: &'static [&'static str],
    /// Oldest kernel with this attach point (at least [`FLOOR`]).
    pub min_kernel: Version,
    /// For [`Need::Prototype`]: the kernels (from, to) whose source was read to have
    /// `prototype`, trusted when the running kernel's BTF does not describe the function at all
    /// (a module's function before module BTF, [`NO_MODULE_BTF`]). `None`: only the BTF vouches.
    pub vouched: Option<(Version, Version)>,
    pub role: Role,
    /// What else the row needs, in the order they are checked.
    pub needs: &'static [Need],
    pub gives: Gives,
    /// What ct-trace does on kernels without it.
    pub fallback: &'static str,
}

/// The plan, in attach order.
pub const PLAN: &[Probe] = &[
    Probe {
        program: "ctt_rst_sent",
        attach: Attach::TpBtf("tcp_send_reset"),
        prototype: "include/trace/events/tcp.h: tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, const enum sk_rst_reason reason) (reason and the sk == NULL call site: 6.10)",
        params: &[],
        min_kernel: FLOOR,
        vouched: None,
        role: Role::Always,
        needs: &[Need::Tracepoint],
        gives: Gives::Resets,
        fallback: "no rst_sent events",
    },
    Probe {
        program: "ctt_rst_v4",
        attach: Attach::Kprobe("tcp_v4_send_reset"),
        prototype: "net/ipv4/tcp_ipv4.c: static void tcp_v4_send_reset(const struct sock *sk, struct sk_buff *skb)",
        params: &["sk", "skb"],
        min_kernel: FLOOR,
        vouched: None,
        role: Role::OldResets(RST_COMPLETE),
        needs: &[Need::Kprobes, Need::Prototype],
        gives: Gives::Resets,
        fallback: "resets of IPv4 packets no socket owns are not seen before Linux 6.10 (the tracepoint skips them)",
    },
    Probe {
        program: "ctt_rst_v6",
        attach: Attach::Kprobe("tcp_v6_send_reset"),
        prototype: "net/ipv6/tcp_ipv6.c: static void tcp_v6_send_reset(const struct sock *sk, struct sk_buff *skb)",
        params: &["sk", "skb"],
        min_kernel: FLOOR,
        vouched: None,
        role: Role::OldResets(RST_COMPLETE),
        needs: &[Need::Kprobes, Need::Prototype],
        gives: Gives::Resets,
        fallback: "resets of IPv6 packets no socket owns are not seen before Linux 6.10 (the tracepoint skips them)",
    },
    Probe {
        program: "ctt_rst_recv",
        attach: Attach::TpBtf("tcp_receive_reset"),
        prototype: "include/trace/events/tcp.h: tcp_receive_reset(struct sock *sk)",
        params: &[],
        min_kernel: FLOOR,
        vouched: None,
        role: Role::Always,
        needs: &[Need::Tracepoint],
        gives: Gives::Resets,
        fallback: "no rst_received events",
    },
    Probe {
        program: "ctt_nf_verdict",
        attach: Attach::Netfilter,
        prototype: "include/linux/netfilter.h: struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; } at PRE_ROUTING and LOCAL_OUT, priority NF_IP_PRI_CONNTRACK + 1",
        params: &[],
        min_kernel: (6, 4),
        vouched: None,
        role: Role::Verdict(Mode::Netfilter),
        needs: &[Need::NetfilterLink],
        gives: Gives::Verdicts,
        fallback: "the INVALID verdict comes from the fexit program or the kretprobe on nf_conntrack_in",
    },
    Probe {
        program: "ctt_ct_fexit",
        attach: Attach::Fexit("nf_conntrack_in"),
        prototype: "net/netfilter/nf_conntrack_core.c: unsigned int nf_conntrack_in(struct sk_buff *skb, const struct nf_hook_state *state); ctx[0] skb, ctx[1] state, ctx[2] the verdict; INVALID = returns with skb->_nfct == 0 and not NF_DROP",
        params: &["skb", "state"],
        // A trampoline reaches a module's function through the module's BTF (5.11: 36e68442d1af
        // "bpf: Load and verify kernel module BTFs", 290248a5b7d8 "bpf: Allow to specify kernel
        // module BTFs when attaching BPF programs"). Only the BTF vouches: the trampoline is
        // built from the BTF prototype.
        min_kernel: (5, 11),
        vouched: None,
        role: Role::Verdict(Mode::Fexit),
        needs: &[Need::Prototype, Need::Trampolines],
        gives: Gives::Verdicts,
        fallback: "the INVALID verdict comes from the kretprobe on nf_conntrack_in (--attach kprobe)",
    },
    // The return probe before the entry probe: an entry without its return would fill the
    // per-CPU argument stack for nothing.
    Probe {
        program: "ctt_ct_in_ret",
        attach: Attach::Kretprobe("nf_conntrack_in"),
        prototype: "net/netfilter/nf_conntrack_core.c: unsigned int nf_conntrack_in(struct sk_buff *skb, const struct nf_hook_state *state); INVALID = returns with skb->_nfct == 0 and not NF_DROP",
        params: &["skb", "state"],
        min_kernel: FLOOR,
        // Unchanged since 4.19 (93e66024b024 gave it the hook state); read in Debian's 5.10.262
        // source, net/netfilter/nf_conntrack_core.c:1809.
        vouched: Some(NO_MODULE_BTF),
        role: Role::Verdict(Mode::Kprobe),
        needs: &[Need::Kprobes, Need::Prototype],
        gives: Gives::Part,
        fallback: "no invalid events without kprobes on kernels before 6.4",
    },
    Probe {
        program: "ctt_ct_in",
        attach: Attach::Kprobe("nf_conntrack_in"),
        prototype: "net/netfilter/nf_conntrack_core.c: nf_conntrack_in(struct sk_buff *skb, const struct nf_hook_state *state): arguments kept on a per-CPU stack for the return probe",
        params: &["skb", "state"],
        min_kernel: FLOOR,
        // Unchanged since 4.19 (93e66024b024 gave it the hook state); read in Debian's 5.10.262
        // source, net/netfilter/nf_conntrack_core.c:1809.
        vouched: Some(NO_MODULE_BTF),
        role: Role::Verdict(Mode::Kprobe),
        needs: &[Need::Kprobes, Need::ReturnProbe, Need::Prototype],
        gives: Gives::Verdicts,
        fallback: "no invalid events without kprobes on kernels before 6.4",
    },
    Probe {
        program: "ctt_ct_log",
        attach: Attach::Kprobe("nf_ct_l4proto_log_invalid"),
        prototype: "net/netfilter/nf_conntrack_proto.c: void nf_ct_l4proto_log_invalid(const struct sk_buff *skb, const struct nf_conn *ct, const struct nf_hook_state *state, const char *fmt, ...)",
        params: &["skb", "ct", "state", "fmt", "..."],
        // The hook state came with 62eec0d73393 ("netfilter: conntrack: pass hook state to log
        // functions"), merged for 5.14.
        min_kernel: (5, 14),
        vouched: None,
        role: Role::Reason,
        needs: &[Need::Kprobes, Need::ConntrackLayout, Need::Prototype],
        gives: Gives::Reasons,
        fallback: "the reason and the conntrack window of INVALID packets are unknown",
    },
    Probe {
        program: "ctt_l4_log",
        attach: Attach::Kprobe("nf_l4proto_log_invalid"),
        prototype: "net/netfilter/nf_conntrack_proto.c: void nf_l4proto_log_invalid(const struct sk_buff *skb, const struct nf_hook_state *state, u8 protonum, const char *fmt, ...)",
        params: &["skb", "state", "protonum", "fmt", "..."],
        // The hook state came with 62eec0d73393 ("netfilter: conntrack: pass hook state to log
        // functions"), merged for 5.14.
        min_kernel: (5, 14),
        vouched: None,
        role: Role::Reason,
        needs: &[Need::Kprobes, Need::ConntrackLayout, Need::Prototype],
        gives: Gives::SomeReasons,
        fallback: "the reason of packets refused before conntrack looked them up (bad flags, checksum) is unknown",
    },
    // The same helpers before the hook state was added to them (62eec0d73393, 5.14). Their BTF
    // prototype tells the two forms apart from 5.11 on; on 5.8-5.10 (no module BTF) the
    // version does.
    Probe {
        program: "ctt_ct_log5",
        attach: Attach::Kprobe("nf_ct_l4proto_log_invalid"),
        prototype: "net/netfilter/nf_conntrack_proto.c (before 5.14): void nf_ct_l4proto_log_invalid(const struct sk_buff *skb, const struct nf_conn *ct, const char *fmt, ...); the TCP window checks pass \"%s\" and the message (Debian 5.10.262: nf_conntrack_proto.c:66, nf_conntrack_proto_tcp.c:703)",
        params: &["skb", "ct", "fmt", "..."],
        min_kernel: FLOOR,
        vouched: Some(NO_MODULE_BTF),
        role: Role::Reason,
        needs: &[Need::Kprobes, Need::ConntrackLayout, Need::Prototype],
        gives: Gives::Reasons,
        fallback: "the reason and the conntrack window of INVALID packets are unknown",
    },
    Probe {
        program: "ctt_l4_log5",
        attach: Attach::Kprobe("nf_l4proto_log_invalid"),
        prototype: "net/netfilter/nf_conntrack_proto.c (before 5.14): void nf_l4proto_log_invalid(const struct sk_buff *skb, struct net *net, u16 pf, u8 protonum, const char *fmt, ...) (Debian 5.10.262: nf_conntrack_proto.c:47)",
        params: &["skb", "net", "pf", "protonum", "fmt", "..."],
        min_kernel: FLOOR,
        vouched: Some(NO_MODULE_BTF),
        role: Role::Reason,
        needs: &[Need::Kprobes, Need::ConntrackLayout, Need::Prototype],
        gives: Gives::SomeReasons,
        fallback: "the reason of packets refused before conntrack looked them up (bad flags, checksum) is unknown",
    },
    Probe {
        program: "ctt_kfree_skb",
        attach: Attach::TpBtf("kfree_skb"),
        prototype: "include/trace/events/skb.h: kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk) (reason: 5.17, rx_sk: 6.12)",
        params: &[],
        min_kernel: FLOOR,
        vouched: None,
        role: Role::Always,
        needs: &[Need::Tracepoint],
        gives: Gives::Fate,
        fallback: "fate of INVALID packets is unknown",
    },
];

// The kernel keeps 15 bytes of a program name; no row claims a kernel below the floor.
const _: () = {
    let mut i = 0;
    while i < PLAN.len() {
        assert!(PLAN[i].program.len() <= 15);
        let (min, floor) = (PLAN[i].min_kernel, FLOOR);
        assert!(min.0 > floor.0 || (min.0 == floor.0 && min.1 >= floor.1));
        i += 1;
    }
};

impl Attach {
    /// The kernel function a kprobe or kretprobe attaches to.
    pub const fn function(self) -> Option<&'static str> {
        match self {
            Attach::Kprobe(f) | Attach::Kretprobe(f) | Attach::Fexit(f) => Some(f),
            Attach::TpBtf(_) | Attach::Netfilter => None,
        }
    }

    /// The tracepoint a `tp_btf` program attaches to.
    pub const fn tracepoint(self) -> Option<&'static str> {
        match self {
            Attach::TpBtf(tp) => Some(tp),
            _ => None,
        }
    }
}

/// The kernel-build properties that decide which modes a kernel runs ([`Need::capability`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub version: Version,
    pub kprobes: bool,
    pub netfilter_link: bool,
    pub trampolines: bool,
}

impl Capabilities {
    /// A kernel of `version` built with every capability ct-trace uses where the version has it
    /// (distribution kernels, like the test matrix's Debian ones).
    pub const fn full(version: Version) -> Self {
        Self {
            version,
            kprobes: true,
            netfilter_link: true,
            trampolines: true,
        }
    }

    /// Whether the kernel has a capability; `None` for a need that is no capability.
    pub const fn has(&self, need: Need) -> Option<bool> {
        match need {
            Need::Kprobes => Some(self.kprobes),
            Need::NetfilterLink => Some(self.netfilter_link),
            Need::Trampolines => Some(self.trampolines),
            _ => None,
        }
    }
}

impl Mode {
    /// The name `--attach` and `CT_TRACE_MODE` take.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Netfilter => "netfilter",
            Mode::Fexit => "fexit",
            Mode::Kprobe => "kprobe",
        }
    }

    /// What the mode attaches, for users who lack it.
    pub const fn what(self) -> &'static str {
        match self {
            Mode::Netfilter => "netfilter BPF programs",
            Mode::Fexit => "fexit programs on module functions",
            Mode::Kprobe => "kprobes on nf_conntrack_in(skb, state)",
        }
    }

    /// The rows that give the verdict in this mode.
    pub fn rows(self) -> impl Iterator<Item = &'static Probe> {
        PLAN.iter().filter(move |p| p.role == Role::Verdict(self))
    }

    /// The oldest kernel with every verdict row of the mode.
    pub fn min_kernel(self) -> Version {
        self.rows().map(|p| p.min_kernel).max().unwrap_or((0, 0))
    }

    /// The first capability a verdict row of the mode needs that the kernel lacks.
    pub fn missing(self, caps: &Capabilities) -> Option<Need> {
        self.rows()
            .flat_map(|p| p.needs.iter().copied())
            .find(|&n| caps.has(n) == Some(false))
    }

    /// Whether a kernel with `caps` runs this mode.
    pub fn runs_on(self, caps: &Capabilities) -> bool {
        caps.version >= self.min_kernel() && self.missing(caps).is_none()
    }

    /// The mode `--attach auto` takes: the first of [`MODES`] the kernel runs.
    pub fn auto(caps: &Capabilities) -> Option<Mode> {
        MODES.into_iter().find(|m| m.runs_on(caps))
    }

    /// The mode to suggest instead of this one: the kprobes reach every kernel from the floor
    /// on, and only the netfilter link runs without them.
    pub fn other(self) -> Mode {
        match self {
            Mode::Netfilter | Mode::Fexit => Mode::Kprobe,
            Mode::Kprobe => Mode::Netfilter,
        }
    }
}

/// The modes a kernel with `caps` runs, in [`MODES`] order.
pub fn modes_on(caps: Capabilities) -> impl Iterator<Item = Mode> {
    MODES.into_iter().filter(move |m| m.runs_on(&caps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(caps: Capabilities) -> ([Option<Mode>; 3], Option<Mode>) {
        let mut it = modes_on(caps);
        ([it.next(), it.next(), it.next()], Mode::auto(&caps))
    }

    #[test]
    fn modes_follow_the_verdict_rows() {
        use Mode::*;
        assert_eq!(Kprobe.min_kernel(), FLOOR);
        assert_eq!(FLOOR, (5, 8));
        assert_eq!(Fexit.min_kernel(), (5, 11));
        assert_eq!(Netfilter.min_kernel(), (6, 4));
        for v in [(5, 8), (5, 10)] {
            let m = modes(Capabilities::full(v));
            assert_eq!(m, ([Some(Kprobe), None, None], Some(Kprobe)));
        }
        for v in [(5, 11), (6, 1)] {
            let m = modes(Capabilities::full(v));
            assert_eq!(m, ([Some(Fexit), Some(Kprobe), None], Some(Fexit)));
        }
        // Below the floor nothing runs.
        assert_eq!(
            modes(Capabilities::full((5, 4))),
            ([None, None, None], None)
        );
        for v in [(6, 4), (6, 12), (7, 2)] {
            let m = modes(Capabilities::full(v));
            assert_eq!(
                m,
                (
                    [Some(Netfilter), Some(Fexit), Some(Kprobe)],
                    Some(Netfilter)
                )
            );
        }
        // The build host: no kprobes, no trampolines.
        let sandbox = Capabilities {
            kprobes: false,
            trampolines: false,
            ..Capabilities::full((6, 18))
        };
        assert_eq!(
            modes(sandbox),
            ([Some(Netfilter), None, None], Some(Netfilter))
        );
        assert_eq!(Kprobe.missing(&sandbox), Some(Need::Kprobes));
        assert_eq!(Fexit.missing(&sandbox), Some(Need::Trampolines));
        let no_link = Capabilities {
            netfilter_link: false,
            ..Capabilities::full((6, 12))
        };
        assert_eq!(Netfilter.missing(&no_link), Some(Need::NetfilterLink));
        assert_eq!(
            modes(no_link),
            ([Some(Fexit), Some(Kprobe), None], Some(Fexit))
        );
        let no_trampolines = Capabilities {
            trampolines: false,
            ..Capabilities::full((6, 1))
        };
        assert_eq!(
            modes(no_trampolines),
            ([Some(Kprobe), None, None], Some(Kprobe))
        );
        let nothing = Capabilities {
            kprobes: false,
            ..no_trampolines
        };
        assert_eq!(modes(nothing), ([None, None, None], None));
    }

    #[test]
    fn rows_are_consistent() {
        for (i, p) in PLAN.iter().enumerate() {
            assert!(PLAN[..i].iter().all(|q| q.program != p.program));
            match p.attach {
                Attach::TpBtf(_) => assert_eq!(p.needs, [Need::Tracepoint], "{}", p.program),
                Attach::Netfilter => assert!(p.needs.contains(&Need::NetfilterLink)),
                Attach::Fexit(_) => {
                    assert!(p.needs.contains(&Need::Trampolines), "{}", p.program);
                    assert!(p.needs.contains(&Need::Prototype), "{}", p.program);
                    assert!(p.vouched.is_none(), "{}", p.program);
                }
                Attach::Kprobe(f) | Attach::Kretprobe(f) => {
                    assert_eq!(p.needs.first(), Some(&Need::Kprobes), "{}", p.program);
                    assert!(p.needs.contains(&Need::Prototype), "{}", p.program);
                    assert!(!p.params.is_empty(), "{}", p.program);
                    if p.needs.contains(&Need::ReturnProbe) {
                        assert!(PLAN[..i]
                            .iter()
                            .any(|q| q.attach == Attach::Kretprobe(f) && q.role == p.role));
                    }
                }
            }
            if p.gives == Gives::Verdicts {
                assert!(matches!(p.role, Role::Verdict(_)), "{}", p.program);
            }
        }
        for m in MODES {
            assert_eq!(
                m.rows().filter(|p| p.gives == Gives::Verdicts).count(),
                1,
                "{m:?}"
            );
        }
    }
}
