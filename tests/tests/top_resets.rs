//! `ct-trace top` shows the resets broken flows cause beside the table: its tracer (ct-trace
//! run as top's child in the same namespace) attributes each one, and top counts them by
//! Service, backend and client. Ten out-of-window replies in a row, beside a port scan and IPv6
//! link-local chatter, must be ten caused resets, all on the Service's group, none from the scan;
//! the tracer must not outlive top.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use integration_tests::{
    bin, in_vm, need_root, python, scripts, Background, Topology, CLIENT, SERVER,
};
use serde_json::Value;

/// `top -o json --interval 1` in the node namespace, its snapshots sent on a channel.
struct Top {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Top {
    fn start(t: &Topology, extra: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &t.node.name])
            .arg(bin())
            .args(["top", "-o", "json", "--interval", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn top");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The first snapshot for which `f` holds, within `max`.
    fn until(&self, max: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        let mut last = Value::Null;
        while t0.elapsed() < max {
            match self.lines.recv_timeout(Duration::from_millis(500)) {
                Ok(v) if f(&v) => return v,
                Ok(v) => last = v,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("top ended: {e}; last snapshot {last:#}"),
            }
        }
        panic!("no such snapshot within {max:?}; last {last:#}")
    }

    /// The pids of top's children (its tracer).
    fn children(&self) -> Vec<u32> {
        let task = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&task)
            .map(|d| {
                d.flatten()
                    .map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default())
                    .flat_map(|s| {
                        s.split_whitespace()
                            .filter_map(|p| p.parse().ok())
                            .collect::<Vec<u32>>()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGTERM, then waits (at most 10 s) for a successful exit.
    fn stop(mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "top: {st}");
                return;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!("top still running 10 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn group<'a>(rows: &'a Value, key: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|g| g["key"] == key)
}

#[test]
fn top_counts_ten_caused_resets_by_service_backend_and_client_and_none_from_a_scan() {
    if !need_root("top_counts_ten_caused_resets_by_service_backend_and_client_and_none_from_a_scan")
    {
        return;
    }
    let t = Topology::ipv4_only();
    let limit = Duration::from_secs(if in_vm() { 600 } else { 60 });
    let top = Top::start(&t, &[]);
    // The tracer attaches before the first snapshot.
    let first = top.until(limit, |_| true);
    assert_eq!(first["resets"]["state"], "tracing", "{first:#}");
    assert_eq!(first["resets"]["caused"], 0, "{first:#}");
    let tracers = top.children();
    assert_eq!(tracers.len(), 1, "one tracer child: {tracers:?}");

    let _chatter = t.ipv6_chatter();
    // A scan of the pod's closed ports from the client: INVALID segments and resets, none of
    // them a flow conntrack was tracking.
    let scan = Background::start(
        &t.client,
        &format!(
            "{} {} {SERVER} 8081 n=10",
            python(),
            scripts().join("scan.py").display()
        ),
    );
    let segs = t.segments("seq_over", 10, false);
    let sent: std::collections::HashMap<String, u64> =
        serde_json::from_str(scan.wait(limit).trim()).expect("scan.py's JSON line");
    assert_eq!(sent.values().sum::<u64>(), 10 * 5, "{sent:?}");
    let reset = segs.iter().filter(|s| s["server_reset"] == true).count();
    assert_eq!(
        reset, 10,
        "every out-of-window reply reset its connection: {segs:?}"
    );

    let s = top.until(limit, |v| v["resets"]["caused"].as_u64() >= Some(10));
    // A second later nothing more has come (the scan's resets are strays).
    let s2 = top.until(limit, |v| v["interval_s"].as_f64() > Some(0.0) && v != &s);
    let r = &s2["resets"];
    assert_eq!(r["state"], "tracing", "{s2:#}");
    assert_eq!(r["caused"], 10, "{s2:#}");
    assert_eq!(r["invalid_packet"], 10, "{s2:#}");
    assert_eq!(r["entry_lost"], 0, "{s2:#}");
    assert_eq!(r["unseen"], 0, "{s2:#}");
    assert_eq!(r["by_service"].as_array().map(Vec::len), Some(1), "{r:#}");
    assert_eq!(
        group(&r["by_service"], "10.96.0.10:80/tcp").map(|g| &g["resets"]),
        Some(&Value::from(10)),
        "{r:#}"
    );
    assert_eq!(
        group(&r["by_backend"], &format!("{SERVER}:8080/tcp")).map(|g| &g["resets"]),
        Some(&Value::from(10)),
        "{r:#}"
    );
    assert_eq!(
        group(&r["by_client"], CLIENT).map(|g| &g["resets"]),
        Some(&Value::from(10)),
        "{r:#}"
    );
    top.stop();
    // The tracer ended with top (it detaches its programs as it goes).
    let t0 = Instant::now();
    while tracers.iter().any(|p| alive(*p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the tracer {tracers:?} outlived top"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn top_without_resets_starts_no_tracer() {
    if !need_root("top_without_resets_starts_no_tracer") {
        return;
    }
    let t = Topology::ipv4_only();
    let top = Top::start(&t, &["--no-resets"]);
    let s = top.until(Duration::from_secs(60), |_| true);
    assert!(s.get("resets").is_none(), "{s:#}");
    assert!(top.children().is_empty(), "no child with --no-resets");
    top.stop();
}
