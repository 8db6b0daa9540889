//! The thread that watches conntrack entries go: ctnetlink destroy events of the namespace
//! ct-trace runs in, classified with the kernel's `early_drop` counter read after each batch
//! (see `lost`), handed to the event loop without blocking it. Overflows of the netlink socket
//! (the kernel dropped events for this listener) are counted and reported, never silent.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, TryRecvError},
        Arc,
    },
    thread::JoinHandle,
};

use crate::{
    node::kstat,
    node::netlink::DestroyEvents,
    pipeline::lost::{Classifier, Gone},
};

/// Batches waiting for the event loop; beyond this the thread drops a batch and counts it.
const BACKLOG: usize = 1024;

/// How often the kernel's counters are read when no event needs them (see
/// [`Classifier::needs_counter`]): a read of /proc/net/stat/nf_conntrack costs tens of
/// microseconds, and a read per batch, with closing flows' expiries arriving one at a time,
/// took 8-14% of a CPU on a 6k connections/s workload (tests/scripts/nf-cost.sh's crr).
const COUNTERS_EVERY_NS: u64 = 100_000_000;

/// After a batch smaller than [`COALESCE_BELOW`] events the thread waits this long before its
/// next receive, so that a steady trickle of expiries (one per closing flow) costs ~100
/// wake-ups a second instead of one per event; a larger batch (a storm) is followed at once,
/// and the socket's buffer (8 MiB asked, doubled by the kernel) holds ~13k events (1,280 bytes
/// each on 6.18, tests/tests/destroy_storm.rs), far more than 10 ms of a trickle.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(10);
const COALESCE_BELOW: usize = 1024;

pub struct Watcher {
    rx: Receiver<Vec<Gone>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Socket overflows (ENOBUFS) plus batches the event loop was too slow for.
    pub overflows: Arc<AtomicU64>,
    /// Batches received so far (to tell when the kernel has gone quiet).
    batches: Arc<AtomicU64>,
    /// See [`Watcher::watermark`].
    watermark: Arc<AtomicU64>,
}

impl Watcher {
    /// Subscribes in the caller's namespace (so, before the caller changes namespace) and
    /// starts the thread.
    pub fn start(boot_now: fn() -> u64) -> std::io::Result<Self> {
        let mut events = DestroyEvents::open()?;
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let stop = Arc::new(AtomicBool::new(false));
        let overflows = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let watermark = Arc::new(AtomicU64::new(0));
        let (s, o, b, w) = (
            stop.clone(),
            overflows.clone(),
            batches.clone(),
            watermark.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("ct-trace-destroy".into())
            .spawn(move || {
                let mut early_drop = kstat::read()
                    .ok()
                    .and_then(|m| m.get("early_drop").copied())
                    .unwrap_or(0);
                let mut classifier = Classifier::default();
                let mut batch = Vec::new();
                let mut told = Vec::new();
                let (mut entries, mut read_at) = (None, boot_now());
                loop {
                    let stopping = s.load(Ordering::Relaxed);
                    let drained_at = match events.recv(&mut batch, boot_now) {
                        Ok(r) => {
                            if r.overflowed {
                                o.fetch_add(1, Ordering::Relaxed);
                            }
                            r.drained_at
                        }
                        Err(e) => {
                            log::warn!("conntrack destroy events stopped: {e}");
                            // Nothing more will come: records stop waiting for it.
                            w.store(u64::MAX, Ordering::Release);
                            return;
                        }
                    };
                    let got = batch.len();
                    // Read after the events: the kernel moves the counter after it sends an
                    // evicted entry's event.
                    let now = boot_now();
                    let mut delta = 0;
                    if stopping
                        || classifier.needs_counter(&batch)
                        || now.saturating_sub(read_at) >= COUNTERS_EVERY_NS
                    {
                        read_at = now;
                        let stats = kstat::read().ok();
                        let now_drop = stats
                            .as_ref()
                            .and_then(|m| m.get("early_drop").copied())
                            .unwrap_or(early_drop);
                        entries = stats.as_ref().and_then(|m| m.get("entries").copied());
                        delta = now_drop.saturating_sub(early_drop);
                        early_drop = now_drop;
                    }
                    classifier.step(std::mem::take(&mut batch), delta, boot_now(), &mut told);
                    if stopping {
                        classifier.flush(&mut told);
                    }
                    if !told.is_empty() {
                        let gone: Vec<Gone> = told
                            .drain(..)
                            .map(|(destroyed, how, certain, boot_ns)| Gone {
                                destroyed,
                                how,
                                certain,
                                boot_ns,
                                entries,
                            })
                            .collect();
                        if tx.try_send(gone).is_err() {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        b.fetch_add(1, Ordering::Relaxed);
                    }
                    // Past `drained_at` only when the classifier holds nothing back (entries
                    // waiting for the early_drop counter are not handed over yet).
                    if let Some(at) = drained_at.filter(|_| !classifier.holds()) {
                        w.store(at, Ordering::Release);
                    }
                    if stopping {
                        w.store(u64::MAX, Ordering::Release);
                        return;
                    }
                    if (1..COALESCE_BELOW).contains(&got) {
                        std::thread::sleep(COALESCE);
                    }
                }
            })?;
        Ok(Self {
            rx,
            stop,
            thread: Some(thread),
            overflows,
            batches,
            watermark,
        })
    }

    /// CLOCK_BOOTTIME up to which every destroy event the kernel sent is in the channel (read
    /// it before [`Watcher::take`]); `u64::MAX` once the thread has stopped.
    pub fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// Waits until no batch arrived for `quiet` (at most `max`): after detaching, the destroy
    /// events of the run's last moments are still on their way (the kernel may also redeliver
    /// events it could not send at once).
    pub fn wait_quiet(&self, quiet: std::time::Duration, max: std::time::Duration) {
        let start = std::time::Instant::now();
        let mut seen = self.batches.load(Ordering::Relaxed);
        let mut since = std::time::Instant::now();
        while start.elapsed() < max && since.elapsed() < quiet {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = self.batches.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                since = std::time::Instant::now();
            }
        }
    }

    /// The batches ready now.
    pub fn take(&self, out: &mut Vec<Gone>) {
        loop {
            match self.rx.try_recv() {
                Ok(b) => out.extend(b),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
