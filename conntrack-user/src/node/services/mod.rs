//! Service names without an API server: kube-proxy writes the name of every Service port
//! (`namespace/name:portname`) into the rules it programs, so the node's own ruleset says which
//! Service an address belongs to. [`ServiceNames`] indexes them both ways, (Service address,
//! port, protocol) -> name and (backend address, port, protocol) -> names; [`Refresher`] keeps
//! it current from a thread of its own, and the event path only reads a snapshot.
//!
//! By file: `iptables` (`iptables-save -t nat`, kube-proxy's iptables mode), `nft` (`nft -j list
//! table ip|ip6 kube-proxy`, its nftables mode). What either mode looks like is written beside
//! its parser, with the kube-proxy source it follows.
//!
//! A missing table means "no names", never an error: ct-trace runs on nodes without kube-proxy
//! too. A missing binary or an unreadable ruleset means no names from it either, but it is
//! reported as such (`unread`), never as "no kube-proxy rules".

mod iptables;
mod nft;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, RwLock,
    },
    thread,
    time::Duration,
};

use serde::Serialize;

pub use self::{iptables::parse_iptables_save, nft::parse_nft_json};
use super::tools::{self, RulesRead};

/// Index entries at most (Service addresses plus backend names): a cluster with more is named
/// partially, and the excess is counted ([`ServiceNames::over_limit`]) and warned about once.
pub const MAX_ENTRIES: usize = 65_536;
/// How often the rulesets are read again (or ten times as long as a reading takes, whichever is
/// longer). kube-proxy resyncs on every Service or endpoint change; a name that appears up to
/// this much late only misses the first events of a brand-new Service.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long [`Refresher::start`] waits for the first reading, so the first events are named.
const FIRST_READ_WAIT: Duration = Duration::from_secs(3);

/// One side of a flow as kube-proxy matches it: address, port, IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl Key {
    pub fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
        Self { addr, port, proto }
    }
}

/// The IP protocol number of kube-proxy's protocol words (`tcp`, `udp`, `sctp`).
pub(crate) fn proto_number(word: &str) -> Option<u8> {
    match word.to_ascii_lowercase().as_str() {
        "tcp" | "6" => Some(6),
        "udp" | "17" => Some(17),
        "sctp" | "132" => Some(132),
        _ => None,
    }
}

/// `10.0.0.1`, `10.0.0.1/32`, `fd00::1/128`: a host address (a wider prefix is not a Service).
pub(crate) fn host_addr(s: &str) -> Option<IpAddr> {
    match s.split_once('/') {
        None => s.parse().ok(),
        Some((a, len)) => {
            let a: IpAddr = a.parse().ok()?;
            let full = if a.is_ipv4() { "32" } else { "128" };
            (len == full).then_some(a)
        }
    }
}

/// Which kube-proxy modes left rules in this namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Modes {
    pub iptables: bool,
    pub nftables: bool,
}

/// The Services and endpoints named in this namespace's kube-proxy rules.
#[derive(Debug, Default)]
pub struct ServiceNames {
    services: HashMap<Key, Arc<str>>,
    /// Every Service a backend serves, sorted: the first is the answer when the Service
    /// address is not known, so the choice does not depend on the order of the rules.
    backends: HashMap<Key, Vec<Arc<str>>>,
    /// NodePorts by (port, protocol): a flow to the node's own address names no Service
    /// address, but its port tells which of a shared backend's Services it asked for.
    nodeports: HashMap<(u16, u8), Vec<Arc<str>>>,
    entries: usize,
    /// Entries left out because the index was full.
    pub over_limit: u64,
    pub modes: Modes,
    /// The rulesets that could not be read, `` `command`: why `` (their names are missing).
    pub unread: Vec<String>,
}

impl ServiceNames {
    /// The name of the Service a flow belongs to: by the address the client asked for when it
    /// is a Service address, else by the backend that answered.
    pub fn name(
        &self,
        service: Option<SocketAddr>,
        backend: Option<SocketAddr>,
        proto: u8,
    ) -> Option<&str> {
        self.shared_name(service, backend, proto).map(|n| &**n)
    }

    /// [`Self::name`] as the index holds it, to be shared by the reports.
    pub fn shared_name(
        &self,
        service: Option<SocketAddr>,
        backend: Option<SocketAddr>,
        proto: u8,
    ) -> Option<&Arc<str>> {
        if let Some(s) = service {
            if let Some(n) = self.services.get(&Key::new(s.ip(), s.port(), proto)) {
                return Some(n);
            }
        }
        let b = backend?;
        let names = self.backends.get(&Key::new(b.ip(), b.port(), proto))?;
        if let (Some(s), [_, _, ..]) = (service, names.as_slice()) {
            let by_port = self.nodeports.get(&(s.port(), proto));
            if let Some(n) = names
                .iter()
                .find(|n| by_port.is_some_and(|p| p.contains(n)))
            {
                return Some(n);
            }
        }
        names.first()
    }

    /// For a packet whose direction is not known (no conntrack entry): its destination as a
    /// Service address, then either end as a backend.
    pub fn name_of_packet(&self, src: SocketAddr, dst: SocketAddr, proto: u8) -> Option<&str> {
        self.shared_name_of_packet(src, dst, proto).map(|n| &**n)
    }

    /// [`Self::name_of_packet`] as the index holds it.
    pub fn shared_name_of_packet(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        proto: u8,
    ) -> Option<&Arc<str>> {
        self.shared_name(Some(dst), Some(src), proto)
            .or_else(|| self.shared_name(None, Some(dst), proto))
    }

    /// Every name a backend has (sorted).
    pub fn backend_names(&self, backend: Key) -> &[Arc<str>] {
        self.backends.get(&backend).map_or(&[], |v| v)
    }

    /// Distinct Service ports named (`namespace/name:port`), Service addresses, endpoints.
    pub fn counts(&self) -> (usize, usize, usize) {
        let names: BTreeSet<&str> = (self.services.values().map(|n| &**n))
            .chain(self.backends.values().flatten().map(|n| &**n))
            .collect();
        (names.len(), self.services.len(), self.backends.len())
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Interns names so each is stored once however many addresses carry it.
    fn intern(names: &mut HashMap<String, Arc<str>>, name: &str) -> Arc<str> {
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        names.insert(name.to_string(), n.clone());
        n
    }
}

/// Collects entries from the parsers, within [`MAX_ENTRIES`].
pub struct Builder {
    names: ServiceNames,
    interned: HashMap<String, Arc<str>>,
    limit: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Self::with_limit(MAX_ENTRIES)
    }
}

impl Builder {
    pub fn with_limit(limit: usize) -> Self {
        Self {
            names: ServiceNames::default(),
            interned: HashMap::new(),
            limit,
        }
    }

    fn room(&mut self) -> bool {
        if self.names.entries >= self.limit {
            self.names.over_limit += 1;
            return false;
        }
        true
    }

    /// A Service address. The first name seen for an address is kept: kube-proxy gives each
    /// (address, port, protocol) to one Service port.
    pub fn service(&mut self, key: Key, name: &str) {
        if name.is_empty() || self.names.services.contains_key(&key) || !self.room() {
            return;
        }
        let n = ServiceNames::intern(&mut self.interned, name);
        self.names.services.insert(key, n);
        self.names.entries += 1;
    }

    /// A backend of a Service; a backend may serve several.
    pub fn backend(&mut self, key: Key, name: &str) {
        if name.is_empty() || listed(self.names.backends.get(&key), name) || !self.room() {
            return;
        }
        let n = ServiceNames::intern(&mut self.interned, name);
        insert_sorted(self.names.backends.entry(key).or_default(), n);
        self.names.entries += 1;
    }

    /// A NodePort of a Service (on any address of the node).
    pub fn nodeport(&mut self, port: u16, proto: u8, name: &str) {
        let key = (port, proto);
        if name.is_empty() || listed(self.names.nodeports.get(&key), name) || !self.room() {
            return;
        }
        let n = ServiceNames::intern(&mut self.interned, name);
        insert_sorted(self.names.nodeports.entry(key).or_default(), n);
        self.names.entries += 1;
    }

    pub fn modes(&mut self) -> &mut Modes {
        &mut self.names.modes
    }

    pub fn finish(self) -> ServiceNames {
        self.names
    }
}

/// How deep a name is followed along jumps (KUBE-SERVICES -> FW -> EXT -> SVC -> SEP is four).
const MAX_DEPTH: usize = 6;

/// Each chain's names, in both modes: the names seeded on a chain (from kube-proxy's comments
/// or chain names) flow along its jumps to the chains it reaches, breadth first, at most
/// [`MAX_DEPTH`] jumps deep (a loop or a very deep ruleset ends there).
pub(crate) fn reach<'a, K, J>(
    seeds: &'a HashMap<K, BTreeSet<String>>,
    jumps: &'a HashMap<K, Vec<J>>,
) -> HashMap<&'a str, BTreeSet<&'a str>>
where
    K: AsRef<str> + std::borrow::Borrow<str> + Eq + std::hash::Hash,
    J: AsRef<str>,
{
    let mut reached: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut queue: std::collections::VecDeque<(&str, &str, usize)> = Default::default();
    for (chain, names) in seeds {
        for n in names {
            queue.push_back((chain.as_ref(), n, 0));
        }
    }
    while let Some((chain, name, depth)) = queue.pop_front() {
        if !reached.entry(chain).or_default().insert(name) || depth >= MAX_DEPTH {
            continue;
        }
        for next in jumps.get(chain).into_iter().flatten() {
            queue.push_back((next.as_ref(), name, depth + 1));
        }
    }
    reached
}

fn listed(names: Option<&Vec<Arc<str>>>, name: &str) -> bool {
    names.is_some_and(|v| v.iter().any(|n| &**n == name))
}

/// Keeps a name list sorted, so which name comes first never depends on the rules' order.
fn insert_sorted(names: &mut Vec<Arc<str>>, n: Arc<str>) {
    let at = names.partition_point(|x| **x < *n);
    names.insert(at, n);
}

/// stdout of a ruleset command; `None` when the table is not there (kube-proxy does not run in
/// that mode here) or when it could not be read, which is added to `unread`.
fn output(cmd: &str, args: &[&str], unread: &mut Vec<String>) -> Option<Vec<u8>> {
    match tools::run(cmd, args) {
        Ok(r) => Some(r.stdout),
        // `nft list table ip kube-proxy` where there is no such table: "Error: No such file or
        // directory" (older nft: "Error: Could not process rule: No such file or directory").
        Err(e) if cmd == "nft" && e.contains("No such file or directory") => None,
        Err(e) => {
            let why = format!("{}: {e}", tools::shown(cmd, args));
            log::debug!("service names: {why}");
            unread.push(why);
            None
        }
    }
}

/// The raw rulesets, as the tools print them.
#[derive(Default, PartialEq, Eq)]
pub struct Rulesets {
    pub iptables: [Option<Vec<u8>>; 2],
    pub nft: [Option<Vec<u8>>; 2],
    /// The readings that failed, `` `command`: why `` (a table that is not there is no failure).
    pub unread: Vec<String>,
}

impl Rulesets {
    /// How many readings [`Rulesets::read`] makes.
    pub const READINGS: usize = 4;

    /// Runs `iptables-save -t nat`, `ip6tables-save -t nat` and `nft -j list table ip|ip6
    /// kube-proxy` in this process's network namespace.
    pub fn read() -> Self {
        let mut unread = vec![];
        let mut o = |cmd: &str, args: &[&str]| output(cmd, args, &mut unread);
        let iptables = [
            o("iptables-save", &["-t", "nat"]),
            o("ip6tables-save", &["-t", "nat"]),
        ];
        let nft = [
            o("nft", &["-j", "list", "table", "ip", "kube-proxy"]),
            o("nft", &["-j", "list", "table", "ip6", "kube-proxy"]),
        ];
        Self {
            iptables,
            nft,
            unread,
        }
    }

    pub fn parse(&self, limit: usize) -> ServiceNames {
        let mut b = Builder::with_limit(limit);
        for out in self.iptables.iter().flatten() {
            parse_iptables_save(&String::from_utf8_lossy(out), &mut b);
        }
        for out in self.nft.iter().flatten() {
            parse_nft_json(out, &mut b);
        }
        let mut names = b.finish();
        names.unread.clone_from(&self.unread);
        names
    }
}

/// The current index, shared with the event path: readers clone an `Arc` under a read lock
/// held for nanoseconds; the refresher swaps in a new index built outside the lock.
#[derive(Clone, Default)]
pub struct ServiceLookup(Arc<RwLock<Arc<ServiceNames>>>);

impl ServiceLookup {
    /// A lookup over a fixed index (tests, or a one-off reading).
    pub fn fixed(names: ServiceNames) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(names))))
    }

    pub fn snapshot(&self) -> Arc<ServiceNames> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value is whole.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, names: ServiceNames) {
        let names = Arc::new(names);
        match self.0.write() {
            Ok(mut g) => *g = names,
            Err(p) => *p.into_inner() = names,
        }
    }

    /// [`ServiceNames::name`], shared (the index's own copy of the name).
    pub fn name(
        &self,
        service: Option<SocketAddr>,
        backend: Option<SocketAddr>,
        proto: u8,
    ) -> Option<Arc<str>> {
        self.snapshot()
            .shared_name(service, backend, proto)
            .cloned()
    }

    /// [`ServiceNames::name_of_packet`], shared.
    pub fn name_of_packet(&self, src: SocketAddr, dst: SocketAddr, proto: u8) -> Option<Arc<str>> {
        self.snapshot()
            .shared_name_of_packet(src, dst, proto)
            .cloned()
    }
}

/// The thread that keeps the index current: reads the rulesets every [`REFRESH`], and rebuilds
/// the index only when their bytes changed. Stops when dropped.
pub struct Refresher {
    lookup: ServiceLookup,
    stop: Arc<AtomicBool>,
}

impl Refresher {
    /// Starts the thread and waits (at most a few seconds) for its first reading.
    pub fn start() -> std::io::Result<Self> {
        let lookup = ServiceLookup::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = mpsc::channel();
        let (l, s) = (lookup.clone(), stop.clone());
        thread::Builder::new()
            .name("ct-services".into())
            .spawn(move || refresh_loop(&l, &s, Some(first_tx)))?;
        if first_rx.recv_timeout(FIRST_READ_WAIT).is_err() {
            log::debug!("service names: the first reading is late; events are named once it is in");
        } else {
            let r = NamesReport::of(&lookup.snapshot());
            match &r.kube_proxy {
                Some(modes) if !modes.is_empty() => log::info!(
                    "service names: {} Service ports, {} endpoints (kube-proxy {} mode, re-read every {} s)",
                    r.services,
                    r.endpoints,
                    modes.join(" and "),
                    REFRESH.as_secs()
                ),
                Some(_) => log::info!("service names: no kube-proxy rules in this namespace"),
                None => {}
            }
            if !r.unread.is_empty() {
                log::warn!(
                    "service names: could not read {}; flows of the Services there carry no service_name",
                    r.unread.join("; ")
                );
            }
        }
        Ok(Self { lookup, stop })
    }

    pub fn lookup(&self) -> ServiceLookup {
        self.lookup.clone()
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        // Not joined: a reading in progress finishes on its own and the thread then exits.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn refresh_loop(lookup: &ServiceLookup, stop: &AtomicBool, mut first: Option<mpsc::Sender<()>>) {
    let mut last = None;
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        let rules = Rulesets::read();
        // On a node with tens of thousands of rules iptables-save itself takes a while: wait
        // at least ten times as long as the reading took, so it never costs more than a tenth
        // of a core.
        let wait = REFRESH.max(started.elapsed() * 10);
        // Byte-for-byte the same rulesets: nothing to parse (the usual case between syncs).
        if last.as_ref() != Some(&rules) {
            let names = rules.parse(MAX_ENTRIES);
            let (services, addrs, endpoints) = names.counts();
            let (modes, over_limit) = (format!("{:?}", names.modes), names.over_limit);
            lookup.set(names);
            // Said once the names are in use: with `-v`, a line here means events from now on
            // are named by this reading (the tests wait for it).
            log::debug!(
                "service names: {services} Service ports at {addrs} addresses, {endpoints} endpoints (kube-proxy {modes})"
            );
            if over_limit > 0 && !warned {
                warned = true;
                log::warn!(
                    "service names: kube-proxy's rules name more than {MAX_ENTRIES} addresses; {over_limit} were left out, so some events carry no service_name"
                );
            }
            last = Some(rules);
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        // Sleep in short steps so a stop is noticed quickly.
        let mut slept = Duration::ZERO;
        while slept < wait && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(100));
            slept += Duration::from_millis(100);
        }
    }
}

/// What doctor reports of the names.
#[derive(Debug, Serialize)]
pub struct NamesReport {
    /// Modes whose rules were found: `iptables`, `nftables`; empty: no kube-proxy rules here;
    /// `None` (`null`): none found, but some ruleset could not be read (`unread`).
    pub kube_proxy: Option<Vec<&'static str>>,
    /// Distinct Service ports named (`namespace/name:port`).
    pub services: usize,
    /// Service addresses (cluster, external and load-balancer IPs, by port and protocol).
    pub addresses: usize,
    pub endpoints: usize,
    pub over_limit: u64,
    /// `all`, `partial` or `none` of the rulesets were read.
    pub rules_read: RulesRead,
    /// The rulesets that could not be read, `` `command`: why ``.
    pub unread: Vec<String>,
}

impl NamesReport {
    pub fn of(names: &ServiceNames) -> Self {
        let (services, addresses, endpoints) = names.counts();
        let mut modes = vec![];
        if names.modes.iptables {
            modes.push("iptables");
        }
        if names.modes.nftables {
            modes.push("nftables");
        }
        let read = Rulesets::READINGS.saturating_sub(names.unread.len());
        let rules_read = RulesRead::of(read, Rulesets::READINGS);
        Self {
            kube_proxy: (!modes.is_empty() || rules_read == RulesRead::All).then_some(modes),
            services,
            addresses,
            endpoints,
            over_limit: names.over_limit,
            rules_read,
            unread: names.unread.clone(),
        }
    }

    /// One reading of this namespace's rules.
    pub fn read() -> Self {
        Self::of(&Rulesets::read().parse(MAX_ENTRIES))
    }
}
