//! Start-up: exec to ready, peak and idle memory.

use std::{
    path::PathBuf,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};

use super::{
    process::{vm_kib, Proc},
    topology::Topo,
    Bins, Config,
};

pub(super) struct Startup {
    pub(super) ready_ms: Vec<f64>,
    pub(super) peak_kib: Vec<f64>,
    pub(super) idle_kib: Vec<f64>,
}

pub(super) fn startup(topo: &Topo, bins: &Bins, cfg: &Config) -> Result<Startup> {
    let mut s = Startup {
        ready_ms: Vec::new(),
        peak_kib: Vec::new(),
        idle_kib: Vec::new(),
    };
    let ready = PathBuf::from(format!("{}-start.ready", cfg.shm));
    for _ in 0..cfg.startups {
        let _ = std::fs::remove_file(&ready);
        let t0 = Instant::now();
        let mut p = Proc::start(
            &topo.node,
            &[
                bins.ct_trace.as_str(),
                "-q",
                "-d",
                "60",
                "--ready-file",
                ready.to_str().unwrap(),
            ],
            Stdio::null(),
            Stdio::piped(),
        )?;
        while !ready.exists() {
            if p.exited().is_some() {
                let f = p.finish(Duration::from_secs(1))?;
                bail!(
                    "ct-trace exited before it was ready ({}): {}",
                    f.status,
                    f.stderr.trim()
                );
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "ct-trace not ready after 30 s"
            );
            thread::sleep(Duration::from_millis(1));
        }
        s.ready_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        s.peak_kib.push(vm_kib(p.pid(), "VmHWM:")? as f64);
        thread::sleep(Duration::from_secs(2));
        s.idle_kib.push(vm_kib(p.pid(), "VmRSS:")? as f64);
        let f = p.interrupt(Duration::from_secs(15))?;
        ensure!(
            f.status.success(),
            "ct-trace exited with {}: {}",
            f.status,
            f.stderr.trim()
        );
        eprintln!(
            "bench: start-up: ready in {:.0} ms",
            s.ready_ms.last().unwrap()
        );
    }
    let _ = std::fs::remove_file(&ready);
    Ok(s)
}
