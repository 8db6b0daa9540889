//! `cargo xtask vm`: boot Debian kernels under qemu and run a command inside, with the host's
//! userland (ip, iptables, nft, python3, `target/`) shared read-only over virtio-9p.
//!
//! Per kernel series (5.10 from bullseye, 6.1 from bookworm, 6.12 from trixie, 7.2 from sid;
//! the generic `amd64` flavour: the `cloud-amd64` one has no 9p):
//!
//! 1. fetch (`apt.rs`, `kernel.rs`): private apt lists under `$CT_TRACE_CACHE/vm/apt` (the
//!    system's sources are only read, for the archive addresses), refreshed at most once a day;
//!    the newest kernel packages are downloaded and extracted with `dpkg -x` unless the same
//!    versions are cached; the uncompressed vmlinux is cut out of vmlinuz (qemu boots it through
//!    PVH, skipping the decompressor, which is slow under TCG).
//! 2. initramfs (`initramfs.rs`): static busybox for PID 1 (`init.sh`), the 9p and netfilter
//!    modules with their dependencies in load order, decompressed on the host (busybox insmod
//!    reads plain `.ko` only). Cached.
//! 3. boot (`qemu.rs`): qemu (TCG, unless hardware virtualisation is really usable); the guest
//!    mounts the host's `/`, chroots into it, runs the command (`guest.rs` writes its script),
//!    prints `CT_TRACE_VM_EXIT=<code>` and powers off. A panic, a hang (`--timeout`) or a missing
//!    report fails that kernel.
//!
//! `run_jobs` does all of this for a list of jobs (kernel + guest script): it prepares each
//! kernel once, before any boot, then boots the jobs `jobs` at a time (`pool.rs`; each guest has
//! one vCPU, which TCG runs on one host thread, so jobs side by side on as many host CPUs take
//! about as long as one alone). Nothing a boot writes is shared: each has its own run folder and
//! console; its console lines are echoed prefixed with the job's name. `cargo xtask vm` runs one
//! job per kernel, `cargo xtask test` its matrix (`matrix/`).
//!
//! Cache layout (`$CT_TRACE_CACHE/vm`): `apt/` (sources.list, lists, `updated` stamp),
//! `<series>/` (`pkgs`, `kver`, `version`, `config`, `vmlinux`, `root/` = the extracted packages,
//! `initrd.cpio` + `initrd.stamp`), `run/` (one folder per boot for its initramfs, removed
//! after the boot).

mod apt;
mod guest;
mod initramfs;
mod kernel;
mod pool;
mod qemu;

use std::{
    env, fs, io,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::ValueEnum;

pub use self::guest::script;
use self::{apt::Apt, kernel::Kernel};
use crate::host::{cache, print_table};

const DEFAULT_COMMAND: &str = "uname -r && cat /proc/version";

/// A Debian kernel series of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Series {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    #[value(name = "7.2")]
    V7_2,
}

impl Series {
    pub const ALL: [Series; 4] = [Series::V5_10, Series::V6_1, Series::V6_12, Series::V7_2];

    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
            Series::V7_2 => "7.2",
        }
    }

    /// (major, minor), to compare with the version a kernel feature appeared in.
    pub fn version(self) -> (u32, u32) {
        match self {
            Series::V5_10 => (5, 10),
            Series::V6_1 => (6, 1),
            Series::V6_12 => (6, 12),
            Series::V7_2 => (7, 2),
        }
    }

    /// The suites the series is taken from (the newest 5.10/6.1/6.12 builds are in
    /// `-security`; bookworm-security also carries a 6.12 backport, which this keeps out).
    fn suites(self) -> &'static [&'static str] {
        match self {
            Series::V5_10 => &["bullseye", "bullseye-security"],
            Series::V6_1 => &["bookworm", "bookworm-security"],
            Series::V6_12 => &["trixie", "trixie-security"],
            Series::V7_2 => &["sid"],
        }
    }
}

/// Whether `--accel auto` runs the guests with KVM on this machine (else TCG).
pub fn kvm_usable() -> bool {
    qemu::kvm_usable()
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
    /// Kernel series to boot (repeatable) [default: 5.10, 6.1, 6.12 and 7.2].
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
    /// Boots at a time [default: the number of host CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
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

/// How guests boot (`cargo xtask vm` flags; `cargo xtask test` sets the timeout, the deadline
/// and the boots at a time, and takes the defaults for the rest).
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
    /// Boots at a time (at least 1).
    pub jobs: usize,
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
            jobs: host_cpus(),
            deadline: None,
        }
    }
}

/// The default number of boots at a time: one per host CPU (each guest has one vCPU).
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
    /// When the boot started, in seconds after the first boot of the run started.
    pub start: Option<f64>,
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
    /// From the first boot's start to the last boot's end.
    pub boots_secs: f64,
    /// Boots at a time.
    pub width: usize,
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
        jobs: args.jobs.map_or_else(host_cpus, |n| n as usize),
        deadline: None,
    };
    let runs = run_jobs(&jobs, &opts)?;
    print_results(&runs.results);
    let failed: Vec<String> = runs
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .map(JobResult::name)
        .collect();
    if !failed.is_empty() {
        bail!("vm: failed on {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo xtask vm`'s table, one row per kernel, then why each failed kernel failed.
fn print_results(results: &[JobResult]) {
    let table: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.series.name().to_string(),
                version_cell(&r.version),
                match r.outcome {
                    Outcome::Passed => "passed",
                    Outcome::Prepared => "prepared",
                    Outcome::Failed(_) => "failed",
                }
                .into(),
                r.exit.map_or("-".into(), |c| c.to_string()),
                secs_cell(r.start),
                secs_cell(r.boot),
                Timing::cell(r.fetch),
                Timing::cell(r.initrd),
            ]
        })
        .collect();
    println!();
    print_table(
        &[
            "kernel",
            "version",
            "result",
            "exit",
            "start s",
            "wall s",
            "fetch s",
            "initramfs s",
        ],
        &table,
    );
    for r in results {
        if let Outcome::Failed(why) = &r.outcome {
            println!("{}: {why}", r.name());
        }
    }
}

/// Seconds with one decimal, `-` for none.
pub fn secs_cell(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.1}"))
}

pub fn version_cell(v: &str) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.to_string()
    }
}

/// Prepares every kernel the jobs name (package lists, downloads and initramfs images, cached),
/// then boots the jobs, `opts.jobs` at a time, in their order. A job whose kernel cannot be
/// prepared, or whose boot fails, gets `Outcome::Failed`; the error return is for what stops
/// every job (a missing tool, no package lists).
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
    let dir = cache().join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let apt = Apt::new(&dir)?;
    apt.refresh()?;

    let accel = match opts.accel {
        Accel::Auto if qemu::kvm_usable() => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        a => a,
    };

    let mut prepared: Vec<(Series, Prepared)> = Vec::new();
    for job in jobs {
        if !prepared.iter().any(|(s, _)| *s == job.series) {
            let modules: Vec<String> = initramfs::modules(job.series)
                .map(String::from)
                .chain(opts.modules.iter().cloned())
                .collect();
            prepared.push((job.series, prepare(&apt, &dir, job.series, &modules)));
        }
    }
    let prepare_secs = secs(t);

    let width = opts.jobs.clamp(1, jobs.len().max(1));
    let t = Instant::now();
    let results = pool::map(jobs.len(), width, |i| {
        let job = &jobs[i];
        let p = &prepared
            .iter()
            .find(|(s, _)| *s == job.series)
            .expect("prepared above")
            .1;
        run_job(&dir, job, p, accel, opts, t)
    });
    Ok(Runs {
        prepare_secs,
        boots_secs: secs(t),
        width,
        results,
    })
}

/// Boots one job on its prepared kernel, unless the kernel is not ready, `--fetch-only` asked
/// for no boot, or the deadline leaves too little time; `t0`: when the first boot started.
fn run_job(
    dir: &Path,
    job: &Job,
    p: &Prepared,
    accel: Accel,
    opts: &Opts,
    t0: Instant,
) -> JobResult {
    let mut r = JobResult {
        series: job.series,
        label: job.label.clone(),
        version: p.version.clone(),
        fetch: p.fetch,
        initrd: p.initrd,
        start: None,
        boot: None,
        exit: None,
        outcome: Outcome::Prepared,
        console: Vec::new(),
    };
    let (kernel, initrd) = match &p.ready {
        Err(e) => {
            r.outcome = Outcome::Failed(e.clone());
            return r;
        }
        Ok(_) if opts.fetch_only => return r,
        Ok(ready) => ready,
    };
    let left = opts
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()).as_secs());
    if let Some(left) = left.filter(|&l| l < MIN_BOOT_SECS) {
        r.outcome = Outcome::Failed(format!(
            "not booted: the time budget is spent ({left} s left)"
        ));
        return r;
    }
    let timeout = left.map_or(opts.timeout, |l| l.min(opts.timeout));
    r.start = Some(secs(t0));
    match qemu::boot(dir, kernel, initrd, job, accel, timeout, opts) {
        Ok(b) => {
            r.boot = Some(b.secs);
            r.exit = b.exit;
            r.outcome = b.outcome;
            r.console = b.console;
        }
        Err(e) => r.outcome = Outcome::Failed(format!("{e:#}")),
    }
    r
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
    let kernel = match kernel::fetch(apt, vm, s).with_context(|| format!("fetching {}", s.name())) {
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
    p.ready = match initramfs::initrd(&kernel, modules)
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

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Removes a folder tree; a folder that is not there is fine.
fn remove_dir(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}
