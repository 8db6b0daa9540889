//! One boot: the cached initramfs plus the job's script, qemu with the host's `/` and the
//! workspace shared read-only over virtio-9p, the console echoed (`[job] LINE`) and kept line by
//! line, a timeout that kills qemu, and the outcome read from the console
//! (`CT_TRACE_VM_EXIT=<code>`, a kernel panic, or an error of `init.sh`). Boots may run side by
//! side: each writes only its own run folder (`run/PID-N-JOB`, N counting this process's boots).

use std::{
    fmt::Display,
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    guest::MARKER, initramfs::cpio, kernel::Kernel, remove_dir, secs, Accel, Job, Opts, Outcome,
};

/// What one boot did.
pub(super) struct Boot {
    pub(super) secs: f64,
    pub(super) exit: Option<i32>,
    pub(super) outcome: Outcome,
    pub(super) console: Vec<String>,
}

/// Whether KVM can run stock kernels here (`--accel auto`).
pub(super) fn kvm_usable() -> bool {
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

/// Boots `k` with the cached initramfs `base` plus the job's script; `timeout` in seconds.
pub(super) fn boot(
    vm: &Path,
    k: &Kernel,
    base: &Path,
    job: &Job,
    accel: Accel,
    timeout: u64,
    opts: &Opts,
) -> Result<Boot> {
    static BOOTS: AtomicUsize = AtomicUsize::new(0);
    let name = job.name();
    // The cached base + a small archive holding the command: the kernel unpacks concatenated
    // newc archives in order. The base is only read; the copy is the boot's own.
    let rundir = vm.join("run").join(format!(
        "{}-{}-{}",
        std::process::id(),
        BOOTS.fetch_add(1, Ordering::Relaxed),
        name.replace('/', "-")
    ));
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
    crate::host::root()
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
    let mut cmd = command(k, initrd, accel, opts)?;
    eprintln!(
        "xtask: vm {name}: booting {} ({}, timeout {} s)",
        k.kver,
        if accel == Accel::Kvm { "KVM" } else { "TCG" },
        timeout
    );
    let start = Instant::now();
    let child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let w = watch(child, name, start, timeout)?;
    let exit = exit_code(&w.console);
    let outcome = outcome(&w.console, exit, w.timed_out.then_some(timeout), w.status);
    Ok(Boot {
        secs: w.secs,
        exit,
        outcome,
        console: w.console,
    })
}

/// qemu's command line: PVH boot of the vmlinux, the serial console on stdout, `/` and the
/// workspace over virtio-9p.
fn command(k: &Kernel, initrd: &Path, accel: Accel, opts: &Opts) -> Result<Command> {
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
    Ok(cmd)
}

/// What `watch` saw of a qemu run.
struct Watched {
    /// qemu's stdout, one entry per line.
    console: Vec<String>,
    /// Killed at the timeout.
    timed_out: bool,
    status: ExitStatus,
    /// From qemu's start to its exit.
    secs: f64,
}

/// Echoes qemu's stdout (the console, `[name] LINE`) and stderr (`[name] qemu: LINE`) until
/// qemu exits or `timeout` seconds from `start` pass (then kills it).
fn watch(mut child: Child, name: &str, start: Instant, timeout: u64) -> Result<Watched> {
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
    Ok(Watched {
        console,
        timed_out,
        status,
        secs,
    })
}

/// The code of the last `CT_TRACE_VM_EXIT=<code>` on the console.
fn exit_code(console: &[String]) -> Option<i32> {
    console.iter().rev().find_map(|l| {
        let at = l.find(MARKER)? + MARKER.len();
        let digits: String = l[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse::<i32>().ok()
    })
}

/// The boot's outcome from its console and reported `exit` code; `timed_out`: the timeout in
/// seconds when qemu was killed; `status`: qemu's exit status.
fn outcome(
    console: &[String],
    exit: Option<i32>,
    timed_out: Option<u64>,
    status: impl Display,
) -> Outcome {
    let find = |pat: &str| console.iter().find(|l| l.contains(pat)).map(|l| l.trim());
    if let Some(timeout) = timed_out {
        return Outcome::Failed(match exit {
            Some(code) => {
                format!("hung after the command exited ({code}): killed after {timeout} s")
            }
            None => format!(
                "timed out after {timeout} s{}",
                find("Kernel panic")
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            ),
        });
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    fn why(o: Outcome) -> String {
        match o {
            Outcome::Passed => "passed".into(),
            Outcome::Prepared => "prepared".into(),
            Outcome::Failed(why) => why,
        }
    }

    #[test]
    fn reads_the_outcome_from_the_console() {
        let done = lines(&["ct-trace-vm: running the command", "CT_TRACE_VM_EXIT=0\r"]);
        assert_eq!(exit_code(&done), Some(0));
        assert_eq!(
            why(outcome(&done, Some(0), None, "exit status: 0")),
            "passed"
        );
        let failed = lines(&["CT_TRACE_VM_EXIT=0", "x", "CT_TRACE_VM_EXIT=101"]);
        assert_eq!(exit_code(&failed), Some(101));
        assert_eq!(
            why(outcome(&failed, Some(101), None, "exit status: 0")),
            "the command exited with 101"
        );
        assert_eq!(
            why(outcome(&failed, Some(101), Some(300), "signal: 9")),
            "hung after the command exited (101): killed after 300 s"
        );
        let panic = lines(&[" Kernel panic - not syncing: Attempted to kill init! "]);
        assert_eq!(exit_code(&panic), None);
        assert_eq!(
            why(outcome(&panic, None, None, "exit status: 0")),
            "kernel panic: Kernel panic - not syncing: Attempted to kill init!"
        );
        assert_eq!(
            why(outcome(&panic, None, Some(60), "signal: 9")),
            "timed out after 60 s (Kernel panic - not syncing: Attempted to kill init!)"
        );
        let error = lines(&["ct-trace-vm: error: cannot mount bpffs"]);
        assert_eq!(
            why(outcome(&error, None, None, "exit status: 0")),
            "ct-trace-vm: error: cannot mount bpffs"
        );
        assert_eq!(
            why(outcome(&[], None, None, "exit status: 1")),
            "the guest reported no exit code (qemu: exit status: 1)"
        );
    }
}
