//! Enrichment beside the event path: ctnetlink lookups of the conntrack entry behind an INVALID
//! packet (its original tuple names the Service the client connected to), on a thread of their
//! own, so the ring-buffer drain never waits on netlink. The queue and the cache are bounded;
//! a request that finds the queue full is refused at once, and the event goes out without its
//! entry, saying so (`enrichment: "skipped"`).
//!
//! Interface names are resolved here too, through a small cache, so that a burst of events on
//! one interface costs one `if_indextoname()`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, TryRecvError},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{
    event::ConntrackReport,
    node::netlink::{self, tcp_state_name, Conntrack, Tuple},
};

/// Lookups waiting for the enrichment thread. At ~20 µs a lookup this is a few ms of work: more
/// than that could not be answered before the verdict's fate wait runs out anyway.
pub const QUEUE: usize = 256;
/// Urgent lookups (the entry behind a reset being attributed) waiting: served first, so that a
/// storm of verdicts never starves an attribution of its Service.
pub const URGENT_QUEUE: usize = 1024;
/// Entries kept by tuple (a burst of packets of one flow is looked up once).
pub const CACHE: usize = 4096;
/// How long a cached lookup stays true: entries change state, and disappear.
const CACHE_TTL: Duration = Duration::from_millis(500);

/// Look up the entry of a packet with this tuple; answered with the same token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub token: u64,
    pub tuple: Tuple,
    /// For an attribution: served before every verdict's lookup.
    pub urgent: bool,
}

#[derive(Default)]
struct Queues {
    urgent: VecDeque<Request>,
    bulk: VecDeque<Request>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub token: u64,
    pub entry: Option<ConntrackReport>,
}

type Shared = Arc<(Mutex<Queues>, Condvar)>;

/// The caller's end: send requests without blocking, collect answers without blocking.
pub struct Enricher {
    queues: Shared,
    rx: Receiver<Answer>,
    /// Requests queued whose answers have not been taken yet: at exit, what to wait for.
    outstanding: AtomicUsize,
}

impl Enricher {
    /// Starts the thread, with its own ctnetlink socket in the caller's namespace.
    pub fn start() -> std::io::Result<Self> {
        let ct = Conntrack::open()?;
        let queues: Shared = Arc::default();
        let (answers, rx) = mpsc::channel();
        let q = queues.clone();
        std::thread::Builder::new()
            .name("ct-trace-enrich".into())
            .spawn(move || serve(ct, q, answers))?;
        Ok(Self {
            queues,
            rx,
            outstanding: AtomicUsize::new(0),
        })
    }

    /// Queues a lookup; false when its queue is full.
    pub fn request(&self, r: Request) -> bool {
        let (lock, cv) = &*self.queues;
        let Ok(mut q) = lock.lock() else {
            return false;
        };
        let (queue, max) = if r.urgent {
            (&mut q.urgent, URGENT_QUEUE)
        } else {
            (&mut q.bulk, QUEUE)
        };
        if queue.len() >= max {
            return false;
        }
        queue.push_back(r);
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        cv.notify_one();
        true
    }

    /// The answers ready now.
    pub fn answers(&self, out: &mut Vec<Answer>) {
        loop {
            match self.rx.try_recv() {
                Ok(a) => self.took(a, out),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Every answer still to come, waiting at most `max` for them: at exit, the lookups of the
    /// last events come back (a few µs each) instead of being given up.
    pub fn all_answers(&self, out: &mut Vec<Answer>, max: Duration) {
        let deadline = Instant::now() + max;
        while self.outstanding.load(Ordering::Relaxed) > 0 {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(a) => self.took(a, out),
                Err(_) => return,
            }
        }
    }

    fn took(&self, a: Answer, out: &mut Vec<Answer>) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        out.push(a);
    }
}

/// The next request, urgent ones first; blocks while there is none.
fn next(queues: &Shared) -> Option<Request> {
    let (lock, cv) = &**queues;
    let mut q = lock.lock().ok()?;
    loop {
        if let Some(r) = q.urgent.pop_front().or_else(|| q.bulk.pop_front()) {
            return Some(r);
        }
        q = cv.wait(q).ok()?;
    }
}

fn serve(ct: Conntrack, queues: Shared, answers: mpsc::Sender<Answer>) {
    let mut cache: HashMap<Tuple, (Instant, Option<ConntrackReport>)> = HashMap::new();
    while let Some(r) = next(&queues) {
        let now = Instant::now();
        let entry = match cache.get(&r.tuple) {
            Some((at, e)) if now.duration_since(*at) < CACHE_TTL => e.clone(),
            _ => {
                let e = lookup(&ct, &r.tuple);
                if cache.len() >= CACHE {
                    cache.retain(|_, (at, _)| now.duration_since(*at) < CACHE_TTL);
                    if cache.len() >= CACHE {
                        cache.clear();
                    }
                }
                cache.insert(r.tuple, (now, e.clone()));
                e
            }
        };
        if answers
            .send(Answer {
                token: r.token,
                entry,
            })
            .is_err()
        {
            return;
        }
    }
}

fn lookup(ct: &Conntrack, t: &Tuple) -> Option<ConntrackReport> {
    match ct.lookup(t) {
        Ok(found) => found.map(|(e, dir)| ConntrackReport {
            source: "ctnetlink",
            direction: dir,
            orig_src: e.orig.src,
            orig_sport: e.orig.sport,
            orig_dst: e.orig.dst,
            orig_dport: e.orig.dport,
            reply_src: e.reply.src,
            reply_sport: e.reply.sport,
            reply_dst: e.reply.dst,
            reply_dport: e.reply.dport,
            tcp_state: e.tcp_state.map(tcp_state_name),
            assured: e.status & netlink::IPS_ASSURED != 0,
            original_window: None,
            reply_window: None,
        }),
        Err(e) => {
            log::debug!("conntrack lookup failed: {e}");
            None
        }
    }
}

/// Interface names of ct-trace's namespace by index, cached for a few seconds (interfaces come
/// and go, rarely).
pub struct IfNames {
    cache: HashMap<u32, (Instant, Option<Arc<str>>)>,
}

impl Default for IfNames {
    fn default() -> Self {
        Self::new()
    }
}

impl IfNames {
    const TTL: Duration = Duration::from_secs(5);
    const MAX: usize = 1024;

    pub fn new() -> Self {
        Self {
            cache: HashMap::new(),
        }
    }

    /// The name of an interface, shared: resolved at most once per [`Self::TTL`].
    pub fn name(&mut self, ifindex: u32) -> Option<Arc<str>> {
        if ifindex == 0 {
            return None;
        }
        let now = Instant::now();
        if let Some((at, n)) = self.cache.get(&ifindex) {
            if now.duration_since(*at) < Self::TTL {
                return n.clone();
            }
        }
        if self.cache.len() >= Self::MAX {
            self.cache.clear();
        }
        let n = Some(Arc::from(
            resolve(ifindex).unwrap_or_else(|| format!("if{ifindex}")),
        ));
        self.cache.insert(ifindex, (now, n.clone()));
        n
    }
}

fn resolve(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}
