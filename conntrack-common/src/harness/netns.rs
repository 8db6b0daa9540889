//! The one topology of the lab, the integration tests and the bench: three network namespaces,
//! client -- node -- server, wired by [`wire`] (veths, addresses, default routes through the
//! node, forwarding, and in the node the Service's DNAT rules and extra routes each user needs).
//! Every address exists only inside the namespaces; the host's are never touched. Who names
//! the namespaces, and who deletes them, stays with each user (the lab removes those of labs
//! that were killed, the tests name theirs after the test, the bench after its run).
//! [`kernel_counters`] reads a namespace's conntrack counters for the tests and the bench.

use std::{
    collections::HashMap,
    format,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    string::{String, ToString as _},
};

use crate::kstat;

/// A command that failed: which, and what it said.
#[derive(Debug, thiserror::Error)]
#[error("`{cmd}` failed: {detail}")]
pub struct CommandError {
    pub cmd: String,
    pub detail: String,
}

/// Runs a command, its output captured; an error carries the command and what it printed.
pub fn run(cmd: &mut Command) -> Result<String, CommandError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CommandError {
            cmd: shown.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(CommandError {
            cmd: shown,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<String, CommandError> {
    run(Command::new("ip").args(args))
}

/// `ip netns exec NS ARGS...`
pub fn exec_in(ns: &str, args: &[&str]) -> Result<String, CommandError> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// Makes the namespace `ns`, its loopback up.
pub fn add(ns: &str) -> Result<(), CommandError> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"]).map(drop)
}

/// Why a namespace's conntrack counters could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error(transparent)]
    Read(#[from] CommandError),
    #[error("reading {} in {ns}", kstat::PATH)]
    Parse {
        ns: String,
        #[source]
        source: kstat::ParseError,
    },
}

/// The kernel's conntrack counters of `ns` (`/proc/net/stat/nf_conntrack` read inside it,
/// summed over CPUs by [`kstat::parse`]): what the tests and the bench compare ct-trace with.
pub fn kernel_counters(ns: &str) -> Result<HashMap<String, u64>, CountersError> {
    let text = exec_in(ns, &["cat", kstat::PATH])?;
    kstat::parse(&text).map_err(|source| CountersError::Parse {
        ns: ns.to_string(),
        source,
    })
}

/// kube-proxy's iptables mode in one rule: TCP to `service:port` is DNATed in the node's
/// PREROUTING to `to` (`ip6tables` for IPv6). Nothing drops INVALID (the vulnerable default
/// before kube-proxy 1.15).
pub struct Dnat {
    pub service: IpAddr,
    pub port: u16,
    pub to: SocketAddr,
}

/// A client -- node -- server topology in three existing namespaces: the node's `eth1` to the
/// client's `eth0` on `V4.1.0/24` (node `.1`, client `.2`), its `eth2` to the server's `eth0` on
/// `V4.2.0/24`, default routes through the node, forwarding on in the node; with `v6`, also
/// `V6:1::/64` and `V6:2::/64` the same way (without duplicate address detection, which would
/// hold the addresses back for seconds). Then the node's `dnat` rules and `node_routes`.
pub struct Wiring<'a> {
    pub client: &'a str,
    pub node: &'a str,
    pub server: &'a str,
    /// The first two octets, e.g. `10.78`.
    pub v4: &'a str,
    /// The first group, e.g. `fd77`.
    pub v6: Option<&'a str>,
    /// The Service's rules in the node (the lab writes kube-proxy's full chains itself).
    pub dnat: &'a [Dnat],
    /// Routes added in the node, as `ip route add` takes them (`blackhole 10.77.9.0/24`: where
    /// floods go, routed to nowhere so that nothing answers them).
    pub node_routes: &'a [&'a str],
}

pub fn wire(w: &Wiring) -> Result<(), CommandError> {
    let (c, n, s) = (w.client, w.node, w.server);
    ip(&[
        "-n", n, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", c,
    ])?;
    ip(&[
        "-n", n, "link", "add", "eth2", "type", "veth", "peer", "name", "eth0", "netns", s,
    ])?;
    for (ns, dev, net, host) in [
        (n, "eth1", 1, 1),
        (n, "eth2", 2, 1),
        (c, "eth0", 1, 2),
        (s, "eth0", 2, 2),
    ] {
        let a = format!("{}.{net}.{host}/24", w.v4);
        ip(&["-n", ns, "addr", "add", &a, "dev", dev])?;
        if let Some(v6) = w.v6 {
            let a = format!("{v6}:{net}::{host}/64");
            ip(&["-n", ns, "addr", "add", &a, "dev", dev, "nodad"])?;
        }
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    for (ns, net) in [(c, 1), (s, 2)] {
        let via = format!("{}.{net}.1", w.v4);
        ip(&["-n", ns, "route", "add", "default", "via", &via])?;
        if let Some(v6) = w.v6 {
            let via = format!("{v6}:{net}::1");
            ip(&["-n", ns, "-6", "route", "add", "default", "via", &via])?;
        }
    }
    exec_in(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    if w.v6.is_some() {
        exec_in(n, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    }
    for d in w.dnat {
        let tables = if d.to.is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        let (svc, port, to) = (d.service.to_string(), d.port.to_string(), d.to.to_string());
        exec_in(
            n,
            &[
                tables,
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &svc,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        )?;
    }
    for r in w.node_routes {
        let mut args = std::vec!["-n", n, "route", "add"];
        args.extend(r.split_whitespace());
        ip(&args)?;
    }
    Ok(())
}
