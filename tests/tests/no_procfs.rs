//! Without `/proc/net/stat/nf_conntrack` (Ubuntu's kernels are built without
//! `CONFIG_NF_CONNTRACK_PROCFS`), ct-trace reads the kernel's conntrack counters through
//! ctnetlink (`IPCTNL_MSG_CT_GET_STATS_CPU`), says so, and its figures equal the ones procfs
//! gives for the same namespace and interval.
//!
//! ct-trace runs in a mount namespace where its `/proc/net` is empty (see
//! `CtTrace::start_without_procfs`); the test reads the real procfs file from outside, before
//! ct-trace starts and after it stops. Traffic: ten real out-of-window replies through the
//! node's DNAT (ten attributions) and a scan's INVALID segments to a closed pod port.

use std::collections::HashMap;

use integration_tests::{
    bin, in_vm, need_root, python, scripts, Background, CtTrace, Netns, Topology, SERVER,
};
use serde_json::Value;

/// The kernel's counters that ct-trace compares with, from procfs, read outside ct-trace.
const COMPARED: [&str; 4] = ["invalid", "drop", "early_drop", "insert_failed"];

fn procfs(ns: &Netns) -> HashMap<&'static str, u64> {
    COMPARED
        .iter()
        .map(|c| (*c, ns.kernel_counter(c)))
        .collect()
}

fn doctor(ns: &Netns, hide_procfs: bool) -> Value {
    let cmd = if hide_procfs {
        format!(
            "unshare --mount --propagation private sh -c 'mount -t tmpfs none /proc/$$/net && mkdir /proc/$$/net/stat && exec \"$0\" doctor -o json --window 0' {}",
            bin().display()
        )
    } else {
        format!("{} doctor -o json --window 0", bin().display())
    };
    let out = ns.exec(&cmd);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("doctor's JSON ({e}): {out}"))
}

#[test]
fn without_procfs_the_kernels_counters_come_from_ctnetlink_and_equal_procfs() {
    if !need_root("without_procfs_the_kernels_counters_come_from_ctnetlink_and_equal_procfs") {
        return;
    }
    let t = Topology::ipv4_only();
    let before = procfs(&t.node);
    let ct = CtTrace::start_without_procfs(&t.node, &[]);
    let segs = t.segments("seq_over", 10, false);
    // SYN|FIN, FIN, NULL and XMAS segments (INVALID) and ACKs to a pod port nothing listens on.
    let scan = Background::start(
        &t.client,
        &format!(
            "{} {} {SERVER} 8089 n=10",
            python(),
            scripts().join("scan.py").display()
        ),
    );
    let limit = std::time::Duration::from_secs(if in_vm() { 600 } else { 120 });
    let sent: HashMap<String, u64> =
        serde_json::from_str(scan.wait(limit).trim()).expect("scan.py's JSON line");
    assert_eq!(sent.values().sum::<u64>(), 10 * 5, "{sent:?}");
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let after = procfs(&t.node);
    let delta = |c: &str| after[c] - before[c];
    eprintln!("procfs before {before:?}, after {after:?}");

    let s = out.summary();
    assert_eq!(s["kernel_counters"], "ctnetlink", "{s}");
    assert!(
        out.stderr
            .contains("the kernel's counters read through ctnetlink"),
        "{}",
        out.stderr
    );
    // Ten real failures and at least the scan's forty INVALID segments, all counted, equal to
    // procfs's count over the same interval.
    let i = out.reconciled_invalid();
    assert!(delta("invalid") >= 10 + 4 * 10, "procfs: {after:?}");
    assert_eq!(i["kernel"], delta("invalid"), "{i}");
    assert_eq!(i["counted"], delta("invalid"), "{i}");
    let table = &s["table"];
    for (field, counter) in [
        ("kernel_drop", "drop"),
        ("kernel_early_drop", "early_drop"),
        ("kernel_insert_failed", "insert_failed"),
    ] {
        assert_eq!(table[field], delta(counter), "{field}: {table}");
    }
    assert_eq!(out.of_kind("attribution").len(), segs.len());

    // The doctor: the same counters either way, and it says where it read them.
    let hidden = doctor(&t.node, true);
    let shown = doctor(&t.node, false);
    assert_eq!(hidden["counters_source"], "ctnetlink", "{hidden}");
    assert_eq!(shown["counters_source"], "procfs", "{shown}");
    assert_eq!(hidden["counters"], shown["counters"]);
    for c in COMPARED {
        assert_eq!(hidden["counters"][c], after[c], "{c}: {hidden}");
    }
}
