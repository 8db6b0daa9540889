//! The stages between the ring buffer and the output, as the event loop drives them: decode and
//! correlate a bounded batch, then settle what waits (ctnetlink lookups and answers, destroyed
//! entries, ageing), and hand the reports on in time order. The node's facts the correlator
//! needs (the table's count and limit, the destroy watcher's progress) are read here, at most
//! once a tick for the /proc ones, and handed to it as one [`Batch`].

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};

use crate::{
    event::{Report, Time},
    kernel::maps::{self, CtMax},
    pipeline::attribution::{Batch, Correlator, Output, FATE_WAIT},
    pipeline::destroy::Watcher,
    pipeline::enrich::Enricher,
    pipeline::events,
    pipeline::order::{Reorder, MARGIN_NS},
};

/// ctnetlink lookups for verdicts per second at most (attributions' lookups are not limited):
/// in a storm of INVALID packets, looking each one up would keep a core busy for entries that
/// mostly do not exist; beyond this the verdicts go out with `enrichment: "skipped"`.
pub(crate) const LOOKUPS_PER_SEC: u32 = 2000;

/// How long the exit waits at most for the lookups still in flight: at most the queues' few
/// thousand lookups of ~20 µs each, unless netlink is stuck.
const FLUSH_ANSWERS: Duration = Duration::from_millis(500);

/// The stages between the ring buffer and the output.
pub(crate) struct Pipe<'a> {
    pub(crate) corr: &'a mut Correlator,
    pub(crate) enricher: Option<&'a Enricher>,
    pub(crate) watcher: Option<&'a Watcher>,
    pub(crate) ct_max: &'a mut CtMax,
    pub(crate) out: Output,
    pub(crate) decode_errors: u64,
    /// Verdict lookups sent in the current second, and when it began.
    pub(crate) lookups: (u32, Instant),
    /// Reports waiting for their turn (see `order`), and those whose turn came.
    pub(crate) order: Reorder,
    pub(crate) ready: Vec<Report>,
    /// CLOCK_BOOTTIME that every record still to come from the ring buffer was read at or
    /// after (less [`MARGIN_NS`]): the time before a read that found it empty, or the time of
    /// the last record read (records are in the order they were reserved).
    pub(crate) ring_read_to: u64,
    /// The facts last handed to the correlator.
    pub(crate) batch: Batch,
    /// Whether the table's count and limit were read in this tick.
    table_read: bool,
}

impl<'a> Pipe<'a> {
    pub(crate) fn new(
        corr: &'a mut Correlator,
        enricher: Option<&'a Enricher>,
        watcher: Option<&'a Watcher>,
        ct_max: &'a mut CtMax,
    ) -> Self {
        // With a watcher, `midstream` records wait for it (see attribution::MIDSTREAM_WAIT).
        let batch = Batch {
            entries: None,
            ct_max: ct_max.last,
            watermark: watcher.map(|w| w.watermark()),
        };
        corr.batch(batch);
        Self {
            corr,
            enricher,
            watcher,
            ct_max,
            out: Output::default(),
            decode_errors: 0,
            lookups: (0, Instant::now()),
            order: Reorder::default(),
            ready: Vec::new(),
            ring_read_to: 0,
            batch,
            table_read: false,
        }
    }

    /// A new tick of the event loop: the table is read again when its events need it.
    pub(crate) fn next_tick(&mut self) {
        self.table_read = false;
    }

    /// Reads the table's count and limit (two small /proc reads; the limit is also handed to
    /// the programs when it changed) and hands them to the correlator.
    pub(crate) fn read_table(&mut self) {
        self.batch.entries = maps::read_count();
        self.batch.ct_max = self.ct_max.refresh();
        self.table_read = true;
        self.corr.batch(self.batch);
    }

    /// Reads the table's limit again (and hands it to the programs when it changed).
    pub(crate) fn refresh_max(&mut self) {
        self.batch.ct_max = self.ct_max.refresh();
        self.corr.batch(self.batch);
    }

    /// Decodes and correlates up to `max` records; returns how many there were.
    pub(crate) fn drain(&mut self, ring: &mut RingBuf<MapData>, max: usize, now: Instant) -> usize {
        let mut n = 0;
        let started = crate::event::time::boot_now();
        while n < max {
            let Some(item) = ring.next() else {
                self.ring_read_to = self.ring_read_to.max(started);
                break;
            };
            n += 1;
            match events::decode(&item) {
                Ok(ev) => {
                    self.ring_read_to = self.ring_read_to.max(ev.ts_ns());
                    if !self.table_read && matches!(ev, events::Event::Pressure(..)) {
                        // The table's count and limit for this tick's table-pressure events,
                        // read when the first of them is in hand (not before): a table that
                        // filled in a burst since the last tick is not shown with the count
                        // and limit from before it.
                        self.read_table();
                    }
                    self.corr.event(ev, now, &mut self.out)
                }
                Err(e) => {
                    self.decode_errors += 1;
                    log::debug!("undecodable record: {e}");
                }
            }
        }
        self.settle(now, false);
        n
    }

    /// Sends the lookups (a full queue is answered "skipped" at once), applies the answers
    /// that are in, and ages what waits.
    pub(crate) fn settle(&mut self, now: Instant, flush: bool) {
        self.lookup(now, flush);
        if let Some(w) = self.watcher {
            // Before taking: everything up to the watermark is then in hand.
            self.batch.watermark = Some(w.watermark());
            self.corr.batch(self.batch);
            let mut gone = Vec::new();
            w.take(&mut gone);
            if !gone.is_empty() {
                self.corr.gone(gone, &mut self.out);
            }
        }
        if flush {
            // At exit nothing more will come: the verdicts still waiting for their fate are
            // due now, and the attributions of their resets ask for lookups of their own,
            // which are sent and waited for too before anything goes out without its entry.
            // (The resets held until now had their answers waited for just above; those this
            // tick holds wait FATE_WAIT past it, so it releases none of them.)
            self.corr.tick(now + FATE_WAIT, false, &mut self.out);
            self.lookup(now, true);
        }
        self.corr.tick(now, flush, &mut self.out);
    }

    /// Sends the lookups asked for (a full queue, or the verdicts' rate, answers "skipped" at
    /// once) and applies the answers that are in; with `wait`, every answer still to come.
    fn lookup(&mut self, now: Instant, wait: bool) {
        let lookups = std::mem::take(&mut self.out.lookups);
        for r in lookups {
            if !r.urgent {
                if now.duration_since(self.lookups.1) >= Duration::from_secs(1) {
                    self.lookups = (0, now);
                }
                if self.lookups.0 >= LOOKUPS_PER_SEC {
                    self.corr.answer(r.token, None, &mut self.out);
                    continue;
                }
                self.lookups.0 += 1;
            }
            let queued = self.enricher.is_some_and(|e| e.request(r));
            if !queued {
                self.corr.answer(r.token, None, &mut self.out);
            }
        }
        if let Some(e) = self.enricher {
            let mut answers = Vec::new();
            if wait {
                // The lookups in flight come back, however late the enrichment thread runs;
                // bounded, so a stalled netlink socket never holds up the exit.
                e.all_answers(&mut answers, FLUSH_ANSWERS);
            } else {
                e.answers(&mut answers);
            }
            self.corr.answers(answers, &mut self.out);
        }
    }

    /// The reports that are due, in time order: those older than everything still in flight
    /// (held by the correlator, unread in the ring buffer, not yet handed over by the destroy
    /// watcher). The caller writes them and leaves the vector empty.
    pub(crate) fn ordered(&mut self) -> &mut Vec<Report> {
        self.order.push(&mut self.out.reports);
        let mut bound = self.corr.time(self.ring_read_to);
        if let Some(w) = self.watcher {
            bound = bound.min(self.corr.time(w.watermark()));
        }
        if let Some(held) = self.corr.held_since() {
            bound = bound.min(held);
        }
        let bound = Time(bound.0.saturating_sub(MARGIN_NS));
        self.order.release(Some(bound), &mut self.ready);
        &mut self.ready
    }

    /// Every report, in time order (at exit, after the last `settle`).
    pub(crate) fn ordered_all(&mut self) -> &mut Vec<Report> {
        self.order.push(&mut self.out.reports);
        self.order.release(None, &mut self.ready);
        &mut self.ready
    }
}
