//! Harness for ct-trace's root integration tests: network namespaces the test creates (torn down
//! on drop, also when the test fails), the real `ct-trace` binary started with `--ready-file`,
//! and bounded traffic. No test sends a packet outside the namespaces it made.

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use conntrack_common::{harness::netns, kstat};

mod ct_trace;
pub mod lab;
pub mod poll;
pub mod table;
mod tools;
pub use ct_trace::{mode, CtTrace, Output};
pub use tools::{image_bin, need_tool};

/// Whether the tests run inside one of `cargo xtask test`'s VMs (TCG: several times slower than
/// the host, one vCPU), where floods are made smaller.
pub fn in_vm() -> bool {
    std::env::var_os("CT_TRACE_VM").is_some()
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|v| v.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (major, minor)
}

/// The kinds of events that carry a packet (`--pcap` writes one for each).
pub const WITH_PACKET: [&str; 6] = [
    "invalid",
    "ignored",
    "rst_sent",
    "rst_received",
    "midstream",
    "table_full",
];

/// Whether `--pcap` writes a packet for this event (a kind of [`WITH_PACKET`] with addresses).
pub fn carries_packet(e: &serde_json::Value) -> bool {
    WITH_PACKET.contains(&e["kind"].as_str().unwrap_or_default()) && !e["src"].is_null()
}

/// Prints the one marker `cargo xtask test` counts as a skip.
pub fn skip(test: &str, why: &str) {
    println!("SKIPPED: {test}: {why}");
}

/// True when the tests can create namespaces and load eBPF. Under `cargo xtask test` (which
/// sets CT_TRACE_BIN) a missing privilege fails the test; under a plain `cargo test` it is a
/// counted skip.
pub fn need_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CT_TRACE_BIN").is_none(),
            "{test} needs root (namespaces and eBPF): run `sudo cargo xtask test`"
        );
        skip(
            test,
            "needs root (namespaces and eBPF); run `sudo cargo xtask test`",
        );
        return false;
    }
    true
}

/// The ct-trace binary under test (`cargo xtask test` builds it and sets CT_TRACE_BIN).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CT_TRACE_BIN") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/ct-trace");
    assert!(p.exists(), "no ct-trace binary: run the tests with `cargo xtask test` (it builds and sets CT_TRACE_BIN)");
    p
}

pub fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        let name = format!(
            "ctt-{}-{}-{role}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&format!("ip netns add {name}"));
        let ns = Self { name };
        // No duplicate address detection: a tentative link-local address delays neighbour
        // discovery by seconds, and queued SYNs then arrive (and are reset) in bursts.
        ns.exec("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace.
    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Runs `f` on a thread inside the namespace: the sockets it makes belong to the
    /// namespace (and may be used from any thread afterwards). The test's own threads stay
    /// where they are.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: moves only this thread, into a namespace whose file is held open.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Inode of the namespace: what ct-trace prints as `netns`.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("netns file")
            .ino()
    }

    /// The kernel's `invalid` conntrack counter of this namespace (summed over CPUs).
    pub fn kernel_invalid(&self) -> u64 {
        self.kernel_counter("invalid")
    }

    /// One of the kernel's conntrack counters of this namespace (`/proc/net/stat/nf_conntrack`,
    /// summed over CPUs): `invalid`, `drop`, `early_drop`, `insert_failed`, ...
    pub fn kernel_counter(&self, name: &str) -> u64 {
        let sums = netns::kernel_counters(&self.name).unwrap_or_else(|e| match &e {
            netns::CountersError::Parse { source, .. } => panic!("{e}: {source}"),
            e => panic!("{e}"),
        });
        *sums
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` column in {}: {sums:?}", kstat::PATH))
    }
}

/// A global (init-namespace) sysctl set for the length of a test and restored on drop, also when
/// the test fails. `nf_conntrack_max` and `nf_conntrack_buckets` can only be changed there, and
/// the limit then applies to every namespace's own table.
pub struct GlobalSysctl {
    path: PathBuf,
    saved: String,
}

impl GlobalSysctl {
    /// `name` as under /proc/sys with dots, e.g. `net.netfilter.nf_conntrack_max`.
    pub fn set(name: &str, value: &str) -> Self {
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        let saved = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string();
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Self { path, saved }
    }
}

impl Drop for GlobalSysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.saved) {
            eprintln!(
                "could not restore {} to {}: {e}",
                self.path.display(),
                self.saved
            );
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The Kubernetes shape in miniature:
/// client (10.77.1.2, fd77:1::2) -- node (routes, DNATs the service 10.96.0.10:80 and
/// [fd96::10]:80 to the server) -- server (10.77.2.2:8080, [fd77:2::2]:8080).
pub struct Topology {
    pub client: Netns,
    pub node: Netns,
    pub server: Netns,
}

pub const CLIENT: &str = "10.77.1.2";
pub const SERVER: &str = "10.77.2.2";
pub const SERVICE: &str = "10.96.0.10";
pub const CLIENT6: &str = "fd77:1::2";
pub const SERVER6: &str = "fd77:2::2";

impl Topology {
    /// The topology with a Service address in both families.
    pub fn new() -> Self {
        Self::build(true)
    }

    /// IPv4 NAT only: the node has IPv6 addresses (and link-local chatter) but no IPv6 rule, so
    /// conntrack does not track IPv6 there, like most IPv4 Kubernetes nodes.
    pub fn ipv4_only() -> Self {
        Self::build(false)
    }

    fn build(v6_nat: bool) -> Self {
        let t = Self {
            client: Netns::new("cli"),
            node: Netns::new("node"),
            server: Netns::new("srv"),
        };
        // kube-proxy's iptables mode in one rule per family: the service address is DNATed to
        // the backend; nothing drops INVALID (the vulnerable default before kube-proxy 1.15).
        // A second port of the Service for bulk traffic (iperf3).
        let dnat = |service: &str, port: u16, to: &str| netns::Dnat {
            service: service.parse().expect("an address"),
            port,
            to: to.parse().expect("an address and port"),
        };
        let mut rules = vec![
            dnat(SERVICE, 80, "10.77.2.2:8080"),
            dnat(SERVICE, 5201, "10.77.2.2:5201"),
        ];
        if v6_nat {
            rules.push(dnat("fd96::10", 80, "[fd77:2::2]:8080"));
        }
        // The wiring of the lab and the bench (one implementation), on 10.77 / fd77 beside the
        // lab's 10.78. Floods go to 10.77.9.0/24: routed to nowhere by the node, so nothing
        // answers them.
        netns::wire(&netns::Wiring {
            client: &t.client.name,
            node: &t.node.name,
            server: &t.server.name,
            v4: "10.77",
            v6: Some("fd77"),
            dnat: &rules,
            node_routes: &["blackhole 10.77.9.0/24"],
        })
        .unwrap_or_else(|e| panic!("wiring the test topology: {e}"));
        t
    }

    /// Sends `count` SYN|FIN segments (INVALID at the node, then dropped by its blackhole route)
    /// from the server namespace, as fast as it can or at `rate` per second; returns what
    /// `ctt-flood` printed.
    pub fn flood(&self, count: u64, rate: Option<u64>) -> String {
        self.server.exec(&format!(
            "{} {SERVER} 10.77.9.9 {count} {}",
            flood_bin().display(),
            rate.map_or(String::new(), |r| r.to_string())
        ))
    }

    /// The same flood in the background (killed on drop).
    pub fn flood_in_background(&self, count: u64, rate: Option<u64>) -> Background {
        Background::start(
            &self.server,
            &format!(
                "{} {SERVER} 10.77.9.9 {count} {}",
                flood_bin().display(),
                rate.map_or(String::new(), |r| r.to_string())
            ),
        )
    }

    /// IPv6 link-local chatter in the node namespace (UDP to all-nodes on both links, every
    /// 10 ms, for at most 60 s): packets conntrack does not track on an IPv4-only node.
    pub fn ipv6_chatter(&self) -> Background {
        Background::start(
            &self.node,
            &format!(
                "{} -c \"import socket,time\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\nend=time.time()+60\nwhile time.time()<end:\n  for i in ('eth1','eth2'):\n    s.sendto(b'chatter',('ff02::1%'+i,9999))\n  time.sleep(0.01)\"",
                python()
            ),
        )
    }

    /// Bulk TCP through the Service's DNAT (iperf3, two streams, for at most `secs`).
    pub fn bulk(&self, secs: u32) -> (Background, Background) {
        let server = Background::start(&self.server, "iperf3 -s -1 -p 5201");
        poll::listening(&self.server, 5201);
        let client = Background::start(
            &self.client,
            &format!("iperf3 -c {SERVICE} -p 5201 -t {secs} -P 2"),
        );
        (server, client)
    }

    /// Opens `flows` connections client -> Service (`tests/scripts/held.py`); the backend
    /// speaks `speak_after` seconds after the last one is accepted. `lose` runs in between (it
    /// must make the entries go). Returns the client ports and what ct-trace (running in the
    /// node) printed.
    pub fn held_flows(
        &self,
        ct: CtTrace,
        flows: usize,
        speak_after: f64,
        lose: impl FnOnce(&Topology),
    ) -> (Vec<u16>, Output) {
        let t = self;
        let held = scripts().join("held.py");
        let server = Background::start(
            &t.server,
            &format!(
                "{} {} server 8080 {flows} {speak_after}",
                python(),
                held.display()
            ),
        );
        poll::listening(&t.server, 8080);
        let ready = std::env::temp_dir().join(format!(
            "ct-trace-held-{}-{}",
            std::process::id(),
            t.client.name
        ));
        let _ = std::fs::remove_file(&ready);
        let client = Background::start(
            &t.client,
            &format!(
                "{} {} client {SERVICE} 80 {flows} {} {}",
                python(),
                held.display(),
                speak_after + 3.0,
                ready.display()
            ),
        );
        // The client writes its ports once every connection is up.
        assert!(
            poll::until(Duration::from_secs(60), poll::EVERY, || ready.exists()),
            "connections not up after 60 s"
        );
        let _ = std::fs::remove_file(&ready);
        lose(t);
        let ports: Vec<u16> = client
            .wait(Duration::from_secs(30))
            .split_whitespace()
            .map(|p| p.parse().expect("port"))
            .collect();
        server.wait(Duration::from_secs(30));
        // The last closes (and the entries they end) through the node before ct-trace stops.
        poll::counters_settled(&t.node, &["entries", "invalid"]);
        assert_eq!(ports.len(), flows);
        (ports, ct.stop())
    }

    /// Crafts `n` segments of `mode` from the server (`tests/scripts/segment.py`: `seq_over`,
    /// `ack_over`, `bad_flags`, `rst_out`, `ignore`), each on a fresh client connection through
    /// the Service (over IPv6 with `v6`); returns what segment.py printed for each (the client
    /// port, the crafted seq/ack, whether the server's connection was reset).
    pub fn segments(&self, mode: &str, n: usize, v6: bool) -> Vec<serde_json::Value> {
        let out = self.server.exec(&format!(
            "{} {} {mode} {} n={n} {}",
            python(),
            scripts().join("segment.py").display(),
            self.client.name,
            if v6 { "v6" } else { "" }
        ));
        let segs: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("segment.py prints JSON lines"))
            .collect();
        assert_eq!(segs.len(), n, "{out}");
        segs
    }

    /// The fix kube-proxy applies from 1.15: drop what conntrack marks INVALID.
    pub fn drop_invalid(&self) {
        self.node
            .exec("iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
        self.node
            .exec("ip6tables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
    }
}

/// `ctt-flood`, which cargo builds beside the integration tests (`target/*/ctt-flood`, the
/// test executables being in `target/*/deps`), or `CT_TRACE_FLOOD`.
pub fn flood_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CT_TRACE_FLOOD") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory")
        .join("ctt-flood");
    assert!(
        p.exists(),
        "no {}: build it with `cargo build -p integration-tests --bins`",
        p.display()
    );
    p
}

/// A process in a namespace, killed (with its children) when dropped.
pub struct Background {
    child: Child,
}

impl Background {
    pub fn start(ns: &Netns, cmd: &str) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "setsid", "sh", "-c", cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        Self { child }
    }

    /// Waits for it to end by itself (at most `max`), and returns its stdout.
    pub fn wait(mut self, max: Duration) -> String {
        let ended = poll::until(max, poll::EVERY, || {
            self.child.try_wait().expect("wait").is_some()
        });
        assert!(ended, "background command still running");
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // setsid made it a process group leader: end the whole group.
        // SAFETY: signalling a process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// Debian's python3 (scapy is a Debian package; the `python3` on PATH may be another one).
pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}
