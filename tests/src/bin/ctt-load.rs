//! `ctt-load`: a small TCP load generator for `cargo xtask bench`'s hot-path runs (std only).
//! Run it inside the bench's namespaces: the clients connect only to the address given.
//!
//! Usage:
//!   ctt-load server PORT          accept loop, a thread per connection, echoes 64-byte messages
//!                                 until EOF
//!   ctt-load rr ADDR PORT SECS    one connection (TCP_NODELAY), 64-byte request/response as fast
//!                                 as it goes for SECS; prints `rr TRANSACTIONS_PER_S`
//!   ctt-load crr ADDR PORT SECS   a new connection per request (connect, send 64, read 64,
//!                                 close) for SECS; prints `crr TRANSACTIONS_PER_S`

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::exit,
    time::{Duration, Instant},
};

const MSG: usize = 64;

fn usage() -> ! {
    eprintln!("usage: ctt-load server PORT | rr ADDR PORT SECS | crr ADDR PORT SECS");
    exit(2)
}

fn die(what: &str, e: std::io::Error) -> ! {
    eprintln!("ctt-load: {what}: {e}");
    exit(1)
}

fn serve(port: u16) -> ! {
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| die("bind", e));
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; MSG];
            // Ends at EOF (or any error): every loop is bounded by its client.
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
    exit(1)
}

fn rr(to: SocketAddr, secs: f64) -> f64 {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .unwrap_or_else(|e| die("connect", e));
    s.set_nodelay(true)
        .unwrap_or_else(|e| die("TCP_NODELAY", e));
    // A stalled peer must not hold the run past its end.
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| die("SO_RCVTIMEO", e));
    let mut buf = [7u8; MSG];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        s.write_all(&buf).unwrap_or_else(|e| die("write", e));
        s.read_exact(&mut buf).unwrap_or_else(|e| die("read", e));
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One connect, 64-byte request, 64-byte response, close.
fn transaction(to: SocketAddr, buf: &mut [u8; MSG]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(buf)?;
    s.read_exact(buf)?;
    Ok(())
}

fn crr(to: SocketAddr, secs: f64) -> f64 {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut n, mut errors) = (0u64, 0u64);
    let mut last_error = None;
    let mut buf = [7u8; MSG];
    while Instant::now() < end {
        match transaction(to, &mut buf) {
            Ok(()) => n += 1,
            Err(e) => {
                errors += 1;
                last_error = Some(e);
                // Out of ports or a refused connection: do not spin.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    if let Some(e) = last_error {
        eprintln!("ctt-load: crr: {errors} failed transactions (last: {e})");
        if n == 0 || e.kind() == ErrorKind::ConnectionRefused {
            exit(1);
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = |s: &String| -> u16 { s.parse().unwrap_or_else(|_| usage()) };
    match args.as_slice() {
        [cmd, p] if cmd == "server" => serve(port(p)),
        [cmd, addr, p, secs] if cmd == "rr" || cmd == "crr" => {
            let ip: IpAddr = addr.parse().unwrap_or_else(|_| usage());
            let secs: f64 = secs
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0 && *s <= 3600.0)
                .unwrap_or_else(|| usage());
            let to = SocketAddr::new(ip, port(p));
            let tps = if cmd == "rr" {
                rr(to, secs)
            } else {
                crr(to, secs)
            };
            println!("{cmd} {tps:.0}");
        }
        _ => usage(),
    }
}
