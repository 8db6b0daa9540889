//! The flood every storm run sends: `ctt-flood` in the server namespace, every segment INVALID
//! at the node, its rate as ctt-flood measured it.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{process::run_in, topology::Topo, Bins, FLOOD_DST, SERVER};

pub(super) struct Flood {
    pub(super) sent: u64,
    pub(super) secs: f64,
    pub(super) rate: f64,
}

pub(super) fn flood(topo: &Topo, bins: &Bins, count: u64) -> Result<(Flood, Instant)> {
    let t0 = Instant::now();
    let c = count.to_string();
    let out = run_in(
        &topo.srv,
        &[bins.flood.as_str(), SERVER, FLOOD_DST, &c],
        Duration::from_secs(600),
    )?;
    // "sent N in S s (R/s)"
    let w: Vec<&str> = out.split_whitespace().collect();
    let (sent, secs) = match w.as_slice() {
        ["sent", n, "in", s, "s", ..] => (n.parse()?, s.parse::<f64>()?),
        _ => bail!("ctt-flood printed `{}`", out.trim()),
    };
    Ok((
        Flood {
            sent,
            secs,
            rate: sent as f64 / secs,
        },
        t0,
    ))
}
