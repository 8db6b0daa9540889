//! ct-trace runs as root on every node: no other user may redirect, pre-create or forge a file
//! it or its lab creates. An unprivileged user (uid 65534) plants links, files, directories and
//! FIFOs at every name ct-trace wrote to before (the lab's `$TMPDIR/ctt-lab-PID-node.ready` for
//! the next PIDs, `$TMPDIR/ct-trace-verifier-PROGRAM.log`) and at the names a user gives it
//! (`--ready-file`, `--pcap`), with the kernel's protections against that
//! (`fs.protected_symlinks`, `fs.protected_regular`, `fs.protected_hardlinks`) off. ct-trace must
//! neither write through them nor believe them: the root-owned victim they point at keeps its
//! content and mtime, the lab's verdict is right, bad `--ready-file`/`--pcap` paths fail before
//! anything is attached with one line, and ct-trace leaves nothing in `$TMPDIR`.
//!
//! `$TMPDIR` is, for each test, a directory of its own made like `/tmp` (root's, mode 1777):
//! what is left in it afterwards is exactly what the attacker planted, whoever else uses `/tmp`.

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use integration_tests::{bin, lab::n, lab::verdict, need_root, python, GlobalSysctl, Netns};

/// The tests share global sysctls: one at a time, so each restores what it found.
static GLOBAL: Mutex<()> = Mutex::new(());

/// The attacker.
const NOBODY: u32 = 65534;

/// The kernel's protections against planted links and files off, for one test.
struct Unprotected {
    // Restored before the lock is released (fields drop in order).
    _sysctls: Vec<GlobalSysctl>,
    _lock: MutexGuard<'static, ()>,
}

fn unprotected() -> Unprotected {
    let lock = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    Unprotected {
        _sysctls: [
            "protected_symlinks",
            "protected_regular",
            "protected_hardlinks",
        ]
        .iter()
        .map(|s| GlobalSysctl::set(&format!("fs.{s}"), "0"))
        .collect(),
        _lock: lock,
    }
}

/// What the attacker left at a name, to check it was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plant {
    Link(PathBuf),
    Dir,
    File(String, u32),
    Fifo,
}

/// A `/tmp` of the test's own (`shared`), a root-owned victim file beside it, and what was
/// planted; removed on drop.
struct Scene {
    root: PathBuf,
    shared: PathBuf,
    victim: PathBuf,
    victim_was: (String, SystemTime),
    planted: BTreeMap<String, Plant>,
}

impl Scene {
    fn new(tag: &str) -> Self {
        let root = std::env::temp_dir().join(format!("ctt-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let shared = root.join("tmp");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let victim = root.join("victim");
        std::fs::write(&victim, "root's own file\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let victim_was = Self::victim_now(&victim);
        Self {
            root,
            shared,
            victim,
            victim_was,
            planted: BTreeMap::new(),
        }
    }

    fn victim_now(victim: &Path) -> (String, SystemTime) {
        let m = std::fs::metadata(victim).unwrap();
        (
            std::fs::read_to_string(victim).unwrap(),
            m.modified().unwrap(),
        )
    }

    fn at(&self, name: &str) -> PathBuf {
        self.shared.join(name)
    }

    /// Plants, as uid 65534, `(kind, name)` in `shared`: `link` (to the victim), `dangling`
    /// (a link to `shared/NAME.target`), `hardlink` (to the victim), `dir`, `file`, `fifo`.
    fn plant(&mut self, plants: &[(&str, String)]) {
        let script = r#"
import os, sys
shared, victim = sys.argv[1], sys.argv[2]
for kind, name in zip(sys.argv[3::2], sys.argv[4::2]):
    p = os.path.join(shared, name)
    if kind == "link": os.symlink(victim, p)
    elif kind == "dangling": os.symlink(p + ".target", p)
    elif kind == "hardlink": os.link(victim, p)
    elif kind == "dir": os.mkdir(p, 0o777)
    elif kind == "file":
        with open(p, "w") as f: f.write("forged by nobody\n")
    elif kind == "fifo": os.mkfifo(p, 0o666)
"#;
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--inh-caps=-all",
            python(),
            "-c",
            script,
        ])
        .arg(&self.shared)
        .arg(&self.victim);
        for (kind, name) in plants {
            cmd.args([kind, name.as_str()]);
        }
        let out = cmd.output().expect("setpriv");
        assert!(out.status.success(), "planting as nobody: {out:?}");
        for (kind, name) in plants {
            let p = self.at(name);
            let plant = match *kind {
                "link" => Plant::Link(self.victim.clone()),
                "dangling" => Plant::Link(p.with_file_name(format!("{name}.target"))),
                "dir" => Plant::Dir,
                "fifo" => Plant::Fifo,
                "hardlink" => Plant::File("root's own file\n".into(), 0),
                _ => Plant::File("forged by nobody\n".into(), NOBODY),
            };
            assert_eq!(self.now(&p), Some(plant.clone()), "{kind} {name}");
            self.planted.insert(name.clone(), plant);
        }
    }

    /// What is at `p` now, as a [`Plant`].
    fn now(&self, p: &Path) -> Option<Plant> {
        let m = std::fs::symlink_metadata(p).ok()?;
        let t = m.file_type();
        Some(if t.is_symlink() {
            Plant::Link(std::fs::read_link(p).unwrap())
        } else if t.is_dir() {
            Plant::Dir
        } else if t.is_file() {
            Plant::File(std::fs::read_to_string(p).unwrap_or_default(), m.uid())
        } else {
            Plant::Fifo
        })
    }

    /// The victim is untouched, every plant is as it was, and nothing else is in `shared`:
    /// ct-trace left nothing there.
    fn assert_untouched(&self) {
        assert_eq!(
            Self::victim_now(&self.victim),
            self.victim_was,
            "the victim changed"
        );
        for (name, plant) in &self.planted {
            assert_eq!(self.now(&self.at(name)).as_ref(), Some(plant), "{name}");
            if let Plant::Link(to) = plant {
                if to != &self.victim {
                    assert!(!to.exists(), "a dangling link's target was made: {to:?}");
                }
            }
        }
        let left: Vec<String> = std::fs::read_dir(&self.shared)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !self.planted.contains_key(n))
            .collect();
        assert!(left.is_empty(), "left in $TMPDIR: {left:?}");
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `ct-trace ARGS` in `ns` with `TMPDIR=shared`, bounded: (exit code, stderr).
fn ct_trace(ns: &Netns, shared: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bin())
        .args(args)
        .env("TMPDIR", shared)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ct-trace");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ct-trace {args:?} still running after 30 s (blocked on a planted file?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().unwrap())
}

/// The one line and exit 1 of a path refused before anything was attached.
fn assert_refused(code: Option<i32>, err: &str, starts: &str) {
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, nothing attached: {err}");
    assert!(err.starts_with(starts), "expected `{starts}...`: {err}");
}

/// The next `count` PIDs the kernel hands out (it wraps to 300 after pid_max).
fn next_pids(count: u32) -> Vec<u32> {
    let read = |f: &str| -> u32 {
        std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (last, max) = (read("ns_last_pid"), read("pid_max"));
    let mut p = last;
    (0..count)
        .map(|_| {
            p = if p + 1 >= max { 300 } else { p + 1 };
            p
        })
        .collect()
}

fn mode_uid(p: &Path) -> (u32, u32, bool) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.file_type().is_symlink())
}

#[test]
fn the_lab_writes_through_no_planted_link_and_believes_no_planted_ready_file() {
    if !need_root("the_lab_writes_through_no_planted_link_and_believes_no_planted_ready_file") {
        return;
    }
    let _unprotected = unprotected();
    let mut scene = Scene::new("lab");
    // The names the lab and ct-trace wrote to before: the ready file of the next labs (a link
    // to the victim, or a directory that made `exists()` true at once), the verifier logs.
    let mut plants: Vec<(&str, String)> = next_pids(3000)
        .into_iter()
        .map(|p| {
            let name = format!("ctt-lab-{p}-node.ready");
            (if p % 2 == 0 { "link" } else { "dir" }, name)
        })
        .collect();
    plants.extend(
        conntrack_common::plan::PLAN
            .iter()
            .map(|p| ("link", format!("ct-trace-verifier-{}.log", p.program))),
    );
    plants.sort();
    plants.dedup();
    scene.plant(&plants);

    let child = Command::new(bin())
        .args(["lab", "run", "--scenario", "clean", "-o", "json"])
        .env("TMPDIR", &scene.shared)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ct-trace lab");
    let pid = child.id();
    assert!(
        scene.planted.contains_key(&format!("ctt-lab-{pid}-node.ready")),
        "the lab's PID {pid} is not among those planted for: the machine started more than 3000 processes meanwhile"
    );
    // The lab's ready file, seen while the lab runs: root's, 0600, in root's 0700 directory.
    let dir = Path::new("/run/ct-trace/lab");
    let ready = dir.join(format!("ctt-lab-{pid}-node.ready"));
    let mut seen = None;
    let t0 = Instant::now();
    let out = {
        let mut child = child;
        while child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(120), "lab still running");
            if seen.is_none() && std::fs::symlink_metadata(&ready).is_ok() {
                seen = Some(mode_uid(&ready));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait_with_output().unwrap()
    };
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let (events, v) = verdict(pid, &out, "clean", "none");
    // As tests/tests/lab.rs's clean run.
    assert_eq!(v["as_expected"], true, "{v}");
    assert!(n(&v, "connections") >= 20, "{v}");
    assert_eq!(n(&v, "connections_lost"), 0, "{v}");
    assert_eq!(n(&v, "resets"), 0, "{v}");
    assert_eq!(n(&v, "invalid"), 0, "{v}");
    assert!(!events.iter().any(|e| e["kind"] == "attribution"));

    assert_eq!(seen, Some((0o600, 0, false)), "the ready file at {ready:?}");
    assert_eq!(mode_uid(dir), (0o700, 0, false));
    assert_eq!(mode_uid(Path::new("/run/ct-trace")), (0o700, 0, false));
    let prefix = format!("ctt-lab-{pid}");
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left in {dir:?}: {left:?}");
    scene.assert_untouched();
}

#[test]
fn a_ready_file_already_there_is_refused_before_attaching() {
    if !need_root("a_ready_file_already_there_is_refused_before_attaching") {
        return;
    }
    let _unprotected = unprotected();
    let mut scene = Scene::new("ready");
    let kinds = ["link", "dangling", "file", "dir", "fifo"];
    let plants: Vec<(&str, String)> = kinds.iter().map(|k| (*k, format!("ready-{k}"))).collect();
    scene.plant(&plants);
    let ns = Netns::new("files");
    for (_, name) in &plants {
        let path = scene.at(name);
        let (code, err) = ct_trace(
            &ns,
            &scene.shared,
            &["--ready-file", path.to_str().unwrap(), "-d", "1"],
        );
        assert_refused(
            code,
            &err,
            &format!("ct-trace: --ready-file: {} already exists", path.display()),
        );
        assert!(err.contains("readiness signal"), "{err}");
    }
    scene.assert_untouched();
}

#[test]
fn a_ready_file_is_made_once_attached_and_removed_however_ct_trace_ends() {
    if !need_root("a_ready_file_is_made_once_attached_and_removed_however_ct_trace_ends") {
        return;
    }
    let scene = Scene::new("ready-ends");
    let ns = Netns::new("files");
    let path = scene.at("ready");
    for end in ["duration", "SIGINT", "SIGTERM"] {
        // The signals come long before the duration ends.
        let duration = if end == "duration" { "2" } else { "30" };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin())
            .args(["--ready-file", path.to_str().unwrap(), "-d", duration, "-q"])
            .env("TMPDIR", &scene.shared)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ct-trace");
        let t0 = Instant::now();
        while std::fs::symlink_metadata(&path).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "{end}: ct-trace ended");
            assert!(t0.elapsed() < Duration::from_secs(30), "{end}: not ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(mode_uid(&path), (0o600, 0, false), "{end}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            child.id().to_string(),
            "{end}: the ready file holds ct-trace's PID"
        );
        let sig = match end {
            "SIGINT" => libc::SIGINT,
            "SIGTERM" => libc::SIGTERM,
            _ => 0,
        };
        if sig != 0 {
            // SAFETY: signalling our own child (`ip netns exec` execs ct-trace).
            unsafe { libc::kill(child.id() as i32, sig) };
        }
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(40),
                "{end}: still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{end}: {status:?}");
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "{end}: the ready file is left"
        );
    }
    scene.assert_untouched();
}

#[test]
fn a_pcap_file_that_is_a_link_or_another_users_is_refused_before_attaching() {
    if !need_root("a_pcap_file_that_is_a_link_or_another_users_is_refused_before_attaching") {
        return;
    }
    let _unprotected = unprotected();
    let mut scene = Scene::new("pcap");
    let plants = [
        ("link", "p-link".to_string()),
        ("dangling", "p-dangling".into()),
        ("hardlink", "p-hardlink".into()),
        ("file", "p-file".into()),
        ("fifo", "p-fifo".into()),
        ("dir", "p-dir".into()),
    ];
    scene.plant(&plants);
    let ns = Netns::new("files");
    for (kind, name) in &plants {
        let path = scene.at(name);
        let (code, err) = ct_trace(
            &ns,
            &scene.shared,
            &["--pcap", path.to_str().unwrap(), "-d", "1"],
        );
        let why = match *kind {
            "link" | "dangling" => "is a symbolic link",
            "hardlink" => "has other hard links",
            "file" => "belongs to uid 65534",
            "fifo" => "is not a regular file",
            _ => "is a directory",
        };
        assert_refused(
            code,
            &err,
            &format!("ct-trace: --pcap: {} {why}", path.display()),
        );
    }
    scene.assert_untouched();

    // What is not refused: a new file, made root's and 0600.
    let path = scene.at("new.pcapng");
    let (code, err) = ct_trace(
        &ns,
        &scene.shared,
        &["--pcap", path.to_str().unwrap(), "-d", "1"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(mode_uid(&path), (0o600, 0, false));
    let head = std::fs::read(&path).unwrap();
    assert_eq!(head.get(..4), Some(&[0x0a, 0x0d, 0x0d, 0x0a][..]), "pcapng");
    std::fs::remove_file(&path).unwrap();
    scene.assert_untouched();
}
