//! Readiness polls: a test waits for the condition it needs (a listener, an established
//! connection, a kernel counter that stopped moving), never for a fixed time that is too long
//! on a quiet machine and too short on a busy one. Every wait is bounded: each helper gives up
//! after its `max` (and says what it waited for when the caller asserts).

use std::time::{Duration, Instant};

use crate::{in_vm, Netns};

/// How often the helpers look, unless told.
pub const EVERY: Duration = Duration::from_millis(20);

/// A bound for waits on local processes and packets: generous under TCG (one slow vCPU).
pub fn patience() -> Duration {
    Duration::from_secs(if in_vm() { 60 } else { 10 })
}

/// Looks at `cond` every `every` until it holds (true) or `max` has passed (false).
pub fn until(max: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() >= max {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Reads `read` every `every` until two reads in a row agree (the counter stopped moving), or
/// `max` has passed; returns the last value and whether it settled.
pub fn settled<T: PartialEq>(
    max: Duration,
    every: Duration,
    mut read: impl FnMut() -> T,
) -> (T, bool) {
    let t0 = Instant::now();
    let mut last = read();
    while t0.elapsed() < max {
        std::thread::sleep(every);
        let now = read();
        if now == last {
            return (now, true);
        }
        last = now;
    }
    (last, false)
}

/// A TCP socket state as `/proc/net/tcp` prints it (`include/net/tcp_states.h`).
const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0a;

/// The (local port, remote port, state) of every TCP socket of `ns`, IPv4 and IPv6, from the
/// namespace's own `/proc/net/tcp{,6}` (read by a thread inside it: `/proc/thread-self/net`
/// is that thread's namespace).
fn tcp_sockets(ns: &Netns) -> Vec<(u16, u16, u8)> {
    ns.inside(|| {
        ["tcp", "tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok())
            .flat_map(|text| {
                text.lines()
                    .skip(1)
                    .filter_map(|l| {
                        let mut it = l.split_whitespace().skip(1);
                        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
                        let local = port(it.next()?)?;
                        let remote = port(it.next()?)?;
                        let st = u8::from_str_radix(it.next()?, 16).ok()?;
                        Some((local, remote, st))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    })
}

/// Waits (at most [`patience`]) until something listens on TCP `port` in `ns`; panics when
/// nothing does.
pub fn listening(ns: &Netns, port: u16) {
    let ok = until(patience(), EVERY, || {
        tcp_sockets(ns)
            .iter()
            .any(|&(l, _, st)| l == port && st == LISTEN)
    });
    assert!(ok, "nothing listens on TCP port {port} in {}", ns.name);
}

/// Waits (at most [`patience`]) until `ns` has `n` established TCP connections to remote
/// `port`; panics when it has fewer.
pub fn connected(ns: &Netns, port: u16, n: usize) {
    let ok = until(patience(), EVERY, || {
        tcp_sockets(ns)
            .iter()
            .filter(|&&(_, r, st)| r == port && st == ESTABLISHED)
            .count()
            >= n
    });
    assert!(
        ok,
        "not {n} TCP connections to port {port} from {}",
        ns.name
    );
}

/// Waits (at most [`patience`]) until the conntrack counters `names` of `ns` stop moving
/// (two reads 100 ms apart agree) and returns them. The machine is shared: traffic that never
/// settles ends the wait with the last values and a line saying so, not a failure.
pub fn counters_settled(ns: &Netns, names: &[&str]) -> Vec<u64> {
    let (v, quiet) = settled(patience(), Duration::from_millis(100), || {
        names
            .iter()
            .map(|n| ns.kernel_counter(n))
            .collect::<Vec<_>>()
    });
    if !quiet {
        eprintln!(
            "{names:?} of {} still moving after {:?}",
            ns.name,
            patience()
        );
    }
    v
}
