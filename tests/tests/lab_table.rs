//! `ct-trace lab --scenario table-full`: the write-ups' shrunk table, which needs the global
//! `nf_conntrack_max` (hence `--allow-host-sysctl`), and `--fix bigger-table`. Its own test
//! binary, its tests one at a time: while the limit is shrunk it bounds every namespace's
//! table, so no other lab may run meanwhile. Host only (the host kernel allows all of it).

use std::{
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use integration_tests::{
    bin,
    lab::{assert_no_lab_namespace, lab, n, run_with},
    need_root,
};

/// One lab at a time in this binary.
static ONE: Mutex<()> = Mutex::new(());

const SYSCTLS: [&str; 2] = [
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/proc/sys/net/netfilter/nf_conntrack_buckets",
];

fn sysctls() -> Vec<String> {
    SYSCTLS
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

#[test]
fn table_full_needs_allow_host_sysctl() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let before = sysctls();
    let out = Command::new(bin())
        .args(["lab", "run", "--scenario", "table-full"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--allow-host-sysctl"), "{err}");
    assert_eq!(sysctls(), before);
}

/// Without a fix (or with a fix for INVALID) the burst overflows the table: every refused SYN
/// is a `table_full` event naming the client and the Service, as many as the kernel's `drop`
/// counter; with `bigger-table` nothing is dropped. The global sysctls are back after each.
#[test]
fn a_full_table_refuses_the_burst_and_bigger_table_fixes_it() {
    if !need_root("a_full_table_refuses_the_burst_and_bigger_table_fixes_it") {
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let before = sysctls();
    let pcap =
        std::env::temp_dir().join(format!("ct-trace-lab-table-{}.pcapng", std::process::id()));
    let _ = std::fs::remove_file(&pcap);
    let (events, v) = run_with(
        "table-full",
        "none",
        &[
            "--allow-host-sysctl",
            "--pcap",
            pcap.to_str().expect("utf-8 temp dir"),
        ],
    );
    assert_eq!(sysctls(), before, "sysctls restored");
    assert_eq!(v["as_expected"], true, "{v}");
    let table = &v["table"];
    assert!(n(table, "refused") >= 1, "{v}");
    assert_eq!(n(table, "max"), n(table, "entries_before") + 8, "{v}");
    let full: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "table_full")
        .collect();
    assert!(!full.is_empty(), "{v}");
    // One table_full per kernel drop, short only by runs of the kfree_skb program the kernel
    // skipped (recursion protection: a softirq's drop while it ran on that CPU), which ct-trace
    // reports.
    let (drop, missed) = (n(&v, "kernel_drop"), n(&v, "missed_runs"));
    assert_eq!(full.len() as u64, n(&v, "table_full"), "{v}");
    assert!(
        full.len() as u64 <= drop && drop - full.len() as u64 <= missed,
        "{} table_full for {drop} kernel drops, {missed} missed runs: {v}",
        full.len()
    );
    for e in &full {
        assert_eq!(e["src"], "10.78.1.2", "{e}");
        assert_eq!(e["dst"], "10.96.0.10", "{e}");
        assert_eq!(e["dport"], 80, "{e}");
        assert_eq!(e["flags"], "SYN", "{e}");
        assert_eq!(e["max"], table["max"], "{e}");
        assert_eq!(e["service_name"], "ctt-lab/web:http", "{e}");
    }
    // The refused SYNs are in the pcapng file, one per table_full event, in their order.
    let t = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-Y", "frame.comment contains \"table_full\""])
        .args(["-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
        ])
        .args(["-e", "tcp.flags.str"])
        .output()
        .expect("tshark");
    let _ = std::fs::remove_file(&pcap);
    assert!(t.status.success(), "tshark: {t:?}");
    let rows: Vec<String> = String::from_utf8_lossy(&t.stdout)
        .lines()
        .map(String::from)
        .collect();
    let want: Vec<String> = full
        .iter()
        .map(|e| format!("10.78.1.2|10.96.0.10|{}|80|··········S·", e["sport"]))
        .collect();
    assert_eq!(rows, want);

    let (events, v) = run_with("table-full", "bigger-table", &["--allow-host-sysctl"]);
    assert_eq!(sysctls(), before, "sysctls restored");
    assert_eq!(v["as_expected"], true, "{v}");
    assert_eq!(n(&v["table"], "refused"), 0, "{v}");
    assert_eq!(n(&v, "kernel_drop"), 0, "{v}");
    assert!(
        !events.iter().any(|e| e["kind"] == "table_full"),
        "{events:#?}"
    );
}

/// While a table-full lab has the limit shrunk, another lab refuses to start (one line, exit
/// 2). Killed outright (SIGKILL), it cannot restore the limit; `lab cleanup` does, from the
/// values the lab saved first.
#[test]
fn a_killed_table_full_lab_has_its_sysctls_restored_by_cleanup() {
    if !need_root("a_killed_table_full_lab_has_its_sysctls_restored_by_cleanup") {
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let before = sysctls();
    let mut child = Command::new(bin())
        .args([
            "lab",
            "run",
            "--scenario",
            "table-full",
            "--allow-host-sysctl",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lab");
    let pid = child.id();
    // The lab's root-only directory (see conntrack-user/src/private).
    let state = format!("/run/ct-trace/lab/ctt-lab-{pid}.sysctl");
    let t0 = Instant::now();
    while sysctls() == before {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the lab never shrank the table"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(std::path::Path::new(&state).exists(), "{state}");
    let (_, other) = lab(&["run", "--scenario", "clean"]);
    assert_eq!(other.status.code(), Some(2), "{other:?}");
    let err = String::from_utf8_lossy(&other.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("table-full lab (PID {pid})")),
        "{err}"
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let (_, out) = lab(&["cleanup"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sysctls(), before, "cleanup restored the sysctls");
    assert!(!std::path::Path::new(&state).exists(), "{state}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restored"),
        "cleanup says what it restored"
    );
    assert_no_lab_namespace(pid);
}
