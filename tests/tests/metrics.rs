//! `--metrics`: a real Prometheus (Debian's package, started by the test on the node
//! namespace's loopback) scrapes ct-trace while ten out-of-window replies go through the
//! Service's DNAT beside bulk traffic and IPv6 chatter. Prometheus' HTTP API then says what a
//! dashboard would: the INVALID counter's increase equals the kernel's `invalid` delta, and the
//! attributed-reset counter moved by ten for that Service. `promtool check metrics` accepts a
//! scrape. A port that is taken is one clear line and nothing attached.
//!
//! Everything listens on the loopback of a namespace the test created; every wait is bounded.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use integration_tests::{
    in_vm, kernel_at_least, need_root, poll, python, scripts, Background, CtTrace, Netns, Topology,
    SERVICE,
};
use serde_json::Value;

const CT_TRACE: &str = "127.0.0.1:19469";
const PROMETHEUS: &str = "127.0.0.1:19090";

/// A tool the test needs; under `cargo xtask test` (CT_TRACE_BIN set) a missing one fails the
/// test, since `cargo xtask setup` installs it.
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` is not installed: run `cargo xtask setup` (Debian package prometheus)");
}

/// A Prometheus server in `ns`, scraping ct-trace every second; its data is removed on drop.
struct Prometheus {
    _proc: Background,
    dir: PathBuf,
}

impl Prometheus {
    fn start(ns: &Netns) -> Self {
        let dir = std::env::temp_dir().join(format!("ct-trace-prom-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ct-trace\n    static_configs:\n      - targets: ['{CT_TRACE}']\n"
            ),
        )
        .unwrap();
        let proc = Background::start(
            ns,
            &format!(
                "{} --config.file={} --storage.tsdb.path={} --web.listen-address={PROMETHEUS} --log.level=warn",
                tool("prometheus").display(),
                config.display(),
                dir.join("data").display()
            ),
        );
        Self { _proc: proc, dir }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn prom(ns: &Netns, args: &str) -> String {
    ns.exec(&format!(
        "{} {} {args}",
        python(),
        scripts().join("prom.py").display()
    ))
}

/// The value of a PromQL expression with one result (`None`: no result yet, or Prometheus is
/// not up yet).
fn query(ns: &Netns, promql: &str) -> Option<f64> {
    let escaped = promql.replace('\'', "'\\''");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, python()])
        .arg(scripts().join("prom.py"))
        .args(["query", &format!("http://{PROMETHEUS}")])
        .arg(promql)
        .output()
        .expect("prom.py");
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    assert_eq!(v["status"], "success", "{promql}: {v}");
    let result = v["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{promql} ({escaped}): {v}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Waits (bounded) until `promql` has a value for which `ok` holds; returns the last value.
fn wait_for(ns: &Netns, promql: &str, ok: impl Fn(f64) -> bool, max: Duration) -> Option<f64> {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < max {
        last = query(ns, promql);
        if last.is_some_and(&ok) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    last
}

#[test]
fn prometheus_sees_the_kernels_invalid_count_and_the_attributed_resets_by_service() {
    if !need_root("prometheus_sees_the_kernels_invalid_count_and_the_attributed_resets_by_service")
    {
        return;
    }
    let limit = Duration::from_secs(if in_vm() { 120 } else { 30 });
    let t = Topology::ipv4_only();
    let chatter = t.ipv6_chatter();
    let ct = CtTrace::start(Some(&t.node), &["--metrics", CT_TRACE]);
    let prometheus = Prometheus::start(&t.node);
    // A first scrape of ct-trace, before the traffic.
    let up = wait_for(&t.node, "up{job=\"ct-trace\"}", |v| v == 1.0, limit);
    assert_eq!(up, Some(1.0), "Prometheus never scraped ct-trace");
    let invalid = "sum(ct_trace_invalid_packets_total)";
    let before = wait_for(&t.node, invalid, |_| true, limit).expect("a first INVALID sample");
    let kernel_before = t.node.kernel_invalid();

    let (server, client) = t.bulk(30);
    // iperf3's control connection and its two streams.
    poll::connected(&t.client, 5201, 3);
    t.segments("seq_over", 10, false);
    drop((client, server));
    let kernel_delta = t.node.kernel_invalid() - kernel_before;
    assert!(kernel_delta >= 10, "the kernel counted {kernel_delta}");

    // Prometheus' view once a scrape after the traffic is in.
    let after = wait_for(
        &t.node,
        invalid,
        |v| v - before >= kernel_delta as f64,
        limit,
    );
    // One more scrape (its time after the one that saw the traffic): nothing more may come.
    let scraped = "timestamp(up{job=\"ct-trace\"})";
    let seen = query(&t.node, scraped).unwrap_or_default();
    wait_for(&t.node, scraped, |ts| ts > seen, limit);
    let settled = query(&t.node, invalid);
    assert_eq!(
        settled.map(|v| v - before),
        Some(kernel_delta as f64),
        "increase of {invalid} in Prometheus (first {after:?}) against the kernel's invalid delta"
    );
    eprintln!(
        "prometheus: {invalid} went {before} -> {settled:?}; the kernel's invalid delta {kernel_delta}"
    );
    let attributed = query(
        &t.node,
        &format!(
            "sum by (service, cause) (ct_trace_attributed_resets_total{{service=\"{SERVICE}:80\", cause=\"invalid_packet\"}})"
        ),
    );
    eprintln!(
        "prometheus: attributed resets for {SERVICE}:80, cause invalid_packet: {attributed:?}"
    );
    assert_eq!(attributed, Some(10.0), "attributed resets for {SERVICE}:80");
    let sent = query(&t.node, "sum(ct_trace_resets_total{direction=\"sent\"})");
    assert!(sent.is_some_and(|v| v >= 10.0), "resets sent: {sent:?}");
    // The kernel says why it sent a reset from 6.10 on: the clients had no socket for the
    // backend's address.
    if kernel_at_least(6, 10) {
        let no_socket = query(
            &t.node,
            "ct_trace_resets_total{direction=\"sent\", reason=\"no_socket\"}",
        );
        assert!(no_socket.is_some_and(|v| v >= 10.0), "{no_socket:?}");
    }
    let passed = query(
        &t.node,
        "sum(ct_trace_invalid_packets_total{fate=\"passed\"})",
    );
    assert!(
        passed.is_some_and(|v| v >= 10.0),
        "the replies went on un-NATed: {passed:?}"
    );

    // The classic text format is clean for promtool.
    let scrape = prom(&t.node, &format!("get http://{CT_TRACE}/metrics"));
    let check = std::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(scrape.as_bytes())?;
            c.wait_with_output()
        })
        .expect("promtool");
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "promtool check metrics: {}{}\n{scrape}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // OpenMetrics, as Prometheus asks for it.
    let om = prom(
        &t.node,
        &format!("get http://{CT_TRACE}/metrics application/openmetrics-text"),
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("ct_trace_build_info{"), "{om}");
    // What each program costs: skipped runs always (this kernel counts them, 5.12+), runs and
    // time only while the kernel's statistics are on (ct-trace never turns them on).
    assert!(
        scrape.contains("ct_trace_bpf_program_missed_runs_total{program=\"ctt_nf_verdict\""),
        "{scrape}"
    );
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap();
    assert_eq!(
        scrape.contains("ct_trace_bpf_program_runs_total{"),
        stats.trim() != "0",
        "{scrape}"
    );
    for l in om.lines().filter(|l| {
        !l.starts_with('#')
            && (l.contains("invalid_packets")
                || l.contains("attributed")
                || l.contains("resets_total"))
    }) {
        eprintln!("scrape: {l}");
    }

    drop(prometheus);
    drop(chatter);
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    // The stream agrees with the metrics.
    assert_eq!(out.of_kind("attribution").len(), 10);
    let i = out.reconciled_invalid();
    assert_eq!(i["counted"].as_u64(), Some(kernel_delta), "{i}");
}

#[test]
fn a_metrics_port_that_is_taken_is_one_line_and_nothing_is_attached() {
    if !need_root("a_metrics_port_that_is_taken_is_one_line_and_nothing_is_attached") {
        return;
    }
    let ns = Netns::new("metrics");
    let holder = Background::start(
        &ns,
        &format!(
            "{} -c \"import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',19469))\ns.listen()\ntime.sleep(60)\"",
            python()
        ),
    );
    poll::listening(&ns, 19469);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(integration_tests::bin())
        .args(["--metrics", CT_TRACE, "-d", "5"])
        .output()
        .expect("ct-trace");
    drop(holder);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("cannot listen on 127.0.0.1:19469"), "{err}");
    assert!(!err.contains("attached"), "{err}");

    let bad = std::process::Command::new(integration_tests::bin())
        .args(["--metrics", "localhost"])
        .output()
        .expect("ct-trace");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("is not ADDR:PORT"), "{err}");
}
