//! `ct-trace top`: who fills the table. A namespace's table is filled with known flows through
//! ctnetlink (`conntrack -I`, as the kernel would have created them): 30 ESTABLISHED to a
//! Service that kube-proxy's rules name, 20 TIME_WAIT from one chatty client, 10 SYN_SENT to a
//! dead backend, 5 UDP; `top -o json --once` must give each group's exact count, the same as
//! `conntrack -L` grouped the same way, and count entries created during its interval as new.

use integration_tests::{
    bin, need_root,
    table::{load_rules, KUBE_PROXY_RULES},
    Background, Netns,
};
use serde_json::Value;
use top_flows::{conntrack_l, groups, insert, Flow, FLOWS};

mod top_flows;

fn top(ns: &Netns, args: &str) -> Value {
    let out = ns.exec(&format!("{} top -o json {args}", bin().display()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one snapshot: {out}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("top's JSON ({e}): {out}"))
}

/// A namespace with kube-proxy's rules for the first Service and the table filled with
/// `FLOWS`.
fn filled() -> Netns {
    let ns = Netns::new("top");
    load_rules(&ns, KUBE_PROXY_RULES);
    for f in FLOWS {
        insert(&ns, f, 0);
    }
    ns
}

#[test]
fn top_counts_every_group_exactly_as_conntrack_lists_them() {
    if !need_root("top_counts_every_group_exactly_as_conntrack_lists_them") {
        return;
    }
    let ns = filled();

    let s = top(&ns, "--once --interval 200ms");
    assert_eq!(s["kind"], "top");
    assert_eq!(s["entries"], 65, "{s}");
    assert!(s["max"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["counters_source"], "procfs");
    let want = [
        (
            "by_service",
            [
                "10.96.0.10:80/tcp",
                "10.96.0.11:80/tcp",
                "10.96.0.12:80/tcp",
                "10.96.0.53:53/udp",
            ],
        ),
        (
            "by_backend",
            [
                "10.77.2.2:8080/tcp",
                "10.77.3.3:8080/tcp",
                "10.77.9.9:8080/tcp",
                "10.77.4.4:53/udp",
            ],
        ),
        (
            "by_client",
            ["10.0.0.1", "10.0.0.99", "10.0.0.2", "10.0.0.3"],
        ),
        ("by_state", ["ESTABLISHED", "TIME_WAIT", "SYN_SENT", "udp"]),
    ];
    let listed = conntrack_l(&ns);
    for (i, (field, keys)) in want.iter().enumerate() {
        let rows = s[field].as_array().unwrap();
        // Heaviest first, each with its flow's count, none new (all were there at the start).
        let got: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|g| {
                (
                    g["key"].as_str().unwrap(),
                    g["entries"].as_u64().unwrap(),
                    g["new"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(&str, u64, u64)> = keys
            .iter()
            .zip(FLOWS)
            .map(|(k, f)| (*k, u64::from(f.n), 0))
            .collect();
        assert_eq!(got, expected, "{field}");
        assert_eq!(groups(&s[field]), listed[i], "{field} against conntrack -L");
    }
    // The Service kube-proxy names, by its address and by its backend.
    assert_eq!(s["by_service"][0]["name"], "shop/web:http");
    assert_eq!(s["by_backend"][0]["name"], "shop/web:http");
    assert!(s["by_service"][1].get("name").is_none());

    // `--limit 2`: the two heaviest, the rest summed as `other`.
    let s = top(&ns, "--once --interval 200ms --limit 2");
    let rows: Vec<(String, u64)> = groups(&s["by_state"]).into_iter().collect();
    let mut want = vec![
        ("ESTABLISHED".to_string(), 30),
        ("TIME_WAIT".into(), 20),
        ("other".into(), 15),
    ];
    want.sort();
    assert_eq!(rows, want);
    assert_eq!(s["groups"]["state"], 4);

    // Entries created during the interval are new: 7 more TIME_WAIT from the chatty client.
    let bg = Background::start(
        &ns,
        &format!("{} top -o json --once --interval 4", bin().display()),
    );
    // A fixed time on purpose: top takes its first dump as it starts and prints 4 s later,
    // and nothing it shows before then says the dump is done; 1.5 s is well after the dump and
    // well before the end of the interval.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    insert(&ns, Flow { n: 7, ..FLOWS[1] }, 100);
    let out = bg.wait(std::time::Duration::from_secs(30));
    let s: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(s["entries"], 72, "{s}");
    let client = &s["by_client"][0];
    assert_eq!(
        (
            client["key"].as_str(),
            client["entries"].as_u64(),
            client["new"].as_u64()
        ),
        (Some("10.0.0.1"), Some(30), Some(0))
    );
    let chatty = &s["by_client"][1];
    assert_eq!(
        (
            chatty["key"].as_str(),
            chatty["entries"].as_u64(),
            chatty["new"].as_u64()
        ),
        (Some("10.0.0.99"), Some(27), Some(7))
    );
    let rate = s["per_s"]["new"].as_f64().unwrap();
    assert!(
        (1.0..=2.5).contains(&rate),
        "7 new entries over ~4 s: {rate}"
    );
}

#[test]
fn top_rejects_bad_flags_with_one_line() {
    for args in [
        "--limit 0",
        "--interval x",
        "--once --count 2",
        "--cap 0",
        "--cpu-budget 0",
        "--cpu-budget 101",
        "--cpu-budget 99999999999",
    ] {
        let out = std::process::Command::new(bin())
            .arg("top")
            .args(args.split(' '))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args}: {err}");
    }
}

/// `top --attach MODE` refuses a mode the kernel lacks as `ct-trace --attach MODE` does: the
/// same one line and exit code, no snapshot; and runs when the mode attaches. The tracer itself
/// is the oracle of which modes this kernel has (here netfilter only: both branches run; each
/// VM kernel has its own mix).
#[test]
fn top_refuses_a_named_attach_mode_the_kernel_lacks_as_the_tracer_does() {
    if !need_root("top_refuses_a_named_attach_mode_the_kernel_lacks_as_the_tracer_does") {
        return;
    }
    let ns = Netns::new("topmode");
    let run = |args: &str| {
        let cmd = format!("ip netns exec {} {} {args}", ns.name, bin().display());
        let out = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (mut refused, mut ran) = (0, 0);
    for mode in ["netfilter", "fexit", "kprobe"] {
        let (code, _, err) = run(&format!("--attach {mode} --duration 200ms"));
        let (tcode, tout, terr) = run(&format!(
            "top -o json --once --interval 200ms --attach {mode}"
        ));
        if code == Some(2) {
            refused += 1;
            let line = err.lines().last().unwrap_or_default();
            assert!(line.contains(&format!("--attach {mode}")), "{mode}: {err}");
            assert_eq!(tcode, Some(2), "{mode}: top: {tout}{terr}");
            assert_eq!(terr.trim_end(), line, "{mode}: top said more than one line");
            assert!(tout.is_empty(), "{mode}: top showed a snapshot: {tout}");
        } else {
            ran += 1;
            assert_eq!(code, Some(0), "{mode}: {err}");
            assert_eq!(tcode, Some(0), "{mode}: top: {terr}");
            let v: Value =
                serde_json::from_str(tout.trim()).unwrap_or_else(|e| panic!("{e}: {tout}"));
            assert_eq!(v["resets"]["state"], "tracing", "{mode}: {v}");
        }
    }
    eprintln!("attach modes this kernel lacks: {refused}, has: {ran}");
    assert!(ran >= 1, "no attach mode worked at all");
}

/// A tmux server of the test's own (its own socket), killed on drop, also when the test fails.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .expect("tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into()
    }

    /// Waits (bounded) until the screen shows what `f` wants; returns it.
    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let t0 = std::time::Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "the screen never showed {what}:\n{s}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The row of `key` on the screen, its cells.
fn row<'a>(screen: &'a str, key: &str) -> Vec<&'a str> {
    screen
        .lines()
        .find(|l| l.trim_start_matches('│').starts_with(key))
        .map(|l| {
            l.trim_matches(|c: char| c == '│' || c.is_whitespace())
                .split_whitespace()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_terminal_view_shows_who_fills_the_table_and_answers_its_keys() {
    if !need_root("the_terminal_view_shows_who_fills_the_table_and_answers_its_keys") {
        return;
    }
    let ns = filled();
    let tmux = Tmux(format!("ctt-top-{}", std::process::id()));
    let cmd = format!(
        "ip netns exec {} {} top --interval 1",
        ns.name,
        bin().display()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "140",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // By Service first: the named Service on top with its 30 entries, and (RST) no reset
    // caused since top started.
    let s = tmux.wait_for("the Services", |s| s.contains("10.96.0.10:80/tcp"));
    assert!(s.contains("65 / "), "{s}");
    assert!(s.contains("resets caused 0.0/s (0 since start)"), "{s}");
    assert!(
        s.contains("by service, sorted by entries (4 groups)"),
        "{s}"
    );
    assert_eq!(
        row(&s, "10.96.0.10:80/tcp"),
        ["10.96.0.10:80/tcp", "30", "0", "0", "shop/web:http"],
        "{s}"
    );
    assert_eq!(
        row(&s, "10.96.0.53:53/udp"),
        ["10.96.0.53:53/udp", "5", "0", "0"],
        "{s}"
    );

    // `c`: by client; the chatty client's 20 TIME_WAIT entries.
    tmux.run(&["send-keys", "-t", "top", "c"]);
    let s = tmux.wait_for("the clients", |s| s.contains("by client"));
    assert_eq!(row(&s, "10.0.0.99"), ["10.0.0.99", "20", "0", "0"], "{s}");
    // `t`: by state, `k`: sorted by key.
    tmux.run(&["send-keys", "-t", "top", "t", "k"]);
    let s = tmux.wait_for("the states by key", |s| {
        s.contains("by state, sorted by key")
    });
    let order: Vec<usize> = ["ESTABLISHED", "SYN_SENT", "TIME_WAIT", "udp"]
        .iter()
        .map(|k| {
            s.find(&format!("│{k} "))
                .unwrap_or_else(|| panic!("{k}:\n{s}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{s}");
    // States have no caused resets of their own.
    assert_eq!(row(&s, "SYN_SENT"), ["SYN_SENT", "10", "0", "-"], "{s}");

    // `q` quits and gives the terminal back.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let t0 = std::time::Instant::now();
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "still running after q"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Started with SIGINT ignored (what a non-interactive shell's background job inherits), `top`
/// still ends on SIGINT, and on SIGTERM, at once and with success.
#[test]
fn top_ends_on_sigint_and_sigterm_even_when_sigint_was_ignored() {
    if !need_root("top_ends_on_sigint_and_sigterm_even_when_sigint_was_ignored") {
        return;
    }
    let ns = filled();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "sh", "-c"])
            .arg(r#"trap "" INT; exec "$0" top -o json --interval 1"#)
            .arg(bin())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Its first snapshot: it is running its loop.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(line.starts_with(r#"{"kind":"top""#), "{line}");
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, sig) };
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > std::time::Duration::from_secs(5) {
                let _ = child.kill();
                panic!("top still running 5 s after signal {sig}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success(), "signal {sig}: {status}");
    }
}
