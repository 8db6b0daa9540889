//! `cargo xtask vm`: boot Debian kernels under qemu and run a command inside, with the host's
//! userland (ip, iptables, nft, python3, `target/`) shared read-only over virtio-9p.
//!
//! Per kernel series (6.1 from bookworm, 6.12 from trixie, 7.2 from sid; the generic `amd64`
//! flavour: the `cloud-amd64` one has no 9p):
//!
//! 1. fetch: private apt lists under `$CT_TRACE_CACHE/vm/apt` (the system's sources are only read,
//!    for the archive addresses), refreshed at most once a day; the newest kernel packages are
//!    downloaded and extracted with `dpkg -x` unless the same versions are cached; the
//!    uncompressed vmlinux is cut out of vmlinuz (qemu boots it through PVH, skipping the
//!    decompressor, which is slow under TCG).
//! 2. initramfs: static busybox for PID 1, the 9p and netfilter modules with their dependencies
//!    in load order, decompressed on the host (busybox insmod reads plain `.ko` only). Cached.
//! 3. boot: qemu (TCG, unless hardware virtualisation is really usable); the guest mounts the
//!    host's `/`, chroots into it, runs the command, prints `CT_TRACE_VM_EXIT=<code>` and powers
//!    off. A panic, a hang (`--timeout`) or a missing report fails that kernel.
//!
//! `run_jobs` does all of this for a list of jobs (kernel + guest script), preparing each kernel
//! once; `cargo xtask vm` runs one job per kernel, `cargo xtask test` its matrix (`matrix.rs`).
//!
//! Cache layout (`$CT_TRACE_CACHE/vm`): `apt/` (sources.list, lists, `updated` stamp),
//! `<series>/` (`pkgs`, `kver`, `version`, `config`, `vmlinux`, `root/` = the extracted packages,
//! `initrd.cpio` + `initrd.stamp`), `run/` (per-boot initramfs, removed after the boot).

use std::{
    cmp::Ordering,
    collections::HashSet,
    env,
    fmt::Write as _,
    fs::{self, File},
    io::{self, BufRead as _, BufReader, Read, Write as _},
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::ValueEnum;

use crate::{cache, output, run};

/// Modules every guest loads (with their dependencies): virtio-9p for the host's `/`, veth,
/// conntrack/NAT for iptables (legacy and nft backends) and nft, ctnetlink, nfnetlink_hook, and
/// clsact/cls_bpf for TC programs on kernels without tcx. Guests cannot autoload modules: the
/// host's `/lib/modules` has none for the guest kernel.
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "veth",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_ct",
    "nft_nat",
    "nft_chain_nat",
    "nft_compat",
    "iptable_nat",
    "iptable_filter",
    "ip6table_nat",
    "ip6table_filter",
    "xt_conntrack",
    "xt_nat",
    "nf_conntrack_netlink",
    "nfnetlink_hook",
    "sch_ingress",
    "cls_bpf",
];

const DEFAULT_COMMAND: &str = "uname -r && cat /proc/version";

/// The line the guest prints after the command; the host parses the code from it.
const MARKER: &str = "CT_TRACE_VM_EXIT=";

/// PID 1 (busybox sh). Failures before the command print `ct-trace-vm: error: ...` and power
/// off without a report.
const INIT: &str = r##"#!/bin/sh
# PID 1 of `cargo xtask vm` guests (static busybox): pseudo-filesystems, the modules of
# /etc/modules (dependency order), the host's / over virtio-9p at /mnt/host with the guest's
# /proc, /sys, /dev, bpffs, tracefs and fresh tmpfs /tmp, /run; then /ct-trace-vm.sh chrooted there.
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "ct-trace-vm: error: $*"; poweroff -f; sleep 10; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf || fail "cannot mount bpffs"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
t0=$(cut -d' ' -f1 /proc/uptime)
n=0
for m in $(cat /etc/modules); do
  if insmod "/lib/modules/$m" 2>/tmp/insmod.err; then n=$((n+1))
  elif ! grep -q 'File exists' /tmp/insmod.err; then echo "ct-trace-vm: warning: insmod $m: $(cat /tmp/insmod.err)"; fi
done
echo "ct-trace-vm: $n modules loaded (uptime $t0 -> $(cut -d' ' -f1 /proc/uptime) s)"
ip link set lo up
R=/mnt/host
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose host $R ||
  fail "cannot mount the host's / (virtio-9p tag 'host')"
mount -t tmpfs tmpfs $R/tmp && mount -t tmpfs tmpfs $R/run || fail "cannot mount tmpfs on $R/tmp and $R/run"
# The workspace, shared on its own: a checkout under /tmp or /run would be hidden by the tmpfs.
if [ -s /ct-trace-vm.workdir ]; then
  W=$(cat /ct-trace-vm.workdir)
  mkdir -p "$R$W" 2>/dev/null
  mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose work "$R$W" ||
    fail "cannot mount the workspace $W (virtio-9p tag 'work')"
fi
[ -L $R/var/run ] || mount -t tmpfs tmpfs $R/var/run || fail "cannot mount tmpfs on $R/var/run"
for d in proc sys dev; do mount -o rbind /$d $R/$d || fail "cannot bind /$d into $R"; done
cp /ct-trace-vm.sh $R/tmp/.ct-trace-vm.sh || fail "no command in the initramfs"
echo "ct-trace-vm: running the command (kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s)"
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux \
  chroot $R /bin/sh /tmp/.ct-trace-vm.sh </dev/null
echo "CT_TRACE_VM_EXIT=$?"
poweroff -f
sleep 10
"##;

/// A Debian kernel series of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Series {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    #[value(name = "7.2")]
    V7_2,
}

impl Series {
    pub const ALL: [Series; 3] = [Series::V6_1, Series::V6_12, Series::V7_2];

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
            Series::V7_2 => "7.2",
        }
    }

    /// (major, minor), to compare with the version a kernel feature appeared in.
    pub fn version(self) -> (u32, u32) {
        match self {
            Series::V6_1 => (6, 1),
            Series::V6_12 => (6, 12),
            Series::V7_2 => (7, 2),
        }
    }

    /// The suites the series is taken from (the newest 6.1/6.12 builds are in `-security`;
    /// bookworm-security also carries a 6.12 backport, which this keeps out).
    fn suites(self) -> &'static [&'static str] {
        match self {
            Series::V6_1 => &["bookworm", "bookworm-security"],
            Series::V6_12 => &["trixie", "trixie-security"],
            Series::V7_2 => &["sid"],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when /proc/cpuinfo has vmx/svm, /dev/kvm opens and it is no nested PVM; else TCG.
    Auto,
    Tcg,
    Kvm,
}

#[derive(clap::Args)]
pub struct Args {
    /// Kernel series to boot (repeatable) [default: 6.1, 6.12 and 7.2].
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<Series>,
    /// Download and prepare kernels and initramfs images, boot nothing.
    #[arg(long)]
    fetch_only: bool,
    /// Seconds one boot may take, from qemu's start to its exit.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Guest memory (qemu -m).
    #[arg(long, default_value = "1G")]
    mem: String,
    /// Guest CPUs. One by default: with two vCPUs under TCG, Debian's 6.1 guest sometimes stops
    /// waking a sleeping task after ct-trace armed its kprobes (a test hung at its first sleep,
    /// reproduced by hand; never with one vCPU), and one vCPU was also faster on 2 host cores.
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Extra kernel module to load in the guest (repeatable; dependencies come along).
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
    /// Command to run in the guest (argv, no shell), chrooted into the host's read-only `/`,
    /// in the current directory, as root [default: sh -c 'uname -r && cat /proc/version'].
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// How guests boot (`cargo xtask vm` flags; `cargo xtask test` uses the defaults but the timeout).
pub struct Opts {
    /// Seconds one boot may take, from qemu's start to its exit.
    pub timeout: u64,
    pub accel: Accel,
    pub mem: String,
    pub smp: u32,
    /// Modules loaded besides `MODULES`.
    pub modules: Vec<String>,
    /// Prepare kernels and initramfs images, boot nothing.
    pub fetch_only: bool,
    /// No boot runs past this: a job's timeout is cut to the time left, and a job with less
    /// than `MIN_BOOT_SECS` left is not booted (fails).
    pub deadline: Option<Instant>,
}

/// Below this, a boot is not worth starting.
const MIN_BOOT_SECS: u64 = 60;

impl Default for Opts {
    fn default() -> Self {
        Opts {
            timeout: 300,
            accel: Accel::Auto,
            mem: "1G".into(),
            smp: 1,
            modules: Vec::new(),
            fetch_only: false,
            deadline: None,
        }
    }
}

/// One boot: a kernel and the guest's script (see `script`).
pub struct Job {
    pub series: Series,
    /// What distinguishes jobs on the same kernel (e.g. the attach mode); may be empty.
    pub label: String,
    pub script: String,
}

impl Job {
    /// `6.12` or `6.12/netfilter`: the prefix of the guest's console lines and of failure reasons.
    pub fn name(&self) -> String {
        job_name(self.series, &self.label)
    }
}

fn job_name(s: Series, label: &str) -> String {
    if label.is_empty() {
        s.name().to_string()
    } else {
        format!("{}/{label}", s.name())
    }
}

#[derive(Clone, Copy)]
pub enum Timing {
    Cached,
    Secs(f64),
}

impl Timing {
    fn cell(t: Option<Timing>) -> String {
        match t {
            None => "-".to_string(),
            Some(Timing::Cached) => "cached".to_string(),
            Some(Timing::Secs(s)) => format!("{s:.1}"),
        }
    }
}

pub enum Outcome {
    /// The guest reported exit code 0.
    Passed,
    /// Prepared, not booted (`--fetch-only`).
    Prepared,
    /// Fetching, booting or the command failed: one line saying why.
    Failed(String),
}

/// What one job did.
pub struct JobResult {
    pub series: Series,
    pub label: String,
    /// `uname -r (package version)`, empty when the kernel could not be fetched.
    pub version: String,
    pub fetch: Option<Timing>,
    pub initrd: Option<Timing>,
    /// Wall time of the boot, from qemu's start to its exit.
    pub boot: Option<f64>,
    /// The code the guest reported (`CT_TRACE_VM_EXIT=`).
    pub exit: Option<i32>,
    pub outcome: Outcome,
    /// The guest's console (qemu's stdout), one entry per line.
    pub console: Vec<String>,
}

impl JobResult {
    pub fn name(&self) -> String {
        job_name(self.series, &self.label)
    }
}

/// The results of `run_jobs`, in the order of the jobs.
pub struct Runs {
    /// Package lists, kernel downloads and initramfs images, for all jobs.
    pub prepare_secs: f64,
    pub results: Vec<JobResult>,
}

/// A kernel ready to boot, or why not.
struct Prepared {
    version: String,
    fetch: Option<Timing>,
    initrd: Option<Timing>,
    ready: std::result::Result<(Kernel, PathBuf), String>,
}

pub fn vm(args: Args) -> Result<()> {
    let mut series: Vec<Series> = Vec::new();
    for s in if args.kernels.is_empty() {
        Series::ALL.to_vec()
    } else {
        args.kernels.clone()
    } {
        if !series.contains(&s) {
            series.push(s);
        }
    }
    let command = if args.command.is_empty() {
        vec!["sh".into(), "-c".into(), DEFAULT_COMMAND.into()]
    } else {
        args.command
    };
    let script = script(&[], &[command])?;
    let jobs: Vec<Job> = series
        .into_iter()
        .map(|series| Job {
            series,
            label: String::new(),
            script: script.clone(),
        })
        .collect();
    let opts = Opts {
        timeout: args.timeout,
        accel: args.accel,
        mem: args.mem,
        smp: args.smp,
        modules: args.modules,
        fetch_only: args.fetch_only,
        deadline: None,
    };
    let runs = run_jobs(&jobs, &opts)?;

    let mut table = Vec::new();
    for r in &runs.results {
        table.push(vec![
            r.series.name().to_string(),
            version_cell(&r.version),
            match r.outcome {
                Outcome::Passed => "passed",
                Outcome::Prepared => "prepared",
                Outcome::Failed(_) => "failed",
            }
            .into(),
            r.exit.map_or("-".into(), |c| c.to_string()),
            r.boot.map_or("-".into(), |s| format!("{s:.1}")),
            Timing::cell(r.fetch),
            Timing::cell(r.initrd),
        ]);
    }
    println!();
    print_table(
        &[
            "kernel",
            "version",
            "result",
            "exit",
            "boot s",
            "fetch s",
            "initramfs s",
        ],
        &table,
    );
    let mut failed = Vec::new();
    for r in &runs.results {
        if let Outcome::Failed(why) = &r.outcome {
            println!("{}: {why}", r.name());
            failed.push(r.name());
        }
    }
    if !failed.is_empty() {
        bail!("vm: failed on {}", failed.join(", "));
    }
    Ok(())
}

pub fn version_cell(v: &str) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.to_string()
    }
}

/// Prepares every kernel the jobs name (package lists, downloads and initramfs images, cached),
/// then boots each job in turn. A job whose kernel cannot be prepared, or whose boot fails,
/// gets `Outcome::Failed`; the error return is for what stops every job (a missing tool, no
/// package lists).
pub fn run_jobs(jobs: &[Job], opts: &Opts) -> Result<Runs> {
    let t = Instant::now();
    need(&[
        "apt-get",
        "apt-cache",
        "dpkg",
        "depmod",
        "modprobe",
        "cpio",
        "xz",
        "zstd",
        "qemu-system-x86_64",
    ])?;
    let mut modules: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    modules.extend(opts.modules.iter().cloned());

    let dir = cache().join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let apt = Apt::new(&dir)?;
    apt.refresh()?;

    let accel = match opts.accel {
        Accel::Auto if kvm_usable() => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        a => a,
    };

    let mut prepared: Vec<(Series, Prepared)> = Vec::new();
    for job in jobs {
        if !prepared.iter().any(|(s, _)| *s == job.series) {
            prepared.push((job.series, prepare(&apt, &dir, job.series, &modules)));
        }
    }
    let prepare_secs = secs(t);

    let mut results = Vec::new();
    for job in jobs {
        let p = &prepared
            .iter()
            .find(|(s, _)| *s == job.series)
            .expect("prepared above")
            .1;
        let mut r = JobResult {
            series: job.series,
            label: job.label.clone(),
            version: p.version.clone(),
            fetch: p.fetch,
            initrd: p.initrd,
            boot: None,
            exit: None,
            outcome: Outcome::Prepared,
            console: Vec::new(),
        };
        match &p.ready {
            Err(e) => r.outcome = Outcome::Failed(e.clone()),
            Ok(_) if opts.fetch_only => {}
            Ok((kernel, initrd)) => {
                let left = opts
                    .deadline
                    .map(|d| d.saturating_duration_since(Instant::now()).as_secs());
                match left {
                    Some(left) if left < MIN_BOOT_SECS => {
                        r.outcome = Outcome::Failed(format!(
                            "not booted: the time budget is spent ({left} s left)"
                        ))
                    }
                    _ => {
                        let timeout = left.map_or(opts.timeout, |l| l.min(opts.timeout));
                        match boot(&dir, kernel, initrd, job, accel, timeout, opts) {
                            Ok(b) => {
                                r.boot = Some(b.secs);
                                r.exit = b.exit;
                                r.outcome = b.outcome;
                                r.console = b.console;
                            }
                            Err(e) => r.outcome = Outcome::Failed(format!("{e:#}")),
                        }
                    }
                }
            }
        }
        results.push(r);
    }
    Ok(Runs {
        prepare_secs,
        results,
    })
}

/// Prints an aligned table (two spaces between columns).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for line in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// Fails early, and clearly, when a tool is missing.
fn need(tools: &[&str]) -> Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .collect();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !dirs.iter().any(|d| d.join(t).is_file()))
        .collect();
    ensure!(
        missing.is_empty(),
        "vm: missing {} (`cargo xtask setup` installs them)",
        missing.join(", ")
    );
    Ok(())
}

fn kvm_usable() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    // kvm_pvm (a nested paravirtual KVM) aborts on `-cpu host` and cannot boot stock kernels.
    hw && !Path::new("/sys/module/kvm_pvm").exists()
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// apt: a private list of the Debian suites the matrix needs.

struct Apt {
    dir: PathBuf,
    opts: Vec<String>,
}

impl Apt {
    fn new(vm: &Path) -> Result<Self> {
        let dir = vm.join("apt");
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache"))?;
        let (main, security) = archive_uris()?;
        let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut list = String::new();
        for suite in ["bookworm", "trixie", "sid"] {
            writeln!(list, "deb [signed-by={key}] {main} {suite} main")?;
        }
        for suite in ["bookworm-security", "trixie-security"] {
            writeln!(list, "deb [signed-by={key}] {security} {suite} main")?;
        }
        let sources = dir.join("sources.list");
        if fs::read_to_string(&sources).ok().as_deref() != Some(list.as_str()) {
            fs::write(&sources, &list)?;
            let _ = fs::remove_file(dir.join("updated"));
        }
        let opts = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=-".into(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            // A binary cache of the lists (the system's docker-style config disables it): each
            // apt-cache call then takes milliseconds instead of seconds.
            "Dir::Cache::pkgcache=pkgcache.bin".into(),
            "Dir::Cache::srcpkgcache=".into(),
            "Acquire::Languages=none".into(),
            // The system's appstream config adds ~25 MB of DEP-11 metadata per update otherwise.
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            // Our folders are root's: no `_apt` sandbox user (and no warning about it).
            "APT::Sandbox::User=root".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(Apt { dir, opts })
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.args(&self.opts);
        c
    }

    /// `apt-get update` on the private list, at most once a day (apt dates the list files with
    /// the archive's Last-Modified, so a stamp of our own says when we last refreshed).
    fn refresh(&self) -> Result<()> {
        let stamp = self.dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(24 * 3600));
        if fresh {
            return Ok(());
        }
        let t = Instant::now();
        eprintln!("xtask: vm: refreshing the Debian package lists");
        match run(self.cmd("apt-get").args(["update", "-qq"])) {
            Ok(()) => {
                fs::write(&stamp, "")?;
                eprintln!("xtask: vm: package lists refreshed in {:.1} s", secs(t));
            }
            Err(e) if self.has_lists() => {
                eprintln!("xtask: vm: warning: {e:#}; using the previous package lists")
            }
            Err(e) => return Err(e.context("fetching the Debian package lists")),
        }
        Ok(())
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// The newest `PREFIX<abi>SUFFIX` package in one of `suites`: (name, version).
    fn newest(
        &self,
        prefix: &str,
        suffix: &str,
        suites: &[&str],
    ) -> Result<Option<(String, String)>> {
        let names: Vec<String> = output(self.cmd("apt-cache").args(["pkgnames", prefix]))?
            .lines()
            .filter(|n| {
                n.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix(suffix))
                    .is_some_and(generic_abi)
            })
            .map(String::from)
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        let mut best: Option<(String, String)> = None;
        for (name, version, suite) in self.madison(&names)? {
            if !suites.contains(&suite.as_str()) {
                continue;
            }
            let better = match &best {
                None => true,
                Some((bn, bv)) => match natural_cmp(&name, bn) {
                    Ordering::Greater => true,
                    Ordering::Equal => version_gt(&version, bv)?,
                    Ordering::Less => false,
                },
            };
            if better {
                best = Some((name, version));
            }
        }
        Ok(best)
    }

    /// (name, version, suite) of every version of `names` the lists know.
    fn madison(&self, names: &[String]) -> Result<Vec<(String, String, String)>> {
        let out = output(self.cmd("apt-cache").arg("madison").args(names))?;
        Ok(out
            .lines()
            .filter_map(|l| {
                // "NAME | VERSION | URI SUITE/COMPONENT ARCH Packages"
                let mut f = l.split('|').map(str::trim);
                let (name, version, source) = (f.next()?, f.next()?, f.next()?);
                let suite = source.split_whitespace().nth(1)?.split('/').next()?;
                Some((name.into(), version.into(), suite.into()))
            })
            .collect())
    }
}

/// The Debian archive and security archive the system's apt sources point at.
fn archive_uris() -> Result<(String, String)> {
    let mut uris = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources"))
            .collect();
        files.sort();
        for f in files {
            for line in fs::read_to_string(&f).unwrap_or_default().lines() {
                if let Some(rest) = line.trim().strip_prefix("URIs:") {
                    uris.extend(rest.split_whitespace().map(String::from));
                }
            }
        }
    }
    // One-line format: deb [options] URI SUITE COMPONENT...
    for line in fs::read_to_string("/etc/apt/sources.list")
        .unwrap_or_default()
        .lines()
    {
        let mut w = line.split_whitespace().peekable();
        if w.next() != Some("deb") {
            continue;
        }
        if w.peek().is_some_and(|t| t.starts_with('[')) {
            for t in w.by_ref() {
                if t.ends_with(']') {
                    break;
                }
            }
        }
        uris.extend(w.next().map(String::from));
    }
    let uris: Vec<String> = uris
        .into_iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    let main = uris
        .iter()
        .find(|u| u.ends_with("/debian"))
        .context("the apt sources name no Debian archive (a URI ending in /debian)")?
        .clone();
    let security = uris
        .iter()
        .find(|u| u.ends_with("/debian-security"))
        .cloned()
        .unwrap_or_else(|| format!("{main}-security"));
    Ok((main, security))
}

/// `abi` (what follows `linux-image-6.1.`, before `-amd64...`) names the generic flavour:
/// `0-56`, `117+deb13`; the other flavours append `-cloud`, `-rt`.
fn generic_abi(abi: &str) -> bool {
    abi.split('-')
        .all(|p| p.starts_with(|c: char| c.is_ascii_digit()))
}

/// Orders names like `sort -V`: digit runs compare as numbers.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let strip = |d: &[u8]| -> Vec<u8> {
                    let z = d.iter().take_while(|&&c| c == b'0').count();
                    d[z..].to_vec()
                };
                let (da, db) = (strip(&a[..na]), strip(&b[..nb]));
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(&db));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[na..], &b[nb..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn version_gt(a: &str, b: &str) -> Result<bool> {
    Ok(Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .context("running dpkg --compare-versions")?
        .success())
}

// ---------------------------------------------------------------------------------------------
// fetch: kernel packages -> vmlinux + modules.

struct Kernel {
    series: Series,
    dir: PathBuf,
    /// Packages and versions, as stored in `pkgs`.
    stamp: String,
    /// `uname -r`.
    kver: String,
    vmlinux: PathBuf,
    moddir: PathBuf,
}

/// Fetches the kernel and builds its initramfs (each cached), timing both.
fn prepare(apt: &Apt, vm: &Path, s: Series, modules: &[String]) -> Prepared {
    let mut p = Prepared {
        version: String::new(),
        fetch: None,
        initrd: None,
        ready: Err(String::new()),
    };
    let timed = |fresh: bool, t: Instant| {
        Some(if fresh {
            Timing::Secs(secs(t))
        } else {
            Timing::Cached
        })
    };
    let t = Instant::now();
    let kernel = match fetch(apt, vm, s).with_context(|| format!("fetching {}", s.name())) {
        Ok((kernel, fresh)) => {
            p.fetch = timed(fresh, t);
            kernel
        }
        Err(e) => {
            p.ready = Err(format!("{e:#}"));
            return p;
        }
    };
    let version = fs::read_to_string(kernel.dir.join("version")).unwrap_or_default();
    p.version = format!("{} ({})", kernel.kver, version.trim());
    let t = Instant::now();
    p.ready = match initrd(&kernel, modules)
        .with_context(|| format!("building the initramfs for {}", s.name()))
    {
        Ok((initrd, fresh)) => {
            p.initrd = timed(fresh, t);
            Ok((kernel, initrd))
        }
        Err(e) => Err(format!("{e:#}")),
    };
    p
}

/// The newest packages of the series: `linux-image-*-amd64-unsigned`, or (Debian's 7.x) the
/// split `linux-binary-*` + `linux-modules-*` + `linux-base-*`.
fn resolve(apt: &Apt, s: Series) -> Result<Vec<(String, String)>> {
    let suites = s.suites();
    if let Some(image) = apt.newest(
        &format!("linux-image-{}.", s.name()),
        "-amd64-unsigned",
        suites,
    )? {
        return Ok(vec![image]);
    }
    let Some((binary, version)) =
        apt.newest(&format!("linux-binary-{}.", s.name()), "-amd64", suites)?
    else {
        bail!(
            "no generic amd64 kernel package for {} in {}",
            s.name(),
            suites.join(", ")
        );
    };
    let abi = binary.trim_start_matches("linux-binary-");
    let rest = [format!("linux-modules-{abi}"), format!("linux-base-{abi}")];
    let known = apt.madison(&rest)?;
    for name in &rest {
        ensure!(
            known.iter().any(|(n, v, _)| n == name && *v == version),
            "{binary} {version} has no {name} of the same version"
        );
    }
    let mut pkgs = vec![(binary, version.clone())];
    pkgs.extend(rest.into_iter().map(|n| (n, version.clone())));
    Ok(pkgs)
}

/// Returns the kernel and whether it was downloaded now (false: cached).
fn fetch(apt: &Apt, vm: &Path, s: Series) -> Result<(Kernel, bool)> {
    let dir = vm.join(s.name());
    let pkgs = resolve(apt, s)?;
    let stamp = pkgs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let cached = fs::read_to_string(dir.join("pkgs")).is_ok_and(|c| c.trim() == stamp);
    if !cached {
        download(apt, vm, s, &pkgs, &stamp)?;
    } else {
        eprintln!("xtask: vm {}: cached {stamp}", s.name());
    }
    let kver = fs::read_to_string(dir.join("kver"))?.trim().to_string();
    let moddir = module_dir(&dir.join("root"))?;
    Ok((
        Kernel {
            series: s,
            vmlinux: dir.join("vmlinux"),
            dir,
            stamp,
            kver,
            moddir,
        },
        !cached,
    ))
}

fn download(apt: &Apt, vm: &Path, s: Series, pkgs: &[(String, String)], stamp: &str) -> Result<()> {
    let dir = vm.join(s.name());
    // Built aside and renamed into place: an interrupted fetch leaves no half kernel behind.
    let tmp = vm.join(format!("{}.partial", s.name()));
    remove_dir(&tmp)?;
    let debs = tmp.join("debs");
    let root = tmp.join("root");
    fs::create_dir_all(&debs)?;
    fs::create_dir_all(&root)?;
    let t = Instant::now();
    eprintln!("xtask: vm {}: downloading {stamp}", s.name());
    run(apt
        .cmd("apt-get")
        .args(["download", "-qq"])
        .args(pkgs.iter().map(|(n, v)| format!("{n}={v}")))
        .current_dir(&debs))?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    ensure!(
        files.len() == pkgs.len(),
        "apt-get download left {} .deb files for {} packages",
        files.len(),
        pkgs.len()
    );
    let bytes: u64 = files
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let downloaded = secs(t);
    let t = Instant::now();
    for f in &files {
        run(Command::new("dpkg").arg("-x").arg(f).arg(&root))?;
    }
    let moddir = module_dir(&root)?;
    let kver = moddir
        .file_name()
        .context("module folder has no name")?
        .to_string_lossy()
        .into_owned();
    // 6.1 ships /boot/vmlinuz-KVER; newer packages may keep it next to the modules.
    let find = |name: &str| -> Result<PathBuf> {
        [root.join(format!("boot/{name}-{kver}")), moddir.join(name)]
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| format!("no {name} in {}", pkgs[0].0))
    };
    fs::copy(find("config")?, tmp.join("config"))?;
    extract_vmlinux(&find("vmlinuz")?, &tmp.join("vmlinux"))?;
    fs::write(tmp.join("kver"), format!("{kver}\n"))?;
    fs::write(tmp.join("version"), format!("{}\n", pkgs[0].1))?;
    fs::write(tmp.join("pkgs"), format!("{stamp}\n"))?;
    remove_dir(&debs)?;
    remove_dir(&dir)?;
    fs::rename(&tmp, &dir)?;
    eprintln!(
        "xtask: vm {}: {kver}: downloaded {:.0} MB in {downloaded:.1} s, extracted in {:.1} s",
        s.name(),
        bytes as f64 / 1e6,
        secs(t)
    );
    Ok(())
}

fn remove_dir(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// `lib/modules/KVER` (6.1) or `usr/lib/modules/KVER` (6.12+): the one with a `kernel/` folder.
fn module_dir(root: &Path) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(d) = fs::read_dir(root.join(base)) {
            for e in d.filter_map(|e| e.ok()) {
                if e.path().join("kernel").is_dir() {
                    return Ok(e.path());
                }
            }
        }
    }
    bail!("no kernel modules under {}", root.display())
}

/// Cuts the compressed ELF kernel out of a bzImage and decompresses it (for PVH boot).
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let data = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let formats: [(&[u8], &str); 4] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], "xz"),
        (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
        (&[0x1f, 0x8b, 0x08, 0x00], "gzip"),
    ];
    for (magic, prog) in formats {
        let offsets = data
            .windows(magic.len())
            .enumerate()
            .filter(|(_, w)| *w == magic)
            .map(|(i, _)| i);
        for off in offsets {
            let Ok(mut child) = Command::new(prog)
                .arg("-dqc")
                .stdin(Stdio::piped())
                .stdout(File::create(out)?)
                .stderr(Stdio::null())
                .spawn()
            else {
                break;
            };
            // The payload is followed by other data: the decompressor may stop reading early.
            let _ = child.stdin.take().unwrap().write_all(&data[off..]);
            let _ = child.wait()?;
            let mut head = [0u8; 4];
            let elf = File::open(out)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && head == *b"\x7fELF";
            if elf {
                return Ok(());
            }
        }
    }
    let _ = fs::remove_file(out);
    bail!("no compressed ELF kernel found in {}", vmlinuz.display())
}

// ---------------------------------------------------------------------------------------------
// initramfs: busybox + modules.

/// Returns the cached base initramfs, built now or before (true: built now).
fn initrd(k: &Kernel, modules: &[String]) -> Result<(PathBuf, bool)> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox (`cargo xtask setup` installs busybox-static)")?;
    let bb = fs::read(&busybox)?;
    ensure!(
        !has_interpreter(&bb),
        "{} is linked dynamically: install busybox-static (`cargo xtask setup`)",
        busybox.display()
    );
    let stamp = format!(
        "{}\nmodules: {}\nbusybox: {} bytes\n{INIT}",
        k.stamp,
        modules.join(" "),
        bb.len()
    );
    let out = k.dir.join("initrd.cpio");
    let stamp_path = k.dir.join("initrd.stamp");
    if out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok((out, false));
    }
    let stage = k.dir.join("initrd.d");
    remove_dir(&stage)?;
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "lib/modules",
        "mnt/host",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::write(stage.join("bin/busybox"), &bb)?;
    fs::set_permissions(stage.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    symlink("busybox", stage.join("bin/sh"))?;
    fs::write(stage.join("init"), INIT)?;
    fs::set_permissions(stage.join("init"), fs::Permissions::from_mode(0o755))?;

    // depmod/modprobe -b/-d BASE look in BASE/lib/modules/KVER, whichever layout the package has.
    let base = k.dir.join("depmod");
    remove_dir(&base)?;
    fs::create_dir_all(base.join("lib/modules"))?;
    symlink(&k.moddir, base.join("lib/modules").join(&k.kver))?;
    if !k.moddir.join("modules.dep").is_file() {
        // Debian's packages ship no modules.dep.
        run(Command::new("depmod").arg("-b").arg(&base).arg(&k.kver))?;
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for m in modules {
        let deps = Command::new("modprobe")
            .arg("-d")
            .arg(&base)
            .args(["-S", &k.kver, "--show-depends", m])
            .output()
            .context("running modprobe --show-depends")?;
        if !deps.status.success() {
            eprintln!(
                "xtask: vm {}: warning: no module {m} in {}, skipped",
                k.series.name(),
                k.kver
            );
            continue;
        }
        // "insmod PATH [options]" in load order; "builtin NAME" needs nothing.
        for line in String::from_utf8_lossy(&deps.stdout).lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("insmod") {
                continue;
            }
            let path = PathBuf::from(w.next().context("modprobe printed no path")?);
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            let (name, tool) = match file.rsplit_once('.') {
                Some((n, "xz")) => (n.to_string(), Some("xz")),
                Some((n, "zst")) => (n.to_string(), Some("zstd")),
                Some((n, "gz")) => (n.to_string(), Some("gzip")),
                _ => (file.to_string(), None),
            };
            if !seen.insert(name.clone()) {
                continue;
            }
            let dest = stage.join("lib/modules").join(&name);
            match tool {
                Some(tool) => run(Command::new(tool)
                    .arg("-dqc")
                    .arg(&path)
                    .stdout(File::create(&dest)?))?,
                None => {
                    fs::copy(&path, &dest)?;
                }
            }
            order.push(name);
        }
    }
    fs::write(stage.join("etc/modules"), order.join("\n") + "\n")?;
    let tmp = k.dir.join("initrd.cpio.tmp");
    cpio(&stage, &tmp)?;
    fs::rename(&tmp, &out)?;
    fs::write(&stamp_path, &stamp)?;
    remove_dir(&stage)?;
    remove_dir(&base)?;
    eprintln!(
        "xtask: vm {}: initramfs with {} modules, {:.1} MB",
        k.series.name(),
        order.len(),
        fs::metadata(&out)?.len() as f64 / 1e6
    );
    Ok((out, true))
}

/// Whether an ELF64 file has a PT_INTERP program header (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return true;
    }
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// A newc archive of `dir`'s contents (owner root, sorted, reproducible).
fn cpio(dir: &Path, out: &Path) -> Result<()> {
    fn walk(root: &Path, d: &Path, list: &mut Vec<String>) -> Result<()> {
        for e in fs::read_dir(d)? {
            let p = e?.path();
            list.push(p.strip_prefix(root)?.to_string_lossy().into_owned());
            if fs::symlink_metadata(&p)?.is_dir() {
                walk(root, &p, list)?;
            }
        }
        Ok(())
    }
    let mut list = Vec::new();
    walk(dir, dir, &mut list)?;
    list.sort();
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(File::create(out)?)
        .spawn()
        .context("running cpio")?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all((list.join("\n") + "\n").as_bytes())?;
    let status = child.wait()?;
    ensure!(status.success(), "cpio failed ({status})");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// boot

struct Boot {
    secs: f64,
    exit: Option<i32>,
    outcome: Outcome,
    console: Vec<String>,
}

/// The guest's `/ct-trace-vm.sh`: in the current directory, with `env` exported, the commands
/// (argv each) in turn; its exit code is the last non-zero one, or 0.
pub fn script(env: &[(&str, String)], commands: &[Vec<String>]) -> Result<String> {
    let cwd = env::current_dir()?;
    let mut s = format!("cd {} 2>/dev/null || cd /\n", quote(&cwd.to_string_lossy()));
    for (k, v) in env {
        writeln!(s, "export {k}={}", quote(v))?;
    }
    let argv = |c: &Vec<String>| c.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    if let [command] = commands {
        writeln!(s, "exec {}", argv(command))?;
        return Ok(s);
    }
    s.push_str("rc=0\n");
    for c in commands {
        writeln!(s, "echo {}", quote(&format!("ct-trace-vm: $ {}", argv(c))))?;
        writeln!(s, "{} || rc=$?", argv(c))?;
    }
    s.push_str("exit $rc\n");
    Ok(s)
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Boots `k` with the cached initramfs `base` plus the job's script; `timeout` in seconds.
fn boot(
    vm: &Path,
    k: &Kernel,
    base: &Path,
    job: &Job,
    accel: Accel,
    timeout: u64,
    opts: &Opts,
) -> Result<Boot> {
    let name = job.name();
    // The cached base + a small archive holding the command: the kernel unpacks concatenated
    // newc archives in order.
    let rundir = vm
        .join("run")
        .join(format!("{}-{}", std::process::id(), name.replace('/', "-")));
    remove_dir(&rundir)?;
    fs::create_dir_all(rundir.join("extra"))?;
    let result = (|| {
        fs::write(rundir.join("extra/ct-trace-vm.sh"), &job.script)?;
        fs::write(
            rundir.join("extra/ct-trace-vm.workdir"),
            workdir()?.to_string_lossy().as_bytes(),
        )?;
        cpio(&rundir.join("extra"), &rundir.join("extra.cpio"))?;
        let initrd = rundir.join("initrd");
        fs::copy(base, &initrd)?;
        let mut f = fs::OpenOptions::new().append(true).open(&initrd)?;
        f.write_all(&fs::read(rundir.join("extra.cpio"))?)?;
        drop(f);
        qemu(k, &name, &initrd, accel, timeout, opts)
    })();
    let _ = fs::remove_dir_all(&rundir);
    result
}

/// The workspace the guest must see at its own path (its `target/` and `tests/`).
fn workdir() -> Result<PathBuf> {
    crate::root()
        .canonicalize()
        .context("resolving the workspace root")
}

fn qemu(
    k: &Kernel,
    name: &str,
    initrd: &Path,
    accel: Accel,
    timeout: u64,
    opts: &Opts,
) -> Result<Boot> {
    let mut cmd = Command::new("qemu-system-x86_64");
    match accel {
        // -arch-capabilities: nested KVM rejects the MSR that `-cpu host` would set.
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"]),
        _ => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    cmd.args(["-m", &opts.mem, "-smp", &opts.smp.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&k.vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 oops=panic loglevel=4",
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            "-virtfs",
        ])
        .arg(format!(
            "local,path={},mount_tag=work,security_model=none,readonly=on,multidevs=remap",
            workdir()?.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!(
        "xtask: vm {name}: booting {} ({}, timeout {} s)",
        k.kver,
        if accel == Accel::Kvm { "KVM" } else { "TCG" },
        timeout
    );
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let readers = [
        (
            false,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        (true, Box::new(child.stderr.take().unwrap())),
    ]
    .map(|(is_err, pipe)| {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                if tx.send((is_err, line)).is_err() {
                    break;
                }
                buf.clear();
            }
        })
    });
    drop(tx);
    let deadline = start + Duration::from_secs(timeout);
    let mut console = Vec::new();
    let mut timed_out = false;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((is_err, line)) => {
                if is_err {
                    eprintln!("[{name}] qemu: {line}");
                } else {
                    println!("[{name}] {line}");
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    let secs = secs(start);
    for r in readers {
        let _ = r.join();
    }
    // Whatever arrived between the timeout and the kill, and a last line without a newline
    // (e.g. the test that hung: `test NAME ... `).
    for (_, line) in rx.try_iter() {
        println!("[{name}] {line}");
        console.push(line);
    }
    let exit = console.iter().rev().find_map(|l| {
        let at = l.find(MARKER)? + MARKER.len();
        let digits: String = l[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse::<i32>().ok()
    });
    let find = |pat: &str| console.iter().find(|l| l.contains(pat)).map(|l| l.trim());
    let outcome = if timed_out {
        Outcome::Failed(match exit {
            Some(code) => {
                format!("hung after the command exited ({code}): killed after {timeout} s")
            }
            None => format!(
                "timed out after {timeout} s{}",
                find("Kernel panic")
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            ),
        })
    } else {
        match exit {
            Some(0) => Outcome::Passed,
            Some(code) => Outcome::Failed(format!("the command exited with {code}")),
            None => Outcome::Failed(if let Some(l) = find("Kernel panic") {
                format!("kernel panic: {l}")
            } else if let Some(l) = find("ct-trace-vm: error:") {
                l.to_string()
            } else {
                format!("the guest reported no exit code (qemu: {status})")
            }),
        }
    };
    Ok(Boot {
        secs,
        exit,
        outcome,
        console,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_generic_flavour() {
        assert!(generic_abi("0-56"));
        assert!(generic_abi("117+deb13"));
        assert!(generic_abi("13+deb14"));
        assert!(!generic_abi("0-56-cloud"));
        assert!(!generic_abi("117+deb13-rt"));
    }

    #[test]
    fn orders_like_sort_v() {
        assert_eq!(
            natural_cmp("linux-image-6.12.9+deb13", "linux-image-6.12.117+deb13"),
            Ordering::Less
        );
        assert_eq!(
            natural_cmp("linux-image-6.12.115+deb13.1", "linux-image-6.12.115+deb13"),
            Ordering::Greater
        );
        assert_eq!(natural_cmp("6.1.0-56", "6.1.0-56"), Ordering::Equal);
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(quote("uname"), "uname");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
