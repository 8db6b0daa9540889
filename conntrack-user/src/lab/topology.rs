//! The lab's three network namespaces, `ctt-lab-PID-cli`, `-node` and `-srv`: veths, routes,
//! and in the node kube-proxy's iptables shape for one Service (10.96.0.10:80 DNATed to the
//! server's 10.78.2.2:8080). Every address exists only inside them; the host's namespaces,
//! rules and sysctls are never touched. `Lab` deletes its namespaces on drop (also on error or
//! a caught signal); namespaces left by a lab that was killed (SIGKILL) carry the dead PID in
//! their name and are removed by the next lab run or `ct-trace lab cleanup`. The veths,
//! addresses and routes are the one wiring the tests and the bench use too
//! (`conntrack_common::harness::netns`).

use std::{
    fs::File,
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Stdio},
};

use conntrack_common::harness::netns::{self, Wiring};

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

fn ip(args: &[&str]) -> Result<String, LabError> {
    Ok(netns::ip(args)?)
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
            netns::add(&ns)?;
            lab.created.push(ns.clone());
        }
        // The one wiring of the lab, the tests and the bench; the Service's rules are
        // kube-proxy's own chains (`kube_proxy_rules`), not one DNAT rule.
        netns::wire(&Wiring {
            client: &lab.client,
            node: &lab.node,
            server: &lab.server,
            v4: "10.78",
            v6: None,
            dnat: &[],
            node_routes: &[],
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
