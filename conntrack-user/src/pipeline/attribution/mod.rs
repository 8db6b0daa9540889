//! The correlation core: turns kernel records into reports. It joins each INVALID verdict with
//! the reason conntrack logged for it, its fate (a later drop), its conntrack entry (from the
//! kernel's copy, or a ctnetlink lookup answered by the enrichment thread) and the resets it
//! caused (matched exactly in the kernel by tuple, seq and ack), and keeps the per-flow reset
//! summary. Pure code: no I/O (lookups go out as [`Request`]s, answers come back in), so every
//! rule here is unit-tested on its own.
//!
//! Every record that arrives becomes a report, once: a verdict waits at most [`FATE_WAIT`] for
//! its fate and its lookup, then goes out with what is known. Every map is bounded.
//!
//! The work is split by what it joins, each part owning its state in [`Bounded`] maps:
//! `verdicts` (verdicts with their reason, fate and lookup), `resets` (resets with the verdict
//! or lost entry behind them, and the per-flow summary in `flows`), `midstream` (records of
//! flows picked up mid-stream with the entry they lost). [`Correlator`] routes events and
//! answers between them; `shared` holds what all read, including the [`Batch`] facts the
//! caller hands in once per batch.
//!
//! [`Bounded`]: crate::pipeline::bounded::Bounded
//! [`Request`]: crate::pipeline::enrich::Request

use std::time::Instant;

use conntrack_common::{Cause, Kind, Reset};

pub use self::{
    flows::{FlowStats, MAX_FLOWS},
    midstream::MIDSTREAM_WAIT,
    resets::reset_for,
    shared::{Batch, Context, Output, FATE_WAIT, MAX_PENDING, MAX_WAITING, RECENT},
};
pub use crate::event::StrayTally;
use crate::{
    event::{ConntrackReport, FlowReport, Report, Time},
    node::services::ServiceLookup,
    pipeline::enrich::Answer,
    pipeline::events::Event,
    pipeline::lost::{Gone, LostReport},
};

mod flows;
mod midstream;
mod resets;
mod shared;
mod verdicts;

/// The correlation core: the parts, and the routes between them.
pub struct Correlator {
    sh: shared::Shared,
    verdicts: verdicts::Verdicts,
    resets: resets::Resets,
    mids: midstream::Midstream,
}

impl Correlator {
    pub fn new(ctx: Context) -> Self {
        Self {
            sh: shared::Shared::new(ctx),
            verdicts: verdicts::Verdicts::new(),
            resets: resets::Resets::new(),
            mids: midstream::Midstream::new(),
        }
    }

    /// The Service names of kube-proxy's rules, to name the flows in reports.
    pub fn set_service_names(&mut self, names: Option<ServiceLookup>) {
        self.sh.names = names;
    }

    /// The facts for the events and ticks that follow, until the next batch.
    pub fn batch(&mut self, b: Batch) {
        self.sh.batch = b;
    }

    pub fn time(&self, boot_ns: u64) -> Time {
        self.sh.time(boot_ns)
    }

    /// `nf_conntrack_max` as the last batch had it.
    pub fn ct_max(&self) -> Option<u32> {
        self.sh.batch.ct_max
    }

    /// Reasons on packets that were neither INVALID nor TCP (not reported).
    pub fn reasons_unmatched(&self) -> u64 {
        self.verdicts.reasons_unmatched
    }

    /// Reports that went out without their lookup's answer.
    pub fn enrichment_skipped(&self) -> u64 {
        self.verdicts.enrichment_skipped + self.resets.enrichment_skipped
    }

    /// Resets of packets of no tracked flow (see [`StrayTally`]).
    pub fn strays(&self) -> StrayTally {
        self.resets.strays
    }

    /// `evicted` events that were inferred, not certain.
    pub fn evicted_inferred(&self) -> u64 {
        self.mids.evicted_inferred
    }

    /// The flows ranked by attributed resets, most first.
    pub fn summary(&self) -> Vec<FlowReport> {
        self.resets.flows.summary()
    }

    /// Handles one event; the reports it completes are appended to `out`, in order.
    pub fn event(&mut self, ev: Event, now: Instant, out: &mut Output) {
        self.sh.now = now;
        match ev {
            Event::Invalid(v) => {
                if let Some((id, p)) = self.verdicts.invalid(v, now, &mut self.sh, out) {
                    let done = self.verdicts.expire(id, p, &self.sh, out);
                    self.verdict_done(Some(done), out);
                }
            }
            Event::Reason(r) => self.verdicts.reason(r, now, &self.sh, out),
            Event::Drop(d) => {
                let done = self.verdicts.drop(d, &self.sh, out);
                self.verdict_done(done, out);
            }
            Event::Reset(kind, r) => self.reset(kind, r, out),
            Event::Pressure(Kind::TableFull, p) => midstream::table_full(&p, &self.sh, out),
            Event::Pressure(_, p) => {
                let (evicted, found) = self.mids.wait(&p, now, &self.sh);
                for m in evicted.into_iter().chain(found) {
                    self.mid_done(m, out);
                }
            }
        }
    }

    /// The answer to a lookup (or `None` for a request the enrichment queue refused).
    pub fn answer(&mut self, token: u64, entry: Option<Option<ConntrackReport>>, out: &mut Output) {
        // Held resets first: their lookups are the urgent ones.
        if self.resets.holds(token) {
            self.resets.answer(token, entry, &self.sh, out);
            return;
        }
        let done = self.verdicts.answer(token, entry, &self.sh, out);
        self.verdict_done(done, out);
    }

    /// Applies the answers of the enrichment thread.
    pub fn answers(&mut self, answers: Vec<Answer>, out: &mut Output) {
        for a in answers {
            self.answer(a.token, Some(a.entry), out);
        }
    }

    /// Entries that went: `evicted` ones are reported; every one is remembered, and completes
    /// the `midstream` records waiting for it.
    pub fn gone(&mut self, gone: Vec<Gone>, out: &mut Output) {
        for m in self.mids.gone(gone, &self.sh, out) {
            self.mid_done(m, out);
        }
    }

    /// Reports what waited long enough (verdicts as `passed`, reasons without a verdict as
    /// `ignored`, resets without their lookup, `midstream` records without their lost entry),
    /// or everything with `flush`.
    pub fn tick(&mut self, now: Instant, flush: bool, out: &mut Output) {
        self.sh.now = now;
        self.verdicts.tick_reasons(now, flush, &self.sh, out);
        for (id, p) in self.verdicts.due(now, flush) {
            let done = self.verdicts.expire(id, p, &self.sh, out);
            self.verdict_done(Some(done), out);
        }
        self.resets.tick(now, flush, &self.sh, out);
        for m in self.mids.due(now, flush, self.sh.batch.watermark) {
            self.mid_done(m, out);
        }
    }

    /// The time of the oldest report still held here (a verdict waiting for its fate or
    /// lookup, a reason for its verdict, a reset for its lookup, a `midstream` record for its
    /// lost entry): no report this correlator makes later is older, up to the disorder of
    /// arrival (see `order`).
    pub fn held_since(&self) -> Option<Time> {
        let [verdict, reason] = self.verdicts.held_since(&self.sh);
        let held = self.resets.held_since();
        let mid = self.mids.held_since();
        [verdict, held, mid, reason].into_iter().flatten().min()
    }

    fn reset(&mut self, kind: Kind, r: Reset, out: &mut Output) {
        let report = resets::reset_report(kind, &r, &mut self.sh);
        if kind != Kind::RstSent || report.cause.is_none() {
            out.reports.push(if kind == Kind::RstSent {
                Report::RstSent(report)
            } else {
                Report::RstReceived(report)
            });
            return;
        }
        let id = (r.cause.skb, r.cause.ts_ns);
        if r.cause.cause == Cause::EntryLost as u8 {
            if let Some((r, report, lost)) = self.mids.join_reset(id, r, report, &self.sh) {
                self.resets.lost_attribution(r, report, lost, &self.sh, out);
            }
            return;
        }
        if self.verdicts.waiting(&id) {
            let done = self.verdicts.join_reset(id, r, report, &self.sh, out);
            self.verdict_done(done, out);
            return;
        }
        let invalid = self
            .verdicts
            .seen(&id)
            .unwrap_or_else(|| resets::Invalid::unseen(r.cause.shown));
        self.resets
            .attribution(r, report, invalid, &mut self.sh, out);
    }

    /// A verdict was reported: the resets it caused follow it, attributed.
    fn verdict_done(&mut self, done: Option<verdicts::Done>, out: &mut Output) {
        let Some(verdicts::Done {
            resets,
            invalid: Some(invalid),
        }) = done
        else {
            return;
        };
        for (raw, rep) in resets {
            self.resets
                .attribution(raw, rep, invalid.clone(), &mut self.sh, out);
        }
    }

    /// A `midstream` record is complete: reported, then the resets it caused, attributed to
    /// the entry its flow lost.
    fn mid_done(&mut self, m: midstream::MidDone, out: &mut Output) {
        let lost: LostReport = m.2.clone();
        for (raw, rep) in self.mids.finish(m, &self.sh, out) {
            self.resets
                .lost_attribution(raw, rep, lost.clone(), &self.sh, out);
        }
    }
}

#[cfg(test)]
mod tests;

impl crate::output::correlated::Correlated for Correlator {
    fn time(&self, boot_ns: u64) -> Time {
        Correlator::time(self, boot_ns)
    }
    fn ct_max(&self) -> Option<u32> {
        Correlator::ct_max(self)
    }
    fn reasons_unmatched(&self) -> u64 {
        Correlator::reasons_unmatched(self)
    }
    fn enrichment_skipped(&self) -> u64 {
        Correlator::enrichment_skipped(self)
    }
    fn strays(&self) -> StrayTally {
        Correlator::strays(self)
    }
    fn evicted_inferred(&self) -> u64 {
        Correlator::evicted_inferred(self)
    }
}
