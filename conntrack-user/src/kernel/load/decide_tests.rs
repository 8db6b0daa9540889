//! Tests of [`super::decide`]: the rows each kernel of the test matrix (and the build host) gets.

use conntrack_common::plan::{Version, KFREE_REASON, PLAN, RST_COMPLETE};

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
        // What the probe says (features.rs: probe_trampolines).
        trampolines: if version >= (5, 11) {
            Ok(())
        } else {
            Err(format!(
                "needs Linux 5.11, this is {}.{}",
                version.0, version.1
            ))
        },
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

/// Debian 11's 5.10: kprobes, no netfilter link, tcp_send_reset(sk, skb) and
/// kfree_skb(skb, location); no module BTF, so nf_conntrack's functions are in no BTF (the
/// reset functions are in vmlinux's), while `struct nf_conn` is in vmlinux's BTF.
fn debian_5_10() -> KernelFeatures {
    let mut k = kernel((5, 10), true, false, 2);
    k.tracepoint_args.insert("kfree_skb".into(), 2);
    for f in [
        "nf_conntrack_in",
        "nf_ct_l4proto_log_invalid",
        "nf_l4proto_log_invalid",
    ] {
        k.func_params.remove(f);
    }
    k
}

/// The build host: a 6.18 sandbox kernel without kprobes and BPF trampolines.
fn sandbox_6_18() -> KernelFeatures {
    KernelFeatures {
        kprobes: false,
        trampolines: Err(NO_TRAMPOLINES.into()),
        ..debian((6, 18))
    }
}

/// What the probe says on the build host.
const NO_TRAMPOLINES: &str = "the kernel refuses fexit programs on nf_conntrack_in (BPF_PROG_LOAD: Operation not permitted (os error 1))";

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
fn debian_5_10_runs_the_kprobes_the_old_resets_and_the_old_log_helpers() {
    let k = debian_5_10();
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
                "ctt_ct_log5",
                "ctt_l4_log5",
                "ctt_kfree_skb"
            ]
        );
        assert_eq!(
            skipped(&d, "ctt_ct_log"),
            "ctt_ct_log5 reads nf_ct_l4proto_log_invalid in this kernel's prototype instead"
        );
        assert!(d.old_resets());
        assert!(!k.has_form(RST_COMPLETE) && !k.has_form(KFREE_REASON));
    }
    assert_eq!(
        mode_error(decide(PLAN, &k, AttachMode::Netfilter)),
        "--attach netfilter: this kernel (5.10) has no netfilter BPF programs (Linux 6.4+); use --attach kprobe"
    );
    // No module BTF before 5.11: no trampoline reaches nf_conntrack_in, auto says so.
    assert_eq!(
        skipped(&decide(PLAN, &k, AttachMode::Auto).unwrap(), "ctt_ct_fexit"),
        "this kernel (5.10) has no fexit programs on module functions (Linux 5.11+); the INVALID verdict comes from the kretprobe on nf_conntrack_in (--attach kprobe) in this run"
    );
    assert_eq!(
        mode_error(decide(PLAN, &k, AttachMode::Fexit)),
        "--attach fexit: this kernel (5.10) has no fexit programs on module functions (Linux 5.11+); use --attach kprobe"
    );
    // The source vouches for nf_conntrack's prototypes on 5.8-5.10 only: a later kernel
    // without the BTF that would show them gets no kprobe mode.
    let mut k = debian_5_10();
    k.version = (5, 11);
    k.trampolines = Err("the kernel's BTF does not describe nf_conntrack_in".into());
    assert_eq!(
        mode_error(decide(PLAN, &k, AttachMode::Kprobe)),
        "--attach kprobe: cannot attach ctt_ct_in_ret: the kernel's BTF does not describe nf_conntrack_in (not loaded, or inlined)"
    );
}

/// Debian 12's 6.1 rows with `verdict` giving the INVALID verdict.
fn debian_6_1_rows(verdict: &[&'static str]) -> Vec<&'static str> {
    let mut rows = vec!["ctt_rst_sent", "ctt_rst_v4", "ctt_rst_v6", "ctt_rst_recv"];
    rows.extend(verdict);
    rows.extend(["ctt_ct_log", "ctt_l4_log", "ctt_kfree_skb"]);
    rows
}

#[test]
fn debian_6_1_prefers_the_fexit_program() {
    let k = debian_6_1();
    for wanted in [AttachMode::Auto, AttachMode::Fexit] {
        let d = decide(PLAN, &k, wanted).unwrap();
        assert_eq!(d.mode, Some(Mode::Fexit));
        assert_eq!(attached(&d), debian_6_1_rows(&["ctt_ct_fexit"]));
        assert_eq!(
            skipped(&d, "ctt_ct_in_ret"),
            "the INVALID verdict comes from the fexit program on nf_conntrack_in (--attach fexit) in this run"
        );
        assert!(d.old_resets());
    }
    // auto says why it passed the netfilter link over.
    let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
    assert_eq!(
        skipped(&d, "ctt_nf_verdict"),
        "this kernel (6.1) has no netfilter BPF programs (Linux 6.4+); the INVALID verdict comes from the fexit program on nf_conntrack_in (--attach fexit) in this run"
    );
    assert_eq!(
        mode_error(decide(PLAN, &k, AttachMode::Netfilter)),
        "--attach netfilter: this kernel (6.1) has no netfilter BPF programs (Linux 6.4+); use --attach fexit"
    );
}

#[test]
fn debian_6_1_runs_the_kprobes_when_asked_or_without_trampolines() {
    let d = decide(PLAN, &debian_6_1(), AttachMode::Kprobe).unwrap();
    assert_eq!(d.mode, Some(Mode::Kprobe));
    assert_eq!(
        attached(&d),
        debian_6_1_rows(&["ctt_ct_in_ret", "ctt_ct_in"])
    );
    assert_eq!(
        skipped(&d, "ctt_ct_fexit"),
        "the INVALID verdict comes from the kretprobe on nf_conntrack_in (--attach kprobe) in this run"
    );
    assert!(d.old_resets());
    let k = KernelFeatures {
        trampolines: Err(NO_TRAMPOLINES.into()),
        ..debian_6_1()
    };
    let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
    assert_eq!(d.mode, Some(Mode::Kprobe));
    assert_eq!(
        attached(&d),
        debian_6_1_rows(&["ctt_ct_in_ret", "ctt_ct_in"])
    );
    assert_eq!(
        skipped(&d, "ctt_ct_fexit"),
        format!("no BPF trampolines: {NO_TRAMPOLINES}; the INVALID verdict comes from the kretprobe on nf_conntrack_in (--attach kprobe) in this run")
    );
    assert_eq!(
        mode_error(decide(PLAN, &k, AttachMode::Fexit)),
        format!("--attach fexit: no BPF trampolines: {NO_TRAMPOLINES}; use --attach kprobe")
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
        let d = decide(PLAN, &k, AttachMode::Fexit).unwrap();
        assert_eq!(d.mode, Some(Mode::Fexit));
        assert_eq!(
            attached(&d),
            [
                "ctt_rst_sent",
                "ctt_rst_recv",
                "ctt_ct_fexit",
                "ctt_ct_log",
                "ctt_l4_log",
                "ctt_kfree_skb"
            ]
        );
        // Without trampolines auto still takes the netfilter link.
        let k = KernelFeatures {
            trampolines: Err(NO_TRAMPOLINES.into()),
            ..k
        };
        let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
        assert_eq!(d.mode, Some(Mode::Netfilter));
        assert_eq!(
            skipped(&d, "ctt_ct_fexit"),
            "the INVALID verdict comes from the netfilter link (--attach netfilter) in this run"
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
                "skipped ctt_ct_fexit: the INVALID verdict comes from the netfilter link (--attach netfilter) in this run",
                "skipped ctt_ct_in_ret: the INVALID verdict comes from the netfilter link (--attach netfilter) in this run",
                "skipped ctt_ct_in: the INVALID verdict comes from the netfilter link (--attach netfilter) in this run",
                "skipped ctt_ct_log: this kernel has no kprobes; the reason and the conntrack window of INVALID packets are unknown",
                "skipped ctt_l4_log: this kernel has no kprobes; the reason of packets refused before conntrack looked them up (bad flags, checksum) is unknown",
                "skipped ctt_ct_log5: this kernel has no kprobes; the reason and the conntrack window of INVALID packets are unknown",
                "skipped ctt_l4_log5: this kernel has no kprobes; the reason of packets refused before conntrack looked them up (bad flags, checksum) is unknown",
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
        trampolines: Err(NO_TRAMPOLINES.into()),
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
        "this kernel has no kprobes (CONFIG_KPROBES); the INVALID verdict comes from nowhere in this run"
    );
    assert_eq!(
        skipped(&d, "ctt_ct_fexit"),
        format!("no BPF trampolines: {NO_TRAMPOLINES}; the INVALID verdict comes from nowhere in this run")
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
    assert_eq!(d.mode, Some(Mode::Fexit));
}

#[test]
fn reasons_need_their_prototype_and_conntracks_layout() {
    let mut k = debian_6_1();
    k.conntrack = Err("no nf_conn".into());
    let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
    assert_eq!(
        skipped(&d, "ctt_ct_log"),
        "conntrack's structures are not readable: no nf_conn; the reason and the conntrack window of INVALID packets are unknown"
    );
    assert!(attached(&d).contains(&"ctt_ct_fexit"));
    let d = decide(PLAN, &kernel((5, 13), true, false, 2), AttachMode::Auto).unwrap();
    assert_eq!(
        skipped(&d, "ctt_l4_log"),
        "needs Linux 5.14, this is 5.13; the reason of packets refused before conntrack looked them up (bad flags, checksum) is unknown"
    );
    // A 5.13 with module BTF: the BTF shows the old prototype.
    let mut k = kernel((5, 13), true, false, 2);
    k.func_params.insert(
        "nf_ct_l4proto_log_invalid".into(),
        strings(&["skb", "ct", "fmt", "..."]),
    );
    let d = decide(PLAN, &k, AttachMode::Auto).unwrap();
    assert!(attached(&d).contains(&"ctt_ct_log5"));
    assert_eq!(
        skipped(&d, "ctt_ct_log"),
        "ctt_ct_log5 reads nf_ct_l4proto_log_invalid in this kernel's prototype instead"
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
    static ENTRY_ONLY: &[Probe] = &[PLAN[7]];
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
