//! The command line as a user meets it: bad input gets one clear line and a non-zero exit.

use std::process::Command;

use integration_tests::{bin, image_bin, need_root};

fn run(args: &[&str]) -> (i32, String, String) {
    run_bin(&bin(), args)
}

fn run_bin(bin: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().expect("run ct-trace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_exits_zero_and_documents_the_flags() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--output",
        "--duration",
        "--count",
        "--ready-file",
        "--summary",
        "--verbose",
        "--quiet",
        "--event-budget",
        "--resets",
        "--host",
        "--port",
        "--netns",
        "--kind",
        "doctor",
    ] {
        assert!(out.contains(flag), "--help does not mention {flag}:\n{out}");
    }
}

/// Whether `--help` lists a subcommand (clap's "Commands:" lines: two spaces, the name).
fn lists_command(help: &str, name: &str) -> bool {
    help.lines().any(|l| {
        l.strip_prefix("  ")
            .and_then(|l| l.split_whitespace().next())
            == Some(name)
    })
}

/// The default build has `ct-trace lab`; the image's build (no `lab` feature) lists none, and
/// `ct-trace lab ...` there gets one line saying why, exit 2, whatever follows `lab`.
#[test]
fn lab_is_in_the_default_build_and_the_image_build_says_it_has_none() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(lists_command(&help, "lab"), "{help}");
    let (code, _, err) = run(&["lab", "--help"]);
    assert_eq!(code, 0, "{err}");

    let Some(image) = image_bin("lab_is_in_the_default_build_and_the_image_build_says_it_has_none")
    else {
        return;
    };
    let (code, help, _) = run_bin(&image, &["--help"]);
    assert_eq!(code, 0);
    assert!(lists_command(&help, "doctor"), "{help}");
    assert!(
        !lists_command(&help, "lab"),
        "the image's ct-trace lists lab:\n{help}"
    );
    for args in [
        &["lab"][..],
        &["lab", "--help"],
        &["lab", "run", "--scenario", "clean"],
        &["lab", "cleanup", "-o", "json"],
    ] {
        let (code, out, err) = run_bin(&image, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed on stdout: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("ct-trace: this build has no lab (built without the `lab` feature)"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn unknown_flags_and_bad_values_exit_2() {
    for args in [
        &["--bogus"][..],
        &["-o", "yaml"],
        &["--duration", "-3"],
        &["--duration", "soon"],
        &["-c", "x"],
        &["-c", "0"],
        &["--host", "10.0.0.0/40"],
        &["--port", "0"],
        &["--kind", "everything"],
        &["--resets", "some"],
        &["--metrics-top-services", "1001"],
        &["--metrics-top-services", "99999999999"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed on stdout: {out}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
    }
}

#[test]
fn without_privileges_one_line_names_what_is_missing() {
    if !need_root("without_privileges_one_line_names_what_is_missing") {
        return;
    }
    // Drop every capability the way an ordinary user would run it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bin())
        .args(["-d", "1"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ct-trace: missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN: run it as root"),
        "{err}"
    );
}

#[test]
fn a_network_namespace_that_does_not_exist_is_refused_in_one_line() {
    if !need_root("a_network_namespace_that_does_not_exist_is_refused_in_one_line") {
        return;
    }
    let (code, out, err) = run(&["--netns", "1", "-d", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ct-trace: --netns 1: no network namespace has this inode"),
        "{err}"
    );
}

/// Waits (bounded) for a file to exist.
fn wait_for(path: &std::path::Path, child: &mut std::process::Child) {
    let t0 = std::time::Instant::now();
    while !path.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("ct-trace exited before it was ready: {st:?}");
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "not ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The largest duration there is attaches and runs (no overflow, no panic), and SIGHUP (a
/// closed terminal) ends the run like Ctrl-C: exit 0, with the summary.
#[test]
fn a_huge_duration_runs_and_sighup_ends_the_run_with_its_summary() {
    if !need_root("a_huge_duration_runs_and_sighup_ends_the_run_with_its_summary") {
        return;
    }
    use std::io::Read as _;
    let ready = std::env::temp_dir().join(format!("ct-trace-cli-hup-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(bin())
        .args(["-o", "json", "-d", "18446744073709551615s", "--ready-file"])
        .arg(&ready)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&ready, &mut child);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let st = wait_exit(&mut child);
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(st.success(), "{st:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let last: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("a summary")).expect("JSON");
    assert_eq!(last["kind"], "summary", "{out}");
    assert!(err.contains("ct-trace: events:"), "{err}");
    let _ = std::fs::remove_file(&ready);
}

/// A reset whose line never reached stdout (the reader went away) is not counted as shown:
/// ct-trace stops, and its summary on stderr says no event was printed.
#[test]
fn events_that_never_reached_a_closed_stdout_are_not_counted_as_printed() {
    if !need_root("events_that_never_reached_a_closed_stdout_are_not_counted_as_printed") {
        return;
    }
    use std::{io::Read as _, os::fd::FromRawFd as _};
    let t = integration_tests::Topology::ipv4_only();
    let ready = std::env::temp_dir().join(format!("ct-trace-cli-epipe-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    // A pipe whose reading end is closed before ct-trace writes anything.
    let mut fds = [0; 2];
    // SAFETY: a valid array for pipe(2); each fd is owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is ours and closed once.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is ours; the File owns it from here.
    let write_end = unsafe { std::fs::File::from_raw_fd(fds[1]) };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &t.node.name])
        .arg(bin())
        .args(["--resets", "all", "-d", "60", "--ready-file"])
        .arg(&ready)
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&ready, &mut child);
    // A connection refused: a reset ct-trace tries to print.
    t.client.exec(&format!(
        "{} -c \"import socket\ntry:\n  socket.create_connection(('{}',9),3)\nexcept OSError:\n  pass\"",
        integration_tests::python(),
        integration_tests::SERVER
    ));
    let st = wait_exit(&mut child);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        st.success(),
        "a closed stdout ends ct-trace quietly: {st:?} {err}"
    );
    let events = err
        .lines()
        .find(|l| l.starts_with("ct-trace: events:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(events.starts_with("ct-trace: events: none;"), "{err}");
    let _ = std::fs::remove_file(&ready);
}
