//! The bench's three namespaces: client -- node -- server.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

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
            output(Command::new("ip").args(["netns", "add", &ns]))?;
            t.made.push(ns.clone());
            sh_in(&ns, "ip link set lo up")?;
        }
        let (c, n, s) = (&t.cli, &t.node, &t.srv);
        let host = |cmd: String| output(Command::new("sh").args(["-c", &cmd]));
        host(format!(
            "ip -n {n} link add eth1 type veth peer name eth0 netns {c}"
        ))?;
        host(format!(
            "ip -n {n} link add eth2 type veth peer name eth0 netns {s}"
        ))?;
        for (ns, dev, addr) in [
            (n, "eth1", "10.77.1.1/24"),
            (n, "eth2", "10.77.2.1/24"),
            (c, "eth0", "10.77.1.2/24"),
            (s, "eth0", "10.77.2.2/24"),
        ] {
            host(format!(
                "ip -n {ns} addr add {addr} dev {dev} && ip -n {ns} link set {dev} up"
            ))?;
        }
        sh_in(c, "ip route add default via 10.77.1.1")?;
        sh_in(s, "ip route add default via 10.77.2.1")?;
        // crr opens tens of thousands of connections: the client may reuse its ports in
        // TIME_WAIT (after a second), from a wide range.
        sh_in(
            c,
            "sysctl -qw net.ipv4.tcp_tw_reuse=1 && echo 1024 65535 > /proc/sys/net/ipv4/ip_local_port_range",
        )?;
        sh_in(n, "sysctl -qw net.ipv4.ip_forward=1")?;
        for (port, to) in [
            ("80", "8080"),
            (IPERF_PORT, IPERF_PORT),
            (LOAD_PORT, LOAD_PORT),
        ] {
            sh_in(
                n,
                &format!(
                    "iptables -t nat -A PREROUTING -d {SERVICE} -p tcp --dport {port} -j DNAT --to-destination {SERVER}:{to}"
                ),
            )?;
        }
        sh_in(n, "ip route add blackhole 10.77.9.0/24")?;
        Ok(t)
    }

    /// The node's conntrack `invalid` counter (all CPUs).
    pub(super) fn kernel_invalid(&self) -> Result<u64> {
        use conntrack_common::kstat;
        let text = sh_in(&self.node, &format!("cat {}", kstat::PATH))?;
        kstat::parse(&text)?
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
