//! `deploy/`: the alerts (`promtool check rules`, `promtool test rules`, every alert tested firing
//! and not firing), the PrometheusRule carrying exactly the rules file's groups, every manifest
//! against Kubernetes' schemas (kubernetes-validate, strict) and the custom resources against the
//! prometheus-operator CRDs vendored in `tests/schemas/`, and the image: built with buildah from
//! the ct-trace under test into a private storage, then its root filesystem run with chroot the
//! way the DaemonSet runs it (its arguments, exactly its capabilities, a read-only root, the
//! node's network namespace).
//!
//! The tools come from `cargo xtask setup` (Debian's prometheus and buildah, kubernetes-validate
//! in a venv under ct-trace's tool cache). Under `cargo xtask test` (CT_TRACE_BIN set) a missing
//! tool fails the test; under a plain `cargo test` it is a counted skip.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{self as h, need_tool};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// The Python of the kubernetes-validate venv (PyYAML and jsonschema), beside its script.
fn venv_python(test: &str) -> Option<PathBuf> {
    let kv = need_tool(test, "kubernetes-validate")?;
    let script = std::fs::canonicalize(&kv).expect("kubernetes-validate path");
    Some(script.with_file_name("python3"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tests/scripts/deploy_check.py` with the venv's Python.
fn deploy_check(python: &Path, args: &[&Path]) -> String {
    let mut cmd = Command::new(python);
    cmd.arg(h::scripts().join("deploy_check.py")).args(args);
    stdout(&run(&mut cmd))
}

fn rules_file() -> PathBuf {
    deploy("prometheus/ct-trace.rules.yml")
}

fn alert_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn alerts_pass_promtool_and_every_alert_is_tested_firing_and_not() {
    let test = "alerts_pass_promtool_and_every_alert_is_tested_firing_and_not";
    let Some(promtool) = need_tool(test, "promtool") else {
        return;
    };
    let check = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(rules_file()));
    println!("{}", stdout(&check));
    let unit = run(Command::new(&promtool)
        .args(["test", "rules", "ct-trace.rules.test.yml"])
        .current_dir(deploy("prometheus")));
    println!("{}", stdout(&unit));

    // Each alert has a test case expecting it to fire and one expecting it not to.
    let alerts = alert_names(&std::fs::read_to_string(rules_file()).unwrap());
    assert!(alerts.len() >= 5, "alerts: {alerts:?}");
    let tests = std::fs::read_to_string(deploy("prometheus/ct-trace.rules.test.yml")).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for w in lines.windows(2) {
        if let Some(name) = w[0].strip_prefix("alertname: ") {
            match w[1] {
                "exp_alerts: []" => quiet.insert(name.to_string()),
                "exp_alerts:" => firing.insert(name.to_string()),
                other => panic!("alertname {name} followed by `{other}`"),
            };
        }
    }
    let untested_firing: Vec<_> = alerts.difference(&firing).collect();
    let untested_quiet: Vec<_> = alerts.difference(&quiet).collect();
    assert!(
        untested_firing.is_empty() && untested_quiet.is_empty(),
        "alerts never tested firing: {untested_firing:?}; never tested not firing: {untested_quiet:?}"
    );
}

#[test]
fn prometheusrule_carries_exactly_the_rules_file_groups() {
    let test = "prometheusrule_carries_exactly_the_rules_file_groups";
    let Some(python) = venv_python(test) else {
        return;
    };
    let out = deploy_check(
        &python,
        &[
            Path::new("groups"),
            &rules_file(),
            &deploy("kubernetes/11-prometheusrule.yaml"),
        ],
    );
    println!("{out}");
}

/// The Kubernetes versions the manifests are validated for: the oldest still commonly run and
/// the newest kubernetes-validate 1.37.0 bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

#[test]
fn manifests_validate_against_kubernetes_and_prometheus_operator_schemas() {
    let test = "manifests_validate_against_kubernetes_and_prometheus_operator_schemas";
    let (Some(kv), Some(python)) = (need_tool(test, "kubernetes-validate"), venv_python(test))
    else {
        return;
    };
    let schemas = repo().join("tests/schemas/prometheus-operator");
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "manifests: {files:?}");
    let (mut core, mut custom) = (vec![], vec![]);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if text.contains("apiVersion: monitoring.coreos.com/") {
            custom.push(f);
        } else {
            core.push(f);
        }
    }
    for version in KUBERNETES_VERSIONS {
        let out = run(Command::new(&kv)
            .args(["--strict", "--kubernetes-version", version])
            .args(&core));
        print!("{}", stdout(&out));
        // kubernetes-validate exits 0 on a kind it has no schema for (a warning): every file
        // here must be one it knows.
        let text = stdout(&out) + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("Couldn't find schema"),
            "a manifest kubernetes-validate cannot check: {text}"
        );
        assert_eq!(
            text.matches(" passed for resource ").count(),
            core.len(),
            "{text}"
        );
    }
    for f in custom {
        let kind = if f.to_string_lossy().contains("servicemonitor") {
            "servicemonitors"
        } else {
            "prometheusrules"
        };
        let crd = schemas.join(format!("monitoring.coreos.com_{kind}.yaml"));
        println!("{}", deploy_check(&python, &[Path::new("crd"), &crd, f]));
    }
}

/// `build.sh` puts no lab in the image: given the default build's ct-trace (which has one), it
/// refuses before it assembles anything, saying how to build the image's.
#[test]
fn image_build_refuses_a_ct_trace_with_the_lab() {
    let bin = h::bin();
    let lab = Command::new(&bin).args(["lab", "--help"]).output().unwrap();
    assert!(lab.status.success(), "{} has no lab", bin.display());
    let dir = std::env::temp_dir().join(format!("ctt-deploy-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = dir.join("rootfs");
    let out = Command::new(deploy("image/build.sh"))
        .arg("--binary")
        .arg(&bin)
        .arg("--rootfs")
        .arg(&rootfs)
        .output()
        .expect("build.sh");
    let assembled = rootfs.exists();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "build.sh took a ct-trace with the lab: {err}"
    );
    assert!(
        err.contains("has the lab") && err.contains("--no-default-features"),
        "{err}"
    );
    assert!(!assembled, "build.sh assembled {}", rootfs.display());
}

/// A buildah storage of the test's own (vfs driver, under a temporary directory): whatever the
/// test builds, it deletes with the directory on drop, also when it fails.
struct Storage {
    dir: PathBuf,
    conf: PathBuf,
}

impl Storage {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("ctt-deploy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("storage.conf");
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n",
                dir.display()
            ),
        )
        .unwrap();
        Self { dir, conf }
    }

    fn buildah(&self) -> Command {
        let mut c = Command::new("buildah");
        c.env("CONTAINERS_STORAGE_CONF", &self.conf);
        c
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // vfs mounts nothing; removing the containers first lets buildah release its locks.
        let _ = self.buildah().args(["rm", "--all"]).output();
        let _ = self.buildah().args(["rmi", "--all", "--force"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The DaemonSet's container as `deploy_check.py daemonset` reads it.
fn daemonset(python: &Path) -> Value {
    let out = deploy_check(
        python,
        &[
            Path::new("daemonset"),
            &deploy("kubernetes/02-daemonset.yaml"),
        ],
    );
    serde_json::from_str(&out).expect("daemonset facts")
}

/// Runs ct-trace from the image's root filesystem the way the DaemonSet does: in a mount
/// namespace of its own, the root read-only, the container's /proc (a new procfs), /sys read-only,
/// /dev, a tmpfs on /tmp, an empty environment but PATH, no_new_privs, and only the DaemonSet's
/// capabilities (plus SYS_CHROOT, which chroot itself needs). In `netns` when given.
fn in_image(rootfs: &Path, caps: &[String], netns: Option<&str>, args: &[&str]) -> Command {
    let mut caps: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    caps.push("+sys_chroot".into());
    let caps = format!("-all,{}", caps.join(","));
    let script = r#"set -e
R=$1; CAPS=$2; shift 2
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount -o remount,bind,ro "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o size=16m tmpfs "$R/tmp"
exec env -i PATH=/usr/sbin:/usr/bin setpriv --no-new-privs --bounding-set "$CAPS" \
    --inh-caps "$CAPS" --ambient-caps "$CAPS" -- chroot "$R" /usr/bin/ct-trace "$@""#;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "unshare"]);
            c
        }
        None => Command::new("unshare"),
    };
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(rootfs)
    .arg(caps)
    .args(args);
    cmd
}

/// GET /metrics over HTTP/1.0; None until it answers 200.
fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: ct-trace\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(())
        .filter(|_| head.lines().next().is_some_and(|l| l.contains(" 200")))?;
    Some(body.to_string())
}

/// Whether a metric the alerts use is exposed: its samples or its `# TYPE` line (an OpenMetrics
/// counter family is named without `_total`).
fn exposes(body: &str, metric: &str) -> bool {
    let family = metric.strip_suffix("_total").unwrap_or(metric);
    body.lines().any(|l| {
        l.starts_with(&format!("{metric}{{"))
            || l.starts_with(&format!("{metric} "))
            || l.starts_with(&format!("# TYPE {metric} "))
            || l.starts_with(&format!("# TYPE {family} "))
    })
}

/// Whether the binary names a metric family (without `_total`): a labelled family the encoder
/// prints only from its first sample (`ct_trace_attributed_resets_total` before any attribution).
fn binary_names(bin: &Path, metric: &str) -> bool {
    let family = metric.strip_suffix("_total").unwrap_or(metric).as_bytes();
    let bytes = std::fs::read(bin).expect("read ct-trace");
    bytes.windows(family.len()).any(|w| w == family)
}

fn kill_term(child: &Child) {
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

#[test]
fn image_builds_offline_and_runs_as_the_daemonset_runs_it() {
    let test = "image_builds_offline_and_runs_as_the_daemonset_runs_it";
    if !h::need_root(test) {
        return;
    }
    let (Some(_), Some(python), Some(_), Some(_)) = (
        need_tool(test, "buildah"),
        venv_python(test),
        need_tool(test, "setpriv"),
        need_tool(test, "unshare"),
    ) else {
        return;
    };
    // The image carries the ct-trace built without the lab.
    let Some(bin) = h::image_bin(test) else {
        return;
    };
    let version = stdout(&run(Command::new(&bin).arg("--version")));
    let version = version
        .split_whitespace()
        .nth(1)
        .expect("version")
        .to_string();
    let ds = daemonset(&python);

    // The manifest runs the image this ct-trace makes.
    assert_eq!(
        ds["image"],
        format!("ct-trace:{version}"),
        "DaemonSet image"
    );

    // The image, from scratch, into the test's own storage; and its OCI archive.
    let storage = Storage::new();
    let tag = format!("localhost/ct-trace-test:{version}");
    let archive = storage.dir.join("ct-trace.oci.tar");
    let t = Instant::now();
    let build = run(Command::new("timeout")
        .arg("100")
        .arg(deploy("image/build.sh"))
        .arg("--binary")
        .arg(&bin)
        .args(["--tag", &tag, "--oci-archive"])
        .arg(&archive)
        .env("CONTAINERS_STORAGE_CONF", &storage.conf)
        .env("TMPDIR", &storage.dir));
    let took = t.elapsed();
    print!("{}", stdout(&build));
    println!("image built in {:.1} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(100), "image build took {took:?}");
    assert!(
        std::fs::metadata(&archive).is_ok_and(|m| m.len() > 1 << 20),
        "no OCI archive at {}",
        archive.display()
    );
    let inspect = stdout(&run(storage
        .buildah()
        .args(["inspect", "--type", "image"])
        .arg(&tag)));
    let image: Value = serde_json::from_str(&inspect).expect("buildah inspect JSON");
    let config = &image["OCIv1"]["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/ct-trace"]),
        "{config}"
    );

    // The image's root filesystem, as a working container of it.
    let container = stdout(&run(storage.buildah().args(["from", &tag])));
    let container = container.trim();
    let rootfs = PathBuf::from(stdout(&run(storage.buildah().args(["mount", container]))).trim());
    let caps: Vec<String> = ds["cap_add"]
        .as_array()
        .expect("cap_add")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ds["cap_drop"], serde_json::json!(["ALL"]));

    // --version from the image is the binary's.
    let out = run(&mut in_image(&rootfs, &caps, None, &["--version"]));
    assert_eq!(stdout(&out).trim(), format!("ct-trace {version}"));

    // No lab in the image: `ct-trace lab` there is one line saying so, and exit 2.
    let out = in_image(&rootfs, &caps, None, &["lab", "run", "--scenario", "clean"])
        .output()
        .expect("ct-trace lab in the image");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "ct-trace lab in the image: {err}"
    );
    assert!(
        err.starts_with("ct-trace: this build has no lab") && err.lines().count() == 1,
        "ct-trace lab in the image: {err}"
    );

    // doctor reads the rulesets with the image's iptables-save (and its extensions) and nft: in a
    // namespace with an INVALID drop rule in each, both are found.
    let ns = h::Netns::new("deploy");
    ns.exec("iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
    ns.exec("nft add table inet ctt && nft add chain inet ctt ctt_fwd \"{ type filter hook forward priority 0; }\" && nft add rule inet ctt ctt_fwd ct state invalid drop");
    let out = run(&mut in_image(
        &rootfs,
        &caps,
        Some(&ns.name),
        &["doctor", "-o", "json", "--window", "0"],
    ));
    let doctor: Value = serde_json::from_str(&stdout(&out)).expect("doctor JSON");
    println!(
        "doctor in the image: verdict {}, rules {}",
        doctor["verdict"], doctor["drop_rules"]
    );
    assert_eq!(doctor["rules_read"], "all", "{doctor}");
    assert_eq!(doctor["verdict"], "protected-rule", "{doctor}");
    let sources: BTreeSet<&str> = doctor["drop_rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["source"].as_str())
        .collect();
    assert_eq!(
        sources,
        BTreeSet::from(["iptables", "nftables"]),
        "{doctor}"
    );
    assert!(doctor["max"].as_u64().is_some_and(|m| m > 0), "{doctor}");

    // The DaemonSet's own arguments, in the node's (here: this host's) network namespace.
    let has_metrics = stdout(&run(Command::new(&bin).arg("--help"))).contains("--metrics");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = ds["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap().replace("$(NODE_IP):9469", &addr))
        .collect();
    if !has_metrics {
        // Before `--metrics` exists in this ct-trace: the other arguments, for a few seconds.
        h::skip(test, "this ct-trace has no --metrics: /metrics not scraped");
        let i = args
            .iter()
            .position(|a| a == "--metrics")
            .expect("--metrics in args");
        args.drain(i..i + 2);
        args.extend(["--duration".into(), "3".into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = in_image(&rootfs, &caps, None, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ct-trace in the image");
    if has_metrics {
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = loop {
            if let Some(body) = scrape(&addr) {
                break body;
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                kill_term(&child);
                let out = child.wait_with_output().unwrap();
                panic!(
                    "/metrics at {addr} never answered:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Every metric an alert uses is one this ct-trace exposes.
        let rules = std::fs::read_to_string(rules_file()).unwrap();
        let used: BTreeSet<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ct_trace_"))
            .collect();
        let (exposed, unexposed): (Vec<&str>, Vec<&str>) =
            used.iter().partition(|m| exposes(&body, m));
        let unknown: Vec<_> = unexposed
            .iter()
            .filter(|m| !binary_names(&bin, m))
            .collect();
        assert!(
            unknown.is_empty(),
            "metrics the alerts use that ct-trace neither exposes nor names: {unknown:?}\n{body}"
        );
        println!(
            "/metrics exposes {} of the {} metrics the alerts use; the others have no sample yet and the binary names them: {unexposed:?}",
            exposed.len(),
            used.len()
        );
        kill_term(&child);
    }
    let t = Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("ct-trace in the image did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ct-trace in the image: {}\n{stderr}",
        out.status
    );
    // A capability the DaemonSet lacks shows as a warning (e.g. /proc/kallsyms without
    // CAP_SYSLOG) or an error; with exactly its capabilities there is neither.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ct-trace: warn") || l.starts_with("ct-trace: error"))
        .collect();
    assert!(
        warnings.is_empty(),
        "ct-trace in the image warned:\n{stderr}"
    );
    let summary: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("a summary line"),
    )
    .expect("summary JSON");
    assert_eq!(summary["kind"], "summary");
    println!(
        "ct-trace ran in the image with {caps:?}: {}",
        summary["invalid"]
    );

    let _ = storage.buildah().args(["umount", container]).output();
}
