//! The HTTP side of `--metrics`: `GET /metrics` on the event loop's own tokio runtime.
//!
//! Each scrape asks the event loop for the text (a channel with a one-shot reply), so the
//! kernel counters are read at the moment of the scrape and nothing is shared between threads.
//! HTTP/1.x, one request per connection, bounded: a few connections at once, a small request,
//! a deadline to send it. Prometheus' own scraper asks for OpenMetrics; anything else (curl,
//! `promtool check metrics`) gets the classic text format 0.0.4.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, Semaphore},
};

/// A scrape: the event loop answers with the OpenMetrics text.
pub type Scrape = oneshot::Sender<String>;

const MAX_CONNECTIONS: usize = 8;
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds before anything is attached, so a taken port or a bad address fails the run before a
/// program is loaded.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!("metrics: {peer}: too many connections, closed");
            continue;
        };
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(REQUEST_DEADLINE, handle(stream, scrapes))
                .await
                .unwrap_or_else(|_| Err(io::Error::other("request deadline passed")))
            {
                log::debug!("metrics: {peer}: {e}");
            }
            drop(slot);
        });
    }
}

async fn handle(mut stream: TcpStream, scrapes: mpsc::Sender<Scrape>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", TEXT, "").await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
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
                return respond(&mut stream, "503 Service Unavailable", TEXT, "stopping\n").await;
            }
            let Ok(text) = rx.await else {
                return respond(&mut stream, "503 Service Unavailable", TEXT, "stopping\n").await;
            };
            let body = if openmetrics { text } else { classic(&text) };
            let body = if method == "HEAD" {
                String::new()
            } else {
                body
            };
            respond(
                &mut stream,
                "200 OK",
                if openmetrics { OPENMETRICS } else { TEXT },
                &body,
            )
            .await
        }
        ("GET" | "HEAD", "/") => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain; charset=utf-8",
                "ct-trace: metrics at /metrics\n",
            )
            .await
        }
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", TEXT, "not found\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", TEXT, "GET only\n").await,
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

/// `ADDR:PORT` for `--metrics` (`:PORT` listens on every address).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("`{s}` is not ADDR:PORT (e.g. 127.0.0.1:9469, [::1]:9469 or :9469)"))
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
    fn listen_addresses_parse() {
        assert_eq!(
            parse_listen("127.0.0.1:9469"),
            Ok("127.0.0.1:9469".parse().unwrap())
        );
        assert_eq!(parse_listen(":9469"), Ok("0.0.0.0:9469".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:1"), Ok("[::1]:1".parse().unwrap()));
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("1.2.3.4").is_err());
    }
}
