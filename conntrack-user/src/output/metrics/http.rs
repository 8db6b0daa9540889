//! The HTTP side of `--metrics`: `GET /metrics` on the event loop's own tokio runtime.
//!
//! Each scrape asks the event loop for the text (a channel with a one-shot reply), so the
//! kernel counters are read at the moment of the scrape and nothing is shared between threads.
//! Prometheus' own scraper asks for OpenMetrics; anything else (curl, `promtool check metrics`)
//! gets the classic text format 0.0.4.
//!
//! HTTP/1.x, one request per connection, and nothing a client does can keep a scrape out:
//! a connection that sends nothing is closed after [`IDLE_TIME`]; a request must be complete
//! and answered within [`REQUEST_TIME`] of its first byte; at most [`MAX_CONNECTIONS`] are
//! open, and a new one is never refused: it takes the place of the connection that has been
//! idle longest, or, when every one has a request in flight, of the oldest request (a real
//! scrape sends its request at once and is answered in milliseconds, so the oldest request
//! is the slowest client). A hand-written server rather than hyper: hyper's
//! `header_read_timeout` starts when a connection starts waiting for a request, and hyper
//! neither bounds the number of connections nor says which of them are idle, so the table
//! below would be needed beside it anyway; what is left for hyper is the ~30 lines that
//! parse a request line and one header.

use std::{
    collections::HashMap,
    io,
    net::{Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    time::{timeout, timeout_at, Instant},
};

/// A scrape: the event loop answers with the OpenMetrics text.
pub type Scrape = oneshot::Sender<String>;

/// Connections open at once; a new one takes the place of the idlest (see the module docs).
pub const MAX_CONNECTIONS: usize = 64;
/// A request line and headers larger than this are refused (431).
pub const MAX_REQUEST: usize = 8 * 1024;
/// From a request's first byte to the end of its answer.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIME: Duration = Duration::from_secs(5);

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds before anything is attached, so a taken port or a bad address fails the run before a
/// program is loaded. `[::]` (what `:PORT` means) is bound dual-stack, IPv4 arriving as
/// v4-mapped addresses; on a host without IPv6 it falls back to `0.0.0.0`.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let l = if addr.ip() == Ipv6Addr::UNSPECIFIED {
        match dual_stack(addr) {
            Err(e) if no_ipv6(&e) => {
                log::debug!("metrics: no IPv6 ({e}): listening on IPv4 only");
                std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, addr.port()))?
            }
            other => other?,
        }
    } else {
        std::net::TcpListener::bind(addr)?
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

fn dual_stack(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    // As std's bind does: a restarted ct-trace gets its port back while old connections of
    // the previous one are in TIME_WAIT.
    s.set_reuse_address(true)?;
    // Explicit: `net.ipv6.bindv6only=1` would otherwise make `:PORT` IPv6 only.
    s.set_only_v6(false)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

/// The errors of an IPv6 socket on a host without IPv6 (`ipv6.disable=1`: no AF_INET6 at all;
/// no IPv6 address configured: `::` cannot be bound).
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

/// What a connection is doing, for choosing which one makes room for a new one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Nothing received yet (ordered first: an idle connection goes before any request).
    Idle,
    /// A request arrived, in part or whole, and is being read or answered.
    Busy,
}

struct Conn {
    phase: Phase,
    /// Since when it is in its phase.
    since: Instant,
    /// Dropping it closes the connection.
    _close: oneshot::Sender<()>,
}

/// The open connections, by id.
#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Conn>,
}

type Shared = Arc<Mutex<Table>>;

impl Table {
    /// Takes a new connection in, closing the idlest one when the table is full (see the
    /// module docs). Returns its id and what closes it.
    fn admit(&mut self, now: Instant) -> (u64, oneshot::Receiver<()>) {
        if self.conns.len() >= MAX_CONNECTIONS {
            let victim = self
                .conns
                .iter()
                .min_by_key(|(_, c)| (c.phase, c.since))
                .map(|(id, _)| *id);
            if let Some(id) = victim {
                log::debug!("metrics: {MAX_CONNECTIONS} connections open: closing the idlest");
                self.conns.remove(&id);
            }
        }
        let (close, closed) = oneshot::channel();
        let id = self.next;
        self.next += 1;
        self.conns.insert(
            id,
            Conn {
                phase: Phase::Idle,
                since: now,
                _close: close,
            },
        );
        (id, closed)
    }

    fn busy(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.phase = Phase::Busy;
            c.since = now;
        }
    }
}

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Table> {
    // Nothing panics while holding it; a poisoned table is still a table.
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the connection out of the table when its task ends, also when it was closed.
struct Leave(Shared, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        lock(&self.0).conns.remove(&self.1);
    }
}

/// Accepts connections until the runtime stops.
pub async fn serve(listener: std::net::TcpListener, scrapes: mpsc::Sender<Scrape>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("metrics: cannot serve: {e}");
            return;
        }
    };
    let table = Shared::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds and the like: wait a moment instead of spinning.
                log::debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (id, closed) = lock(&table).admit(Instant::now());
        let leave = Leave(table.clone(), id);
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let r = tokio::select! {
                r = connection(stream, &scrapes, &leave) => r,
                _ = closed => Err(io::Error::other("closed to make room")),
            };
            if let Err(e) = r {
                log::debug!("metrics: {peer}: {e}");
            }
            drop(leave);
        });
    }
}

/// One connection: at most [`IDLE_TIME`] until a request starts, then [`REQUEST_TIME`] for it.
async fn connection(
    mut stream: TcpStream,
    scrapes: &mpsc::Sender<Scrape>,
    me: &Leave,
) -> io::Result<()> {
    let mut buf = Vec::new();
    let n = timeout(IDLE_TIME, stream.read_buf(&mut buf))
        .await
        .map_err(|_| io::Error::other("idle"))??;
    if n == 0 {
        return Ok(());
    }
    let start = Instant::now();
    lock(&me.0).busy(me.1, start);
    timeout_at(start + REQUEST_TIME, request(&mut stream, buf, scrapes))
        .await
        .map_err(|_| io::Error::other("request not complete in time"))?
}

async fn request(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    scrapes: &mpsc::Sender<Scrape>,
) -> io::Result<()> {
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            return respond(stream, "431 Request Header Fields Too Large", TEXT, "").await;
        }
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let openmetrics = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        });
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let (tx, rx) = oneshot::channel();
            if scrapes.send(tx).await.is_err() {
                return respond(stream, "503 Service Unavailable", TEXT, "stopping\n").await;
            }
            let Ok(text) = rx.await else {
                return respond(stream, "503 Service Unavailable", TEXT, "stopping\n").await;
            };
            let body = if openmetrics { text } else { classic(&text) };
            let body = if method == "HEAD" {
                String::new()
            } else {
                body
            };
            respond(
                stream,
                "200 OK",
                if openmetrics { OPENMETRICS } else { TEXT },
                &body,
            )
            .await
        }
        ("GET" | "HEAD", "/") => {
            respond(
                stream,
                "200 OK",
                "text/plain; charset=utf-8",
                "ct-trace: metrics at /metrics\n",
            )
            .await
        }
        ("GET" | "HEAD", _) => respond(stream, "404 Not Found", TEXT, "not found\n").await,
        _ => respond(stream, "405 Method Not Allowed", TEXT, "GET only\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// OpenMetrics text as the classic Prometheus text format 0.0.4: a counter family is named
/// with its `_total` sample name, and there is no `# EOF` or `# UNIT`. (The encoder only
/// writes OpenMetrics; the families here have no exemplars, created series or units, so
/// nothing else differs.)
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(tag);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{k=\"v\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{k=\"v\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn a_full_table_closes_the_longest_idle_then_the_oldest_request() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Table::default();
        let mut closed: Vec<_> = (0..MAX_CONNECTIONS as u64)
            .map(|i| t.admit(at(i)).1)
            .collect();
        // Connections 0 and 1 have a request in flight; 2 is the longest idle.
        t.busy(0, at(100));
        t.busy(1, at(101));
        let _new = t.admit(at(200));
        assert_eq!(t.conns.len(), MAX_CONNECTIONS);
        assert!(!t.conns.contains_key(&2), "the longest idle made room");
        use oneshot::error::TryRecvError;
        assert_eq!(
            closed[2].try_recv(),
            Err(TryRecvError::Closed),
            "told to close"
        );
        assert_eq!(closed[3].try_recv(), Err(TryRecvError::Empty), "left open");
        // Every connection busy: the oldest request (connection 0) makes room.
        let ids: Vec<u64> = t.conns.keys().copied().collect();
        for id in ids.into_iter().filter(|id| *id > 1) {
            t.busy(id, at(300 + id));
        }
        let _newer = t.admit(at(400));
        assert!(!t.conns.contains_key(&0) && t.conns.contains_key(&1));
        assert_eq!(t.conns.len(), MAX_CONNECTIONS);
    }
}
