//! The lab's three network namespaces, `ctt-lab-PID-cli`, `-node` and `-srv`: veths, routes,
//! and in the node kube-proxy's iptables shape for one Service (10.96.0.10:80 DNATed to the
//! server's 10.78.2.2:8080). Every address exists only inside them; the host's namespaces,
//! rules and sysctls are never touched. `Lab` deletes its namespaces on drop (also on error or
//! a caught signal); namespaces left by a lab that was killed (SIGKILL) carry the dead PID in
//! their name and are removed by the next lab run or `ct-trace lab cleanup`.

use std::{
    fs::File,
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Stdio},
};

use super::LabError;

pub const PREFIX: &str = "ctt-lab-";
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 2);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 2, 2);
pub const SERVER_PORT: u16 = 8080;
pub const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// Every lab address, for ct-trace's `--host`.
pub const LAB_PREFIX: &str = "10.78.0.0/16";
/// The name kube-proxy's comments give the lab's Service (ct-trace reports it as
/// `service_name`).
pub const SERVICE_NAME: &str = "ctt-lab/web:http";

const NETNS_DIR: &str = "/run/netns";

/// The lab's namespaces; deleted on drop.
pub struct Lab {
    pub client: String,
    pub node: String,
    pub server: String,
    created: Vec<String>,
}

/// Runs a command, its output captured; an error carries the command and what it printed.
pub fn run(cmd: &mut Command) -> Result<String, LabError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            cmd: shown.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: shown,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(args))
}

/// `ip netns exec NS ARGS...`
pub fn exec_in(ns: &str, args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// The links of a client -- node -- server topology in three existing namespaces: the node's
/// `eth1` to the client's `eth0` on `V4.1.0/24` (node `.1`, client `.2`), its `eth2` to the
/// server's `eth0` on `V4.2.0/24`, default routes through the node, forwarding on in the node;
/// with `v6`, also `V6:1::/64` and `V6:2::/64` the same way (without duplicate address
/// detection, which would hold the addresses back for seconds). The one implementation: the
/// lab, `tests/scripts/demo.sh` (the lab) and the integration tests build on it, each with the
/// rules it needs in the node.
pub struct Wiring<'a> {
    pub client: &'a str,
    pub node: &'a str,
    pub server: &'a str,
    /// The first two octets, e.g. `10.78`.
    pub v4: &'a str,
    /// The first group, e.g. `fd77`.
    pub v6: Option<&'a str>,
}

pub fn wire(w: &Wiring) -> Result<(), LabError> {
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
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}.{net}.{host}/24", w.v4),
            "dev",
            dev,
        ])?;
        if let Some(v6) = w.v6 {
            let a = format!("{v6}:{net}::{host}/64");
            ip(&["-n", ns, "addr", "add", &a, "dev", dev, "nodad"])?;
        }
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    for (ns, net) in [(c, 1), (s, 2)] {
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &format!("{}.{net}.1", w.v4),
        ])?;
        if let Some(v6) = w.v6 {
            let via = format!("{v6}:{net}::1");
            ip(&["-n", ns, "-6", "route", "add", "default", "via", &via])?;
        }
    }
    exec_in(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    if w.v6.is_some() {
        exec_in(n, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    }
    Ok(())
}

impl Lab {
    /// Builds the topology for this process. Refuses when one of its names is taken.
    pub fn build() -> Result<Self, LabError> {
        let pid = std::process::id();
        let name = |role: &str| format!("{PREFIX}{pid}-{role}");
        let mut lab = Self {
            client: name("cli"),
            node: name("node"),
            server: name("srv"),
            created: Vec::new(),
        };
        for ns in [&lab.client, &lab.node, &lab.server] {
            if Path::new(NETNS_DIR).join(ns).exists() {
                return Err(LabError::Exists(ns.clone()));
            }
        }
        for ns in [lab.client.clone(), lab.node.clone(), lab.server.clone()] {
            ip(&["netns", "add", &ns])?;
            lab.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        wire(&Wiring {
            client: &lab.client,
            node: &lab.node,
            server: &lab.server,
            v4: "10.78",
            v6: None,
        })?;
        lab.kube_proxy_rules()?;
        Ok(lab)
    }

    /// kube-proxy's iptables mode for one Service with one endpoint (KUBE-SERVICES ->
    /// KUBE-SVC-* -> KUBE-SEP-* DNAT), as iptables-restore takes it; nothing drops INVALID
    /// (kube-proxy before 1.15, the vulnerable default).
    fn kube_proxy_rules(&self) -> Result<(), LabError> {
        let (svc, port, be) = (SERVICE.ip(), SERVICE.port(), SERVER_IP);
        let rules = format!(
            "*nat\n\
             :KUBE-SERVICES - [0:0]\n\
             :KUBE-SVC-CTTLABWEBHTTP0000 - [0:0]\n\
             :KUBE-SEP-CTTLABWEBHTTP0000 - [0:0]\n\
             -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A KUBE-SERVICES -m comment --comment \"{SERVICE_NAME} cluster IP\" -m tcp -p tcp -d {svc}/32 --dport {port} -j KUBE-SVC-CTTLABWEBHTTP0000\n\
             -A KUBE-SVC-CTTLABWEBHTTP0000 -m comment --comment \"{SERVICE_NAME} -> {be}:{SERVER_PORT}\" -j KUBE-SEP-CTTLABWEBHTTP0000\n\
             -A KUBE-SEP-CTTLABWEBHTTP0000 -m comment --comment {SERVICE_NAME} -m tcp -p tcp -j DNAT --to-destination {be}:{SERVER_PORT}\n\
             COMMIT\n"
        );
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node,
                "iptables-restore",
                "-w",
                "--noflush",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Command {
                cmd: "iptables-restore".into(),
                detail: e.to_string(),
            })?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .map_err(|e| LabError::Command {
                cmd: "iptables-restore".into(),
                detail: e.to_string(),
            })?;
        let out = child.wait_with_output().map_err(|e| LabError::Command {
            cmd: "iptables-restore".into(),
            detail: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: "iptables-restore (the lab's Service rules)".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// The inode of a lab namespace: what ct-trace prints as `netns`.
    pub fn inode(ns: &str) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(Path::new(NETNS_DIR).join(ns))?.ino())
    }

    /// Deletes the namespaces now (what drop does), reporting the first failure.
    pub fn teardown(&mut self) -> Result<(), LabError> {
        let mut first = Ok(());
        for ns in std::mem::take(&mut self.created) {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::warn!("lab teardown: {e}");
        }
    }
}

/// Runs `f` on the calling thread inside the namespace `ns`, then returns the thread to its
/// own namespace. Sockets made in `f` stay in `ns` (a socket keeps the namespace it was made
/// in); only this thread moves, the rest of the process stays where it was.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(Path::new(NETNS_DIR).join(ns))?;
    setns(&target)?;
    let out = f();
    // Back home: a thread left in a lab namespace would make its next sockets there.
    setns(&home).expect("setns back to the thread's own network namespace");
    Ok(out)
}

fn setns(f: &File) -> io::Result<()> {
    // SAFETY: a namespace fd this function's caller holds open.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The PID in a lab namespace's name (`ctt-lab-PID-role`), or its ready file's.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Whether `pid` is a live ct-trace (a PID reused by another program does not count).
pub fn lab_alive(pid: u32) -> bool {
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    match (comm(&pid.to_string()), comm("self")) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => false,
    }
}

/// The lab namespaces there are, with the PID in their names.
fn lab_namespaces() -> Result<Vec<(String, u32)>, LabError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(LabError::Command {
                cmd: format!("reading {NETNS_DIR}"),
                detail: e.to_string(),
            })
        }
    };
    Ok(entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let pid = owner_pid(&name)?;
            Some((name, pid))
        })
        .collect())
}

/// The PIDs of the other live labs (by their namespaces).
pub fn other_labs() -> Vec<u32> {
    let me = std::process::id();
    let mut pids: Vec<u32> = lab_namespaces()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, pid)| pid)
        .filter(|&p| p != me && lab_alive(p))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Deletes lab namespaces whose lab is gone (killed before it could tear down), and those
/// named after this very process (a PID reused since); returns their names.
pub fn remove_stale() -> Result<Vec<String>, LabError> {
    let me = std::process::id();
    let mut stale: Vec<String> = lab_namespaces()?
        .into_iter()
        .filter(|&(_, pid)| pid == me || !lab_alive(pid))
        .map(|(name, _)| name)
        .collect();
    stale.sort();
    for ns in &stale {
        ip(&["netns", "del", ns])?;
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_lab_names_only() {
        assert_eq!(owner_pid("ctt-lab-1234-node"), Some(1234));
        assert_eq!(owner_pid("ctt-lab-1234-cli"), Some(1234));
        assert_eq!(owner_pid("ctt-1234-0-node"), None);
        assert_eq!(owner_pid("ctt-lab-x-node"), None);
    }
}
