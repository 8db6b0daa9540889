//! `--metrics` against clients that hold connections and send slowly (the issue "No false
//! blame, no way in"): with 200 idle connections held open and one more sending its request a
//! byte a second, ten scrapes in a row are each answered completely within a second; the slow
//! client is cut off within the per-request bound, and the idle ones within the idle bound.
//! `:PORT` serves IPv6 and IPv4 (IPv4 alone where IPv6 is off), `[::1]:PORT` IPv6 only, and
//! port 0 is announced as the port the kernel gave.
//!
//! Every client is a socket made inside a namespace the test created and talks to its
//! loopback; every wait is bounded.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use integration_tests::{need_root, CtTrace, Netns};

/// ct-trace's bounds (README, Metrics): from a request's first byte to its answer, and for a
/// connection that sends nothing.
const REQUEST_TIME: Duration = Duration::from_secs(5);
const IDLE_TIME: Duration = Duration::from_secs(5);
/// What a timer and the scheduling of a loaded 2-core machine may add to a bound.
const SLACK: Duration = Duration::from_millis(1500);
const HELD: usize = 200;

const OPENMETRICS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A complete answer: status line, the headers (lower-case names) and the body.
struct Answer {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET /metrics` as Prometheus (`openmetrics`) or curl sends it; the whole answer, to the
/// connection's end, within `max` (else an error saying what came).
fn scrape(
    ns: &Netns,
    addr: SocketAddr,
    openmetrics: bool,
    max: Duration,
) -> Result<Answer, String> {
    let t0 = Instant::now();
    let mut s = ns
        .inside(|| TcpStream::connect_timeout(&addr, max))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let accept = if openmetrics {
        OPENMETRICS_ACCEPT
    } else {
        "*/*"
    };
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nUser-Agent: ct-trace-test\r\n\r\n")
            .as_bytes(),
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = max
            .checked_sub(t0.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no complete answer within {max:?}: {} bytes", got.len()))?;
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
        }
    }
    let text = String::from_utf8(got).map_err(|e| e.to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers: {text}"))?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// A complete `200` with the format that was asked for, checked against its Content-Length.
fn assert_complete(a: &Answer, openmetrics: bool) {
    assert_eq!(a.status, "HTTP/1.1 200 OK", "{}", a.body);
    assert_eq!(
        a.header("content-length").and_then(|v| v.parse().ok()),
        Some(a.body.len()),
        "the whole body"
    );
    assert!(a.body.contains("ct_trace_build_info{"), "{}", a.body);
    let ctype = a.header("content-type").unwrap_or_default();
    if openmetrics {
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(a.body.ends_with("# EOF\n"), "{}", a.body);
    } else {
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        assert!(!a.body.contains("# EOF"), "{}", a.body);
    }
}

/// Whether the peer closed `s` (end of stream or reset), without waiting.
fn closed_by_peer(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

#[test]
fn scrapes_are_answered_while_idle_and_slow_clients_hold_connections() {
    if !need_root("scrapes_are_answered_while_idle_and_slow_clients_hold_connections") {
        return;
    }
    let ns = Netns::new("mattack");
    let mut ct = CtTrace::start(Some(&ns), &["--metrics", "127.0.0.1:0"]);
    let addr = ct.metrics_addr();
    assert!(
        addr.ip().is_loopback() && addr.port() != 0,
        "announced {addr}"
    );
    // A scrape before the attack: the server works.
    assert_complete(
        &scrape(&ns, addr, true, Duration::from_secs(5)).expect("a first scrape"),
        true,
    );

    let held: Vec<TcpStream> = ns.inside(|| {
        (0..HELD)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("held connection {i}: {e}"))
            })
            .collect()
    });
    let held_at = Instant::now();

    // A request a byte a second; it reports how it ended, and when after its first byte.
    let slow = ns
        .inside(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("slow client");
    let (started, started_rx) = mpsc::channel();
    let slow = std::thread::spawn(move || {
        let mut slow = slow;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {OPENMETRICS_ACCEPT}\r\n\r\n"
        );
        slow.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let t0 = Instant::now();
        for (i, b) in request.bytes().enumerate() {
            if let Err(e) = slow.write_all(&[b]) {
                return (i, t0.elapsed(), format!("cut off: write: {e}"));
            }
            if i == 0 {
                let _ = started.send(());
            }
            let mut buf = [0u8; 512];
            match slow.read(&mut buf) {
                Ok(0) => return (i + 1, t0.elapsed(), "cut off: end of stream".into()),
                Ok(n) => {
                    let got = String::from_utf8_lossy(&buf[..n]).into_owned();
                    return (i + 1, t0.elapsed(), format!("answered: {got}"));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return (i + 1, t0.elapsed(), format!("cut off: {e}")),
            }
        }
        (request.len(), t0.elapsed(), "sent whole".into())
    });
    started_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the slow client sent its first byte");

    for i in 0..10 {
        let openmetrics = i % 2 == 0;
        let t0 = Instant::now();
        let answer = scrape(&ns, addr, openmetrics, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("scrape {i} with {HELD} idle and a slow client: {e}"));
        assert_complete(&answer, openmetrics);
        eprintln!(
            "scrape {i} ({}): 200, {} bytes in {:?}",
            if openmetrics { "OpenMetrics" } else { "0.0.4" },
            answer.body.len(),
            t0.elapsed()
        );
        // Pacing, not a wait: the scrapes spread over the slow client's life.
        std::thread::sleep(Duration::from_millis(100));
    }

    let (sent, after, how) = slow.join().expect("slow client");
    eprintln!("slow client: {how} after {sent} bytes, {after:?} after its first");
    assert!(how.starts_with("cut off"), "{how}");
    assert!(
        after <= REQUEST_TIME + SLACK,
        "cut off {after:?} after its first byte (bound {REQUEST_TIME:?})"
    );

    // Every idle connection was closed: made room for newer ones, or at the idle bound.
    // A fixed time on purpose: the idle bound itself is under test, so it must have passed.
    let wait = (IDLE_TIME + SLACK).saturating_sub(held_at.elapsed());
    std::thread::sleep(wait);
    let open = held.iter().filter(|s| !closed_by_peer(s)).count();
    assert_eq!(
        open,
        0,
        "idle connections still open {:?} after they were made",
        held_at.elapsed()
    );

    // And the server still answers.
    assert_complete(
        &scrape(&ns, addr, false, Duration::from_secs(1)).expect("a scrape after"),
        false,
    );
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn metrics_on_any_address_serve_ipv6_and_ipv4_and_port_0_is_announced() {
    if !need_root("metrics_on_any_address_serve_ipv6_and_ipv4_and_port_0_is_announced") {
        return;
    }
    let ns = Netns::new("metrics6");
    let mut ct = CtTrace::start(Some(&ns), &["--metrics", ":0"]);
    let any = ct.metrics_addr();
    assert_eq!(any.ip().to_string(), "::", "announced {any}");
    assert_ne!(any.port(), 0, "announced {any}");
    for ip in ["127.0.0.1", "::1"] {
        let a = SocketAddr::new(ip.parse().unwrap(), any.port());
        let answer = scrape(&ns, a, false, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("--metrics :0 on {a}: {e}"));
        assert_complete(&answer, false);
    }

    // Its port taken (IPv4 and IPv6): one line, nothing attached.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(integration_tests::bin())
        .args(["--metrics", &format!(":{}", any.port()), "-d", "5"])
        .output()
        .expect("ct-trace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("cannot listen on [::]:{}", any.port())),
        "{err}"
    );
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let mut ct = CtTrace::start(Some(&ns), &["--metrics", "[::1]:0"]);
    let v6 = ct.metrics_addr();
    assert_eq!(v6.ip().to_string(), "::1", "announced {v6}");
    assert_complete(
        &scrape(&ns, v6, true, Duration::from_secs(5)).expect("--metrics [::1]:0"),
        true,
    );
    let v4 = SocketAddr::new("127.0.0.1".parse().unwrap(), v6.port());
    let refused = ns.inside(|| TcpStream::connect_timeout(&v4, Duration::from_secs(5)));
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused),
        "[::1] only: nothing on {v4}"
    );
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);

    // A namespace with IPv6 turned off: `:PORT` still serves IPv4.
    let no6 = Netns::new("metrics4");
    no6.exec("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1");
    let mut ct = CtTrace::start(Some(&no6), &["--metrics", ":0"]);
    let v4 = SocketAddr::new("127.0.0.1".parse().unwrap(), ct.metrics_addr().port());
    assert_complete(
        &scrape(&no6, v4, false, Duration::from_secs(5)).expect("--metrics :0 without IPv6"),
        false,
    );
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
}
