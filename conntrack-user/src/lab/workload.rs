//! The lab's TCP workload through the Service, every socket a thread of this process made in
//! the client or server namespace: a few long-lived connections (a greeting, then idle until
//! they are checked with a ping the server answers) and a run of short request/response
//! connections beside the fault. Every wait is bounded.

use std::{
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    topology::{in_netns, Lab, SERVER_IP, SERVER_PORT, SERVICE},
    LabError,
};

/// Long-lived connections held open across the fault.
pub const LONG: usize = 4;
/// Short connections made while the fault happens.
pub const SHORT: usize = 20;
/// Bytes the server answers a short request with.
const RESPONSE: usize = 4096;
/// How long a check waits for an answer: a dropped packet is retransmitted within it.
const PATIENCE: Duration = Duration::from_millis(1500);

/// One long-lived connection, both ends.
pub struct LongConn {
    /// The client's port (the flow's identity at the node: client:port -> Service).
    pub cport: u16,
    pub client: TcpStream,
    pub server: TcpStream,
}

/// What happened to the connections, as the applications saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub connections: u32,
    /// Connections that ended with "connection reset by peer" at either end.
    pub reset: u32,
    /// Connections that failed otherwise (no answer in time, refused, short read).
    pub failed: u32,
}

impl Outcome {
    pub fn lost(&self) -> u32 {
        self.reset + self.failed
    }

    fn add(&mut self, r: ConnResult) {
        self.connections += 1;
        match r {
            ConnResult::Ok => {}
            ConnResult::Reset => self.reset += 1,
            ConnResult::Failed => self.failed += 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnResult {
    Ok,
    Reset,
    Failed,
}

fn classify(e: &io::Error) -> ConnResult {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            ConnResult::Reset
        }
        _ => ConnResult::Failed,
    }
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> LabError + '_ {
    move |e| LabError::Workload(format!("{what}: {e}"))
}

/// The server's listening socket, in the server namespace.
pub fn listen(lab: &Lab) -> Result<TcpListener, LabError> {
    in_netns(&lab.server, || {
        TcpListener::bind(SocketAddr::from((SERVER_IP, SERVER_PORT)))
    })
    .and_then(|r| r)
    .map_err(io_err("listening in the server namespace"))
}

/// Opens the long-lived connections: each greets the server and gets its greeting back.
pub fn open_long(lab: &Lab, listener: &TcpListener) -> Result<Vec<LongConn>, LabError> {
    let mut conns = Vec::with_capacity(LONG);
    for _ in 0..LONG {
        let client = in_netns(&lab.client, || {
            TcpStream::connect_timeout(&SERVICE.into(), PATIENCE)
        })
        .and_then(|r| r)
        .map_err(io_err(
            "connecting to the Service from the client namespace",
        ))?;
        let server = accept(listener)?;
        for s in [&client, &server] {
            s.set_read_timeout(Some(PATIENCE))
                .map_err(io_err("timeout"))?;
            s.set_write_timeout(Some(PATIENCE))
                .map_err(io_err("timeout"))?;
        }
        let cport = client.local_addr().map_err(io_err("local address"))?.port();
        (&client)
            .write_all(b"hello\n")
            .map_err(io_err("greeting"))?;
        expect_line(&server, "hello").map_err(io_err("greeting"))?;
        (&server)
            .write_all(b"hello\n")
            .map_err(io_err("greeting"))?;
        expect_line(&client, "hello").map_err(io_err("greeting"))?;
        conns.push(LongConn {
            cport,
            client,
            server,
        });
    }
    Ok(conns)
}

fn accept(listener: &TcpListener) -> Result<TcpStream, LabError> {
    listener.set_nonblocking(true).map_err(io_err("listener"))?;
    let t0 = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(io_err("accepted socket"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && t0.elapsed() < PATIENCE => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(LabError::Workload(format!("accepting a connection: {e}"))),
        }
    }
}

/// Reads one line (byte by byte: nothing past it is consumed) and checks it.
fn expect_line(s: &TcpStream, want: &str) -> io::Result<()> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match (&*s).read(&mut b)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    if line != want.as_bytes() {
        return Err(io::Error::other(format!(
            "expected {want:?}, got {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(())
}

/// Checks a long connection after the fault: does the server still have it, and does a ping
/// from the client get its pong back?
pub fn check_long(c: &LongConn) -> ConnCheck {
    // The server end first: a reset already received shows here without sending anything.
    let _ = c.server.set_nonblocking(true);
    let mut b = [0u8; 256];
    let server_side = match (&c.server).read(&mut b) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => ConnResult::Ok,
        Err(e) => classify(&e),
        // Data the server did not expect (none is sent to it unasked): still alive.
        Ok(n) if n > 0 => ConnResult::Ok,
        Ok(_) => ConnResult::Failed,
    };
    let _ = c.server.set_nonblocking(false);
    let client_side = ping(c, server_side == ConnResult::Ok);
    ConnCheck {
        server: server_side,
        client: client_side,
    }
}

fn ping(c: &LongConn, server_alive: bool) -> ConnResult {
    if let Err(e) = (&c.client).write_all(b"ping\n") {
        return classify(&e);
    }
    if server_alive {
        match expect_line(&c.server, "ping") {
            Ok(()) => {
                if let Err(e) = (&c.server).write_all(b"pong\n") {
                    return classify(&e);
                }
            }
            Err(e) => return classify(&e),
        }
    }
    // The client may first read what the server sent unasked (lost-entry's late reply, when
    // it did arrive): skip lines until the pong.
    let mut r = BufReader::new(&c.client);
    let t0 = Instant::now();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return ConnResult::Failed,
            Ok(_) if line.trim_end() == "pong" => return ConnResult::Ok,
            Ok(_) if t0.elapsed() < PATIENCE => continue,
            Ok(_) => return ConnResult::Failed,
            Err(e) => return classify(&e),
        }
    }
}

/// What a long connection's check found at each end.
#[derive(Clone, Copy, Debug)]
pub struct ConnCheck {
    server: ConnResult,
    client: ConnResult,
}

/// The long connections' tally: a connection reset at either end counts as reset once.
pub fn tally_long(checks: &[ConnCheck]) -> Outcome {
    let mut o = Outcome::default();
    for c in checks {
        o.add(match (c.server, c.client) {
            (ConnResult::Reset, _) | (_, ConnResult::Reset) => ConnResult::Reset,
            (ConnResult::Ok, ConnResult::Ok) => ConnResult::Ok,
            _ => ConnResult::Failed,
        });
    }
    o
}

/// Short connections in the background: a server thread answering them and a client thread
/// making them one after another.
pub struct Shorts {
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    client: Option<JoinHandle<Outcome>>,
}

impl Shorts {
    /// Starts them; `listener` is handed to the server thread.
    pub fn start(lab: &Lab, listener: TcpListener) -> Result<Self, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lab-server".into())
                .spawn(move || serve_short(listener, &stop))
                .map_err(io_err("starting the server thread"))?
        };
        let client_ns = lab.client.clone();
        let client = std::thread::Builder::new()
            .name("lab-client".into())
            .spawn(move || {
                in_netns(&client_ns, || {
                    let mut o = Outcome::default();
                    for _ in 0..SHORT {
                        o.add(short_request());
                        std::thread::sleep(Duration::from_millis(15));
                    }
                    o
                })
                .unwrap_or(Outcome {
                    connections: SHORT as u32,
                    failed: SHORT as u32,
                    reset: 0,
                })
            })
            .map_err(io_err("starting the client thread"))?;
        Ok(Self {
            stop,
            server: Some(server),
            client: Some(client),
        })
    }

    /// Waits for the client to finish its run, then stops the server.
    pub fn finish(mut self) -> Outcome {
        let o = self
            .client
            .take()
            .and_then(|c| c.join().ok())
            .unwrap_or_default();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
        o
    }
}

impl Drop for Shorts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request/response through the Service from the calling thread's namespace.
pub(super) fn short_request() -> ConnResult {
    let s = match TcpStream::connect_timeout(&SERVICE.into(), PATIENCE) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let _ = s.set_read_timeout(Some(PATIENCE));
    let _ = s.set_write_timeout(Some(PATIENCE));
    if let Err(e) = (&s).write_all(b"GET\n") {
        return classify(&e);
    }
    let mut body = Vec::new();
    match (&s).read_to_end(&mut body) {
        Ok(_) if body.len() == RESPONSE => ConnResult::Ok,
        Ok(_) => ConnResult::Failed,
        Err(e) => classify(&e),
    }
}

fn serve_short(listener: TcpListener, stop: &AtomicBool) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(PATIENCE));
                let _ = s.set_write_timeout(Some(PATIENCE));
                // The whole request is read before answering: closing with unread data would
                // itself send a RST.
                if expect_line(&s, "GET").is_ok() {
                    let _ = (&s).write_all(&[b'x'; RESPONSE]);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
