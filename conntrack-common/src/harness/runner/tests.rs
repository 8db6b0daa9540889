use std::{format, string::ToString, vec::Vec};

use super::*;

/// A ready file in a new directory under the temporary directory (unit tests also run
/// unprivileged), and that directory, to remove at the end.
fn ready(tag: &str) -> (ReadyPath, PathBuf) {
    let d = std::env::temp_dir().join(format!("ctt-runner-{tag}-{}", std::process::id()));
    let _ = std::fs::create_dir(&d);
    (ReadyPath::new(d.join("child.ready")), d)
}

fn sh(script: &str, ready: &dyn Ready) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script, "sh"]).arg(ready.path());
    c
}

#[test]
fn ready_file_then_sigint() {
    let (ready, d) = ready("ready");
    let path = ready.path();
    // Ready, then prints on both pipes and ends on SIGINT only.
    let mut cmd = sh(
        r#"trap 'echo bye; exit 3' INT; echo starting >&2; touch "$1"; while :; do sleep 0.01; done"#,
        &ready,
    );
    let mut r = Runner::spawn(&mut cmd, ready).unwrap();
    r.wait_ready(Duration::from_secs(10), || false).unwrap();
    let f = r.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(f.status.code(), Some(3), "{f:?}");
    assert_eq!(f.stdout, "bye\n");
    assert_eq!(f.stderr, "starting\n");
    assert!(!path.exists(), "the ready file is removed");
    drop(r);
    let _ = std::fs::remove_dir(d);
}

#[test]
fn exit_before_ready_carries_stderr() {
    let (ready, d) = ready("early");
    let mut cmd = sh("echo 'no BTF here' >&2; exit 1", &ready);
    let mut r = Runner::spawn(&mut cmd, ready).unwrap();
    match r.wait_ready(Duration::from_secs(10), || false) {
        Err(e @ RunError::ExitedEarly { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no BTF here"), "{msg}");
            assert!(msg.contains("exit status: 1"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    drop(r);
    let _ = std::fs::remove_dir(d);
}

#[test]
fn ignoring_sigint_is_killed_after_the_bound() {
    let (ready, d) = ready("stubborn");
    let mut cmd = sh(
        r#"trap '' INT; touch "$1"; while :; do sleep 0.01; done"#,
        &ready,
    );
    let mut r = Runner::spawn(&mut cmd, ready).unwrap();
    r.wait_ready(Duration::from_secs(10), || false).unwrap();
    let t0 = Instant::now();
    let e = r.stop(Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, RunError::NoStop { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(r.pid(), None, "killed and waited for");
    drop(r);
    let _ = std::fs::remove_dir(d);
}

/// Collects streamed lines and whether the stream ended.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<(Vec<std::string::String>, bool)>>);

impl Lines for Seen {
    fn line(&mut self, line: &str) {
        self.0.lock().unwrap().0.push(line.to_string());
    }
    fn end(&mut self) {
        self.0.lock().unwrap().1 = true;
    }
}

#[test]
fn streamed_lines_reach_the_callback_as_written() {
    let (ready, d) = ready("stream");
    let seen = Seen::default();
    let mut cmd = sh(
        r#"echo one; printf 'two\nthree'; touch "$1"; trap 'echo bye >&2; exit 0' TERM; while :; do sleep 0.01; done"#,
        &ready,
    );
    let last = Arc::new(Mutex::new(std::string::String::new()));
    let l = Arc::clone(&last);
    let mut r = Runner::start(
        &mut cmd,
        Some(Box::new(ready)),
        Out::Lines(Box::new(seen.clone())),
        Out::Lines(Box::new(move |line: &str| {
            *l.lock().unwrap() = line.to_string()
        })),
    )
    .unwrap();
    r.wait_ready(Duration::from_secs(10), || false).unwrap();
    let f = r.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(f.status.success(), "{f:?}");
    assert_eq!(f.stdout, "", "nothing kept");
    let s = seen.0.lock().unwrap();
    assert_eq!(s.0, ["one", "two", "three"]);
    assert!(s.1, "the end is told");
    assert_eq!(*last.lock().unwrap(), "bye");
    drop(r);
    let _ = std::fs::remove_dir(d);
}

#[test]
fn without_a_ready_file_it_is_ready_at_once_and_output_may_go_to_a_file() {
    let (_, d) = ready("to");
    let file = d.join("out");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo to-file; echo kept >&2"]);
    let mut r = Runner::start(
        &mut cmd,
        None,
        Out::To(std::fs::File::create(&file).unwrap().into()),
        Out::Keep,
    )
    .unwrap();
    r.wait_ready(Duration::from_secs(1), || false).unwrap();
    let f = r.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!((f.stdout.as_str(), f.stderr.as_str()), ("", "kept\n"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "to-file\n");
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_dir(d);
}
