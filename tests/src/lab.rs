//! Driving `ct-trace lab` from the tests: the real binary, its JSON verdict, and the checks
//! that nothing of a lab outlives it.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::bin;

/// Runs `ct-trace lab ARGS`; returns its pid (its namespaces' names carry it) and output.
pub fn lab(args: &[&str]) -> (u32, Output) {
    let child = Command::new(bin())
        .arg("lab")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ct-trace lab");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (pid, out)
}

/// `lab run ... -o json`: ct-trace's events and the verdict (the last line).
pub fn run(scenario: &str, fix: &str) -> (Vec<Value>, Value) {
    run_with(scenario, fix, &[])
}

/// `run` with more arguments.
pub fn run_with(scenario: &str, fix: &str, extra: &[&str]) -> (Vec<Value>, Value) {
    let mut args = vec!["run", "--scenario", scenario, "--fix", fix, "-o", "json"];
    args.extend_from_slice(extra);
    let (pid, out) = lab(&args);
    verdict(pid, &out, scenario, fix)
}

/// What `lab run ... -o json` (pid `pid`) printed: ct-trace's events and the verdict, checked to
/// be the run's, and that none of its namespaces is left.
pub fn verdict(pid: u32, out: &Output, scenario: &str, fix: &str) -> (Vec<Value>, Value) {
    assert!(out.status.success(), "lab run failed: {out:?}");
    let mut lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let verdict = lines.pop().expect("a verdict");
    assert_eq!(verdict["kind"], "lab_verdict", "{verdict}");
    assert_eq!(verdict["scenario"], scenario, "{verdict}");
    assert_eq!(verdict["fix"], fix, "{verdict}");
    assert_eq!(
        lines.last().map(|s| &s["kind"]),
        Some(&Value::from("summary")),
        "ct-trace's own summary precedes the verdict"
    );
    assert_no_lab_namespace(pid);
    (lines, verdict)
}

/// `v[k]` as a number (panics naming it when it is not one).
pub fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// Whether the lab `pid` has started its ct-trace: a child of it named `ct-trace` (`ip netns
/// exec` execs it), from `/proc/*/stat`.
pub fn tracer_started(pid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .any(|stat| {
            // `PID (COMM) STATE PPID ...`: the name in parentheses may hold spaces.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let ppid = stat[close + 1..].split_whitespace().nth(1);
            &stat[open + 1..close] == "ct-trace" && ppid == Some(&pid.to_string())
        })
}

/// The namespaces of the lab with this pid.
pub fn lab_namespaces(pid: u32) -> Vec<String> {
    let prefix = format!("ctt-lab-{pid}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Fails when a namespace of the lab with this pid is left.
pub fn assert_no_lab_namespace(pid: u32) {
    let left = lab_namespaces(pid);
    assert!(left.is_empty(), "lab namespaces left behind: {left:?}");
}

/// What a lab must not change on the host: its `tcp_be_liberal` and its FORWARD chain.
pub fn host_state() -> (String, String) {
    let liberal = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
        .unwrap_or_default();
    let forward = Command::new("iptables")
        .args(["-w", "-S", "FORWARD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (liberal, forward)
}
