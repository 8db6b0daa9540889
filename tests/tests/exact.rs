//! Exact at every rate: every reset the kernel matched to an INVALID packet is attributed,
//! however many come in a row and whatever else the node carries; under a flood every INVALID
//! verdict is counted, and the counts reconcile (counted == kernel == shown + suppressed +
//! filtered + lost); memory stays bounded; faults leave nothing behind.
//!
//! Traffic stays in the namespaces the tests create; every loop and flood is bounded.

use std::{collections::HashSet, time::Duration};

use integration_tests::{
    bin, in_vm, need_root, poll, python, CtTrace, GlobalSysctl, Output, Topology, CLIENT, SERVER,
    SERVICE,
};
use serde_json::Value;

/// Peak RSS ct-trace may reach, at start-up or in a flood (KiB).
const MAX_RSS_KIB: u64 = 64 * 1024;

/// `n` out-of-window replies (SEQ 2^30 past the window), each on a fresh client connection
/// through the Service; returns what segment.py printed for each.
fn out_of_window_replies(t: &Topology, n: usize) -> Vec<Value> {
    t.segments("seq_over", n, false)
}

/// Every crafted reply has exactly one attribution naming its client port, the Service and
/// the backend, and there is no other attribution.
fn assert_each_attributed(out: &Output, segs: &[Value]) {
    let attributions = out.of_kind("attribution");
    for s in segs {
        let client = format!("{CLIENT}:{}", s["cport"]);
        let mine: Vec<_> = attributions
            .iter()
            .filter(|a| a["client"] == client.as_str())
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "one attribution for {client} (seq {}): {:#?}",
            s["seq"],
            attributions
        );
        let a = mine[0];
        assert_eq!(a["seq"], s["seq"], "{a}");
        assert_eq!(a["backend"], format!("{SERVER}:8080"), "{a}");
        assert_eq!(a["service"], format!("{SERVICE}:80"), "{a}");
    }
    assert_eq!(
        attributions.len(),
        segs.len(),
        "no attribution for anything else: {attributions:#?}"
    );
    let rst_from_invalid = out.summary()["counters"]["rst_from_invalid"]
        .as_u64()
        .unwrap();
    assert_eq!(
        rst_from_invalid,
        segs.len() as u64,
        "the kernel matched exactly these resets"
    );
}

#[test]
fn ten_out_of_window_replies_in_a_row_are_ten_attributions() {
    if !need_root("ten_out_of_window_replies_in_a_row_are_ten_attributions") {
        return;
    }
    // An IPv4-only node: IPv6 link-local chatter goes through the netfilter hooks without
    // conntrack, and must cost nothing and count as nothing.
    let t = Topology::ipv4_only();
    let chatter = t.ipv6_chatter();
    // The kernel's figures of each program (restored at the end of the test).
    let _stats = GlobalSysctl::set("kernel.bpf_stats_enabled", "1");
    let ct = CtTrace::start(Some(&t.node), &[]);
    let segs = out_of_window_replies(&t, 10);
    drop(chatter);
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_each_attributed(&out, &segs);
    assert_program_figures(&out);
    let i = out.reconciled_invalid();
    assert_eq!(i["lost"], 0, "{i}");
    // Each reply and each client RST ("invalid new" at the node) is INVALID, nothing else.
    assert_eq!(i["counted"], 20, "{i}");
    // The netfilter program sees the chatter (and counts it as untracked); the kretprobe and the
    // fexit program never do, since conntrack never runs for it.
    let untracked = out.summary()["counters"]["untracked"].as_u64().unwrap();
    if out.verdict_source() == Some("netfilter") {
        assert!(untracked > 0, "the chatter went by: {}", out.summary());
    } else {
        assert_eq!(untracked, 0, "{}", out.summary());
    }
    // By default only the resets with a conntrack cause are shown.
    for r in out.of_kind("rst_sent") {
        assert_eq!(r["caused_by_invalid"], true, "{r}");
    }
}

#[test]
fn ten_in_a_row_beside_bulk_traffic_and_ipv6_chatter_are_ten_attributions() {
    if !need_root("ten_in_a_row_beside_bulk_traffic_and_ipv6_chatter_are_ten_attributions") {
        return;
    }
    let t = Topology::ipv4_only();
    let chatter = t.ipv6_chatter();
    let ct = CtTrace::start(Some(&t.node), &[]);
    let (server, client) = t.bulk(30);
    // iperf3's control connection and its two streams.
    poll::connected(&t.client, 5201, 3);
    let segs = out_of_window_replies(&t, 10);
    drop((client, server, chatter));
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_each_attributed(&out, &segs);
    out.reconciled_invalid();
    assert_programs_uncounted(&out);
}

#[test]
fn a_flood_is_counted_exactly_and_reconciles_within_bounded_memory() {
    if !need_root("a_flood_is_counted_exactly_and_reconciles_within_bounded_memory") {
        return;
    }
    let t = Topology::ipv4_only();
    let before = t.node.kernel_invalid();
    let mut ct = CtTrace::start(Some(&t.node), &[]);
    // Under TCG a flood goes ~25 times slower: a smaller one proves the same.
    let count = if in_vm() { 20_000 } else { 100_000 };
    let sent = t.flood(count, None);
    // Its peak memory once it has read the flood: the flood through conntrack, and its
    // output no longer growing.
    ct.settle();
    let peak = ct.peak_rss_kib();
    let out = ct.stop();
    let kernel = t.node.kernel_invalid() - before;
    assert!(out.status.success(), "{}", out.stderr);
    eprintln!("{}\n{}", sent.trim(), out.summary());
    let i = out.reconciled_invalid();
    // Equal to the kernel's count, measured here around the whole run. The one difference
    // allowed is a run of the verdict kretprobe (or fexit program) the kernel skipped (a BPF program was already
    // running on that CPU: a flood's softirq can interrupt one), which the kernel counts
    // (5.12+) and the summary says on stderr; under TCG the 7.2 job saw 6 of 20,000.
    let counted = i["counted"].as_u64().unwrap();
    let missed = i["missed_runs"].as_u64().unwrap();
    if missed == 0 || counted == kernel {
        assert_eq!(counted, kernel, "{i}");
    } else {
        assert!(counted < kernel && kernel - counted <= missed, "{i}");
        assert!(
            out.stderr
                .contains(&format!("the kernel skipped {missed} runs of")),
            "a difference is explained on stderr: {}",
            out.stderr
        );
    }
    assert!(kernel >= count, "every flood segment is INVALID: {kernel}");
    // The default budget (20000/s) shows the first events of the flood and suppresses the rest,
    // counted in the kernel.
    assert!(i["shown"].as_u64().unwrap() > 0, "{i}");
    assert_eq!(
        out.of_kind("invalid").len() as u64,
        i["shown"].as_u64().unwrap()
    );
    assert!(
        !out.of_kind("suppressed").is_empty() || i["suppressed"] == 0,
        "suppression is announced in the stream"
    );
    assert!(peak < MAX_RSS_KIB, "peak RSS {peak} KiB");
}

#[test]
fn an_out_of_window_reply_during_a_flood_is_attributed() {
    if !need_root("an_out_of_window_reply_during_a_flood_is_attributed") {
        return;
    }
    let t = Topology::ipv4_only();
    // A budget the flood exceeds also under TCG, so that the replies' verdicts compete with it.
    let mut ct = CtTrace::start(Some(&t.node), &["--event-budget", "1000"]);
    // A flood of INVALID segments, bounded in count, while three replies are crafted.
    // Under TCG (one vCPU) a faster flood starves the replies' own processes for minutes.
    let flood = if in_vm() {
        t.flood_in_background(100_000, Some(2_000))
    } else {
        t.flood_in_background(1_000_000, Some(100_000))
    };
    // The replies are crafted once the flood arrives (conntrack counts it).
    let before = t.node.kernel_invalid();
    assert!(
        poll::until(poll::patience(), poll::EVERY, || t.node.kernel_invalid()
            > before),
        "the flood never reached the node"
    );
    let segs = out_of_window_replies(&t, 3);
    drop(flood);
    let peak = ct.peak_rss_kib();
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    eprintln!("{}", out.summary());
    assert_each_attributed(&out, &segs);
    let i = out.reconciled_invalid();
    assert!(
        i["suppressed"].as_u64().unwrap() > 0,
        "the flood went past the budget: {i}"
    );
    assert!(peak < MAX_RSS_KIB, "peak RSS {peak} KiB");
}

#[test]
fn filters_count_what_they_hide() {
    if !need_root("filters_count_what_they_hide") {
        return;
    }
    let t = Topology::ipv4_only();
    // Only port 9 events: the crafted reply (port 8080) is INVALID but filtered out, and so is
    // its reset; a connection to a closed port 9 is a reset without a conntrack cause, shown
    // because of --resets all.
    let ct = CtTrace::start(
        Some(&t.node),
        &["--resets", "all", "--port", "9", "--host", "10.77.0.0/16"],
    );
    let segs = out_of_window_replies(&t, 1);
    t.client.exec(&format!(
        "{} -c \"import socket\ns=socket.socket()\ns.settimeout(3)\ntry:\n  s.connect(('{SERVER}',9))\nexcept ConnectionRefusedError:\n  pass\"",
        python()
    ));
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.of_kind("attribution").is_empty(), "{:#?}", out.events);
    assert!(out.of_kind("invalid").is_empty(), "{:#?}", out.events);
    let shown = out.of_kind("rst_sent");
    assert!(!shown.is_empty(), "{:#?}", out.events);
    for r in &shown {
        assert!(r["sport"] == 9 || r["dport"] == 9, "{r}");
    }
    let i = out.reconciled_invalid();
    assert!(i["filtered"].as_u64().unwrap() >= 1, "{i}");
    let filtered_resets = out.summary()["filtered"]["reset"].as_u64().unwrap();
    assert!(
        filtered_resets >= 1,
        "the crafted reply's reset: {}",
        out.summary()
    );
    assert_eq!(
        out.summary()["counters"]["rst_from_invalid"],
        1,
        "still matched in the kernel: {segs:?}"
    );
}

/// Ids of ct-trace's programs loaded in the kernel now (bpftool's JSON list).
fn loaded_programs() -> HashSet<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "list"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ctt_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Ids of the programs a process holds, directly or through its links (`prog_id:` in the
/// fdinfo of its bpf file descriptors).
fn programs_held_by(pid: &str) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// ct-trace programs no process holds: left behind. Waits a little for the kernel to free
/// the programs of processes that just exited.
fn orphaned_programs() -> HashSet<u64> {
    let mut orphans = HashSet::new();
    for _ in 0..30 {
        let held: HashSet<u64> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .flat_map(|pid| programs_held_by(&pid))
            .collect();
        orphans = &loaded_programs() - &held;
        if orphans.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    orphans
}

#[test]
fn two_instances_both_work_and_sigkill_leaves_nothing_attached() {
    if !need_root("two_instances_both_work_and_sigkill_leaves_nothing_attached") {
        return;
    }
    let t = Topology::ipv4_only();
    let first = CtTrace::start(Some(&t.node), &[]);
    // The second one's netfilter program takes the next free priority.
    let second = CtTrace::start(Some(&t.node), &[]);
    let segs = out_of_window_replies(&t, 2);
    let (a, b) = (first.stop(), second.stop());
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", out.stderr);
        assert_each_attributed(out, &segs);
        assert_eq!(out.reconciled_invalid()["counted"], 4);
    }
    // SIGKILL: no chance to clean up; the kernel must drop every program and link with the
    // process's file descriptors.
    let victim = CtTrace::start(Some(&t.node), &[]);
    let held = programs_held_by(&victim.pid().to_string());
    assert!(
        held.len() >= 3,
        "rst_sent, rst_recv, a verdict program: {held:?}"
    );
    // SAFETY: killing the child this test started.
    unsafe { libc::kill(victim.pid() as i32, libc::SIGKILL) };
    drop(victim);
    let mut left = HashSet::new();
    for _ in 0..50 {
        left = &loaded_programs() & &held;
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        left.is_empty(),
        "programs left loaded after SIGKILL: {left:?}"
    );
}

#[test]
fn a_ready_file_that_cannot_be_written_is_one_line_and_nothing_stays_loaded() {
    if !need_root("a_ready_file_that_cannot_be_written_is_one_line_and_nothing_stays_loaded") {
        return;
    }
    let out = std::process::Command::new(bin())
        .args(["--ready-file", "/nonexistent/dir/ready", "-d", "1"])
        .output()
        .expect("run ct-trace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // One line, before anything is attached (no "attached ..." lines).
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ct-trace: --ready-file: opening the directory of /nonexistent/dir/ready"),
        "{err}"
    );
    let orphans = orphaned_programs();
    assert!(
        orphans.is_empty(),
        "programs left loaded after an error: {orphans:?}"
    );
}

#[test]
fn deleting_the_watched_namespace_ends_the_run_with_the_summary() {
    if !need_root("deleting_the_watched_namespace_ends_the_run_with_the_summary") {
        return;
    }
    let t = Topology::ipv4_only();
    let ct = CtTrace::start(Some(&t.node), &[]);
    let segs = out_of_window_replies(&t, 1);
    integration_tests::sh(&format!("ip netns del {}", t.node.name));
    let out = ct.wait_exit(Duration::from_secs(10));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("was deleted: stopping"),
        "{}",
        out.stderr
    );
    assert_each_attributed(&out, &segs);
    out.reconciled_invalid();
}

/// What each program costs, as the kernel measures it, with `kernel.bpf_stats_enabled=1`: every
/// attached program once in the summary's `programs`, the verdict program with a run for at
/// least every INVALID packet and a time; stderr says it (and the line goes to the CI log: this
/// kernel's figures).
fn assert_program_figures(out: &Output) {
    let p = programs(out);
    let names: HashSet<String> = p
        .iter()
        .map(|p| p["program"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, attached(out), "{p:?}");
    assert_eq!(names.len(), p.len(), "each program once: {p:?}");
    let invalid = out.summary()["invalid"]["counted"].as_u64().unwrap();
    let verdict = match out.verdict_source() {
        Some("netfilter") => "ctt_nf_verdict",
        Some("fexit") => "ctt_ct_fexit",
        _ => "ctt_ct_in_ret",
    };
    let v = p.iter().find(|p| p["program"] == verdict).expect(verdict);
    assert!(
        v["runs"].as_u64().unwrap() >= invalid && v["run_ns"].as_u64().unwrap() > 0,
        "{v} after {invalid} INVALID packets"
    );
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("ct-trace: BPF programs (the kernel's own figures): "))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    eprintln!("{line}");
}

/// With the kernel's statistics off (as they are unless someone turned them on), runs and time
/// are `null`, not 0, and stderr says how to count them.
fn assert_programs_uncounted(out: &Output) {
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap();
    if stats.trim() != "0" {
        return;
    }
    let p = programs(out);
    assert_eq!(p.len(), attached(out).len(), "{p:?}");
    for p in p {
        assert!(p["runs"].is_null() && p["run_ns"].is_null(), "{p}");
    }
    assert!(
        out.stderr
            .contains("`sysctl kernel.bpf_stats_enabled=1` counts them"),
        "{}",
        out.stderr
    );
}

/// The programs ct-trace said it attached.
fn attached(out: &Output) -> HashSet<String> {
    out.stderr
        .lines()
        .filter_map(|l| l.strip_prefix("ct-trace: attached "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

fn programs(out: &Output) -> Vec<Value> {
    out.summary()["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("programs: {}", out.summary()))
        .clone()
}
