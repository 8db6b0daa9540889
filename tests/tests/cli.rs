//! The command line as a user meets it: bad input gets one clear line and a non-zero exit.

use std::process::Command;

use integration_tests::{bin, need_root};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run ct-trace");
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
