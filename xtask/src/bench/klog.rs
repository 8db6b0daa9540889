//! The kernel's own logging of INVALID packets: the storm's flood with conntrack's
//! `nf_conntrack_log_invalid=6` instead of ct-trace, its lines counted from `/dev/kmsg`.

use std::{
    fs::File,
    io::{self, Read, Write as _},
    os::unix::{fs::OpenOptionsExt as _, io::AsRawFd as _},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    flood::{flood, Flood},
    process::sh_in,
    topology::Topo,
    Bins, Config,
};
use crate::host::output;

/// The storm's run with the kernel's own log instead of ct-trace.
pub(super) struct KlogRun {
    pub(super) label: String,
    pub(super) flood: Flood,
    /// The kernel's INVALID verdicts during the flood.
    pub(super) kernel: u64,
    /// What the log showed, or why it could not be counted.
    pub(super) klog: Result<KlogStorm, String>,
}

pub(super) struct KlogStorm {
    /// Log records of conntrack's INVALID TCP logging read from /dev/kmsg.
    pub(super) read: u64,
    /// Records overwritten in the ring buffer before they could be read (sequence gaps).
    pub(super) overwritten: u64,
    pub(super) ring_lines: u64,
    pub(super) notes: Vec<String>,
}

/// Restores a sysctl file on drop.
struct Sysctl {
    ns: Option<String>,
    path: String,
    old: String,
}

impl Sysctl {
    fn set(ns: Option<&str>, path: &str, value: &str) -> Result<Sysctl> {
        let old = read_sysctl(ns, path)?;
        write_sysctl(ns, path, value)?;
        Ok(Sysctl {
            ns: ns.map(str::to_string),
            path: path.to_string(),
            old,
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = write_sysctl(self.ns.as_deref(), &self.path, &self.old) {
            eprintln!("bench: restoring {}: {e:#}", self.path);
        }
    }
}

fn read_sysctl(ns: Option<&str>, path: &str) -> Result<String> {
    Ok(match ns {
        Some(ns) => sh_in(ns, &format!("cat {path}"))?,
        None => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
    }
    .trim()
    .to_string())
}

fn write_sysctl(ns: Option<&str>, path: &str, value: &str) -> Result<()> {
    match ns {
        Some(ns) => sh_in(ns, &format!("echo {value} > {path}")).map(drop),
        None => std::fs::write(path, value).with_context(|| format!("writing {path}")),
    }
}

/// The IPv4 logger bound in a namespace (`/proc/net/netfilter/nf_log`, family 2).
fn ipv4_logger(ns: &str) -> Result<String> {
    let t = sh_in(ns, "cat /proc/net/netfilter/nf_log")?;
    Ok(t.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("2")).then(|| w.next().unwrap_or("NONE").to_string())
        })
        .unwrap_or_else(|| "NONE".into()))
}

/// What a /dev/kmsg reader saw between two marker records.
#[derive(Default)]
struct KmsgCount {
    started: bool,
    ended: bool,
    matched: u64,
    gaps: u64,
    other: u64,
    last_seq: Option<u64>,
}

/// Reads /dev/kmsg (non-blocking, from its end) until the end marker or `stop`: counts the
/// conntrack INVALID TCP lines between the two markers, and the sequence numbers skipped
/// (records overwritten before they were read).
fn kmsg_reader(
    mut f: File,
    start: String,
    end: String,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<KmsgCount>> {
    thread::spawn(move || {
        let mut c = KmsgCount::default();
        let mut buf = vec![0u8; 16 * 1024];
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(900) {
            match f.read(&mut buf) {
                Ok(0) => thread::sleep(Duration::from_millis(1)),
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let Some((head, msg)) = rec.split_once(';') else {
                        continue;
                    };
                    let Some(seq) = head.split(',').nth(1).and_then(|s| s.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let msg = msg.lines().next().unwrap_or_default();
                    if !c.started {
                        if msg.contains(&start) {
                            c.started = true;
                            c.last_seq = Some(seq);
                            started.store(true, Ordering::Relaxed);
                        }
                        continue;
                    }
                    if let Some(last) = c.last_seq {
                        c.gaps += seq.saturating_sub(last + 1);
                    }
                    c.last_seq = Some(seq);
                    if msg.contains(&end) {
                        c.ended = true;
                        break;
                    }
                    if msg.contains("nf_ct_proto_6") {
                        c.matched += 1;
                    } else {
                        c.other += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                // EPIPE: records were overwritten; the next read resumes at the oldest one
                // left, and the gap shows in the sequence numbers.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(e) => return Err(e).context("reading /dev/kmsg"),
            }
        }
        Ok(c)
    })
}

pub(super) fn kernel_log(topo: &Topo, bins: &Bins, cfg: &Config) -> Result<KlogRun> {
    let mut notes = Vec::new();
    let label = "kernel log (nf_conntrack_log_invalid=6)".to_string();
    if let Err(msg) = need_logger(&topo.node, &mut notes)? {
        eprintln!("bench: kernel log: {msg}");
        // The flood still runs, with the logging switched on: its rate is still telling.
        return unmeasured(topo, bins, cfg, label, msg);
    }
    // The syslog logger writes nothing for a namespace other than the first unless
    // nf_log_all_netns is set (a node's own namespace is the first; the bench's is not).
    let all_netns = "/proc/sys/net/netfilter/nf_log_all_netns";
    let _all = if Path::new(all_netns).exists() && read_sysctl(None, all_netns)? == "0" {
        notes.push(
            "net.netfilter.nf_log_all_netns was 0: set to 1 during this run (else the kernel logs nothing from a namespace other than the first), restored after".into(),
        );
        Some(Sysctl::set(None, all_netns, "1")?)
    } else {
        None
    };

    let kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg");
    let kmsg = match kmsg {
        Ok(f) => f,
        Err(e) => {
            let msg = format!("/dev/kmsg cannot be read: {e}");
            return unmeasured(topo, bins, cfg, label, msg);
        }
    };
    let Logged {
        flooded,
        kernel,
        count,
    } = logged_flood(topo, bins, cfg, kmsg)?;
    let (f, _) = flooded?;
    if !count.ended {
        notes.push("the end marker was not read back: the count may be short".into());
    }
    if count.other > 0 {
        notes.push(format!(
            "{} other kernel log records in the same window (not counted)",
            count.other
        ));
    }
    let ring_lines = output(&mut Command::new("dmesg"))
        .map(|t| t.lines().filter(|l| l.contains("nf_ct_proto_6")).count() as u64)
        .unwrap_or(0);
    eprintln!(
        "bench: storm, kernel log: {:.0}/s, {} lines read, {} overwritten",
        f.rate, count.matched, count.gaps
    );
    Ok(KlogRun {
        label,
        flood: f,
        kernel,
        klog: Ok(KlogStorm {
            read: count.matched,
            overwritten: count.gaps,
            ring_lines,
            notes,
        }),
    })
}

/// An IPv4 logger bound in `ns`, loading nf_log_syslog when none is; `Err(why)` when there
/// still is none.
fn need_logger(ns: &str, notes: &mut Vec<String>) -> Result<Result<(), String>> {
    let mut logger = ipv4_logger(ns)?;
    if logger == "NONE" {
        let m = Command::new("modprobe").arg("nf_log_syslog").output();
        logger = ipv4_logger(ns)?;
        if logger == "NONE" {
            let why = match m {
                Ok(o) if o.status.success() => "modprobe nf_log_syslog succeeded".to_string(),
                Ok(o) => format!(
                    "modprobe nf_log_syslog failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => format!("modprobe nf_log_syslog could not run: {e}"),
            };
            return Ok(Err(format!(
                "no IPv4 logger in the node namespace (/proc/net/netfilter/nf_log: 2 NONE); {why}"
            )));
        }
        notes.push(format!(
            "nf_log_syslog was loaded by the bench (IPv4 logger: {logger})"
        ));
    }
    Ok(Ok(()))
}

/// The flood with the logging switched on when its lines cannot be counted (`why`).
fn unmeasured(
    topo: &Topo,
    bins: &Bins,
    cfg: &Config,
    label: String,
    why: String,
) -> Result<KlogRun> {
    let _log = Sysctl::set(
        Some(&topo.node),
        "/proc/sys/net/netfilter/nf_conntrack_log_invalid",
        "6",
    )?;
    let before = topo.kernel_invalid()?;
    let (f, _) = flood(topo, bins, cfg.storm_count)?;
    Ok(KlogRun {
        label,
        kernel: topo.kernel_invalid()? - before,
        flood: f,
        klog: Err(why),
    })
}

/// What [`logged_flood`] saw.
struct Logged {
    /// The flood's outcome (an error of the reader comes first).
    flooded: Result<(Flood, Instant)>,
    /// The kernel's INVALID verdicts during the flood.
    kernel: u64,
    count: KmsgCount,
}

/// The flood with the logging switched on, between two marker records written to /dev/kmsg and
/// read back from `kmsg`: the flood's outcome, the kernel's INVALID verdicts during it and what
/// the reader counted.
fn logged_flood(topo: &Topo, bins: &Bins, cfg: &Config, kmsg: File) -> Result<Logged> {
    // SAFETY: lseek on a file descriptor we own.
    unsafe { libc::lseek(kmsg.as_raw_fd(), 0, libc::SEEK_END) };
    let mut marker_out = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .context("opening /dev/kmsg for the marker records")?;
    let tag = format!("ctb-{}-{}", std::process::id(), cfg.storm_count);
    let (start, end) = (format!("{tag} start"), format!("{tag} end"));
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = kmsg_reader(
        kmsg,
        start.clone(),
        end.clone(),
        started.clone(),
        stop.clone(),
    );
    // <14>: user facility, info level (below the console's level).
    marker_out.write_all(format!("<14>{start}\n").as_bytes())?;
    let t0 = Instant::now();
    while !started.load(Ordering::Relaxed) {
        if t0.elapsed() > Duration::from_secs(5) {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
            bail!("the start marker written to /dev/kmsg was not read back");
        }
        thread::sleep(Duration::from_millis(2));
    }

    let log = Sysctl::set(
        Some(&topo.node),
        "/proc/sys/net/netfilter/nf_conntrack_log_invalid",
        "6",
    )?;
    let before = topo.kernel_invalid()?;
    let flooded = flood(topo, bins, cfg.storm_count);
    let kernel = topo.kernel_invalid()? - before;
    drop(log);
    thread::sleep(Duration::from_millis(200));
    let _ = marker_out.write_all(format!("<14>{end}\n").as_bytes());
    let t1 = Instant::now();
    while !handle.is_finished() && t1.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let count = handle
        .join()
        .map_err(|_| anyhow::anyhow!("the /dev/kmsg reader panicked"))??;
    Ok(Logged {
        flooded,
        kernel,
        count,
    })
}
