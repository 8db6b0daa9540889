//! The output stage: every report is counted by kind, and printed unless `--summary`, `--kind`,
//! `--resets caused` (for strays), `-c` or a closed stdout says otherwise.

use std::{collections::BTreeMap, io};

use crate::{
    cli::{Cli, Resets},
    event::Report,
    output::writer::Writer,
};

/// What the output stage did with the reports.
#[derive(Default)]
pub(crate) struct Tally {
    /// Reports produced, by kind (printed unless `--summary`, `--kind`, `-c` or a closed pipe
    /// stopped them).
    pub(crate) shown: BTreeMap<&'static str, u64>,
    /// Produced but not printed because `-c` was reached or stdout was closed.
    pub(crate) unprinted: BTreeMap<&'static str, u64>,
    /// Not printed because of `--kind`.
    pub(crate) filtered: BTreeMap<&'static str, u64>,
    pub(crate) decode_errors: u64,
    /// Reports whose whole line reached stdout.
    pub(crate) printed: u64,
}

/// The output stage: counts every report, prints what is asked for.
pub(crate) struct Sink<'a, W: io::Write> {
    pub(crate) cli: &'a Cli,
    pub(crate) writer: Writer<W>,
    pub(crate) tally: Tally,
    /// Printing ended (`-c` reached, or stdout closed); reports are still counted.
    pub(crate) closed: bool,
    /// Reports handed to the writer (for `-c`).
    pub(crate) buffered: u64,
    pub(crate) broken_pipe: bool,
    /// `--metrics`: every report is counted there too.
    pub(crate) metrics: Option<crate::output::metrics::Metrics>,
    /// `--pcap`: the packet of every report that carries one, printed or not.
    pub(crate) pcap: Option<crate::output::pcap::PcapWriter>,
}

impl<W: io::Write> Sink<'_, W> {
    pub(crate) fn put(&mut self, reports: &mut Vec<Report>) -> io::Result<()> {
        for r in reports.drain(..) {
            let kind = r.kind();
            if let Some(m) = &mut self.metrics {
                m.report(&r);
            }
            if self.cli.resets == Resets::Caused && r.is_stray() {
                // `--resets caused` shows what conntrack broke; a stray (a scan's reset) is
                // counted as filtered, like the resets the kernel keeps back.
                *self.tally.shown.entry(kind).or_default() += 1;
                *self.tally.filtered.entry(kind).or_default() += 1;
                continue;
            }
            if let Some(p) = &mut self.pcap {
                p.report(&r).map_err(io::Error::other)?;
            }
            *self.tally.shown.entry(kind).or_default() += 1;
            if self.cli.summary {
                continue;
            }
            if !self.cli.kind.is_empty() && !self.cli.kind.contains(&kind) {
                *self.tally.filtered.entry(kind).or_default() += 1;
                continue;
            }
            if self.closed {
                *self.tally.unprinted.entry(kind).or_default() += 1;
                continue;
            }
            self.writer.write(&r);
            self.buffered += 1;
            if self.cli.count.is_some_and(|n| self.buffered >= n) {
                self.closed = true;
            }
            if self.writer.full() {
                self.flush()?;
            }
        }
        if let Some(p) = &mut self.pcap {
            p.flush().map_err(io::Error::other)?;
        }
        self.flush()
    }

    /// Writes what the writer holds; what a closed stdout did not take is counted unprinted.
    fn flush(&mut self) -> io::Result<()> {
        let f = self.writer.flush()?;
        self.tally.printed += f.printed;
        for kind in f.unprinted {
            *self.tally.unprinted.entry(kind).or_default() += 1;
        }
        if f.closed {
            self.closed = true;
            self.broken_pipe = true;
        }
        Ok(())
    }
}
