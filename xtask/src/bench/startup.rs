//! Start-up: exec to ready, peak and idle memory.

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};

use super::{
    process::{vm_kib, Out, Proc, ReadyPath},
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
    let ready = format!("{}-start.ready", cfg.shm);
    for _ in 0..cfg.startups {
        let t0 = Instant::now();
        let mut p = Proc::start_ready(
            &topo.node,
            &[
                bins.ct_trace.as_str(),
                "-q",
                "-d",
                "60",
                "--ready-file",
                &ready,
            ],
            Some(ReadyPath::new(&ready)),
            Out::To(Stdio::null()),
            Out::Keep,
        )?;
        p.wait_ready(
            "ct-trace",
            Duration::from_secs(30),
            Duration::from_millis(1),
        )?;
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
    Ok(s)
}
