//! The bench's three namespaces: client -- node -- server, wired as the lab's and the tests'
//! (`conntrack_common::harness::netns`).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result};
use conntrack_common::harness::netns::{self, Dnat, Wiring};

use super::{process::sh_in, IPERF_PORT, LOAD_PORT, SERVER, SERVICE};
use crate::host::output;

/// client (10.77.1.2) -- node (routes; DNATs the Service 10.96.0.10 ports 5201 and 7000 to the
/// server; blackholes 10.77.9.0/24) -- server (10.77.2.2). Namespaces deleted on drop.
pub(super) struct Topo {
    pub(super) cli: String,
    pub(super) node: String,
    pub(super) srv: String,
    made: Vec<String>,
}

impl Topo {
    pub(super) fn build() -> Result<Topo> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let mut t = Topo {
            cli: format!("ctb-{pid}-cli"),
            node: format!("ctb-{pid}-node"),
            srv: format!("ctb-{pid}-srv"),
            made: Vec::new(),
        };
        for ns in [t.cli.clone(), t.node.clone(), t.srv.clone()] {
            netns::add(&ns)?;
            t.made.push(ns.clone());
        }
        let service: IpAddr = SERVICE.parse()?;
        let to = |port: &str| -> Result<SocketAddr> { Ok(format!("{SERVER}:{port}").parse()?) };
        let dnat = [
            ("80", "8080"),
            (IPERF_PORT, IPERF_PORT),
            (LOAD_PORT, LOAD_PORT),
        ]
        .into_iter()
        .map(|(port, dst)| {
            Ok(Dnat {
                service,
                port: port.parse()?,
                to: to(dst)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        // The lab's and the tests' wiring (one implementation), on 10.77 as the tests'.
        netns::wire(&Wiring {
            client: &t.cli,
            node: &t.node,
            server: &t.srv,
            v4: "10.77",
            v6: None,
            dnat: &dnat,
            node_routes: &["blackhole 10.77.9.0/24"],
        })?;
        // crr opens tens of thousands of connections: the client may reuse its ports in
        // TIME_WAIT (after a second), from a wide range.
        sh_in(
            &t.cli,
            "sysctl -qw net.ipv4.tcp_tw_reuse=1 && echo 1024 65535 > /proc/sys/net/ipv4/ip_local_port_range",
        )?;
        Ok(t)
    }

    /// The node's conntrack `invalid` counter (all CPUs).
    pub(super) fn kernel_invalid(&self) -> Result<u64> {
        use conntrack_common::kstat;
        netns::kernel_counters(&self.node)?
            .get("invalid")
            .copied()
            .with_context(|| format!("no invalid column in {}", kstat::PATH))
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in &self.made {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Namespaces of an earlier bench whose process is gone (killed before its guard ran).
fn remove_stale_namespaces() {
    let Ok(list) = output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("ctb-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
