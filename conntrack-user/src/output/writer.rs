//! Writing reports to stdout: buffered per batch, and exact about what reached it (a report
//! counts as printed only once its whole line was written).

use std::io::{self, Write as _};

#[cfg(test)]
use crate::event::{CounterReport, Time};
use crate::{cli::Format, event::Report};

/// Writes reports to stdout, buffered: the caller flushes once per batch of events, not once
/// per line. A report counts as printed only once all its bytes were written: when stdout
/// closes (`ct-trace | head`) the flush says which kinds reached it and which did not.
pub struct Writer<W: io::Write> {
    out: W,
    format: Format,
    buf: Vec<u8>,
    /// The reports in `buf`: where each one's line ends, and its kind.
    lines: Vec<(usize, &'static str)>,
}

/// What a flush did with the reports written since the last one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// How many whole lines reached the output.
    pub printed: u64,
    /// Kinds of the reports whose line did not (the output closed before or during it).
    pub unprinted: Vec<&'static str>,
    /// The output is closed (a broken pipe): nothing more can be printed.
    pub closed: bool,
}

const WRITER_BUFFER: usize = 64 * 1024;

impl<W: io::Write> Writer<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            buf: Vec::with_capacity(WRITER_BUFFER),
            lines: Vec::new(),
        }
    }

    /// Buffers one report's line. Nothing is written before [`Writer::flush`].
    pub fn write(&mut self, r: &Report) {
        match self.format {
            Format::Text => {
                let _ = writeln!(self.buf, "{}", r.text());
            }
            Format::Json => {
                super::json::write(&mut self.buf, r);
                self.buf.push(b'\n');
            }
        }
        self.lines.push((self.buf.len(), r.kind()));
    }

    /// Whether the buffer is big enough to be flushed before the batch ends.
    pub fn full(&self) -> bool {
        self.buf.len() >= WRITER_BUFFER
    }

    /// Writes what is buffered and says which lines got through. A closed pipe is not an
    /// error: it is `closed`, with the reports whose lines did not get through as unprinted.
    pub fn flush(&mut self) -> io::Result<Flushed> {
        let mut written = 0;
        let mut closed = false;
        while written < self.buf.len() {
            match self.out.write(&self.buf[written..]) {
                Ok(0) => closed = true,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => closed = true,
                Err(e) => return Err(e),
            }
            if closed {
                break;
            }
        }
        if !closed {
            match self.out.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => closed = true,
                Err(e) => return Err(e),
            }
        }
        let mut f = Flushed {
            closed,
            ..Default::default()
        };
        for (end, kind) in self.lines.drain(..) {
            if end <= written {
                f.printed += 1;
            } else {
                f.unprinted.push(kind);
            }
        }
        self.buf.clear();
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, then says the pipe is broken.
    struct Pipe {
        room: usize,
        got: Vec<u8>,
    }

    impl io::Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = b.len().min(self.room).min(7);
            self.room -= n;
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lost(n: u64) -> Report {
        Report::Lost(CounterReport {
            time: Time(n),
            counter: "lost_invalid",
            count: n,
        })
    }

    #[test]
    fn a_report_is_printed_only_when_its_whole_line_got_through() {
        let line = lost(1).json().len() + 1;
        // Room for two lines and half of the third.
        let mut w = Writer::new(
            Pipe {
                room: 2 * line + line / 2,
                got: Vec::new(),
            },
            Format::Json,
        );
        for n in 1..=4 {
            w.write(&lost(n));
        }
        let f = w.flush().unwrap();
        assert_eq!(f.printed, 2);
        assert_eq!(f.unprinted, ["lost", "lost"]);
        assert!(f.closed);
        let got = String::from_utf8(w.out.got.clone()).unwrap();
        assert_eq!(got.lines().filter(|l| l.ends_with('}')).count(), 2);
    }
}
