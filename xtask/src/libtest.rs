//! Reading libtest's output, for the host's `cargo test` and the VM runs alike: the sums of its
//! `test result:` lines, the names in its closing `failures:` list, and the `SKIPPED: ` marker
//! lines the integration tests print, one per piece of work they skipped (they pass).
//!
//! The marker must reach libtest's output: the host run passes `--show-output` (captured output
//! of passing tests is printed after them, at the start of a line), the VMs `--nocapture` (a
//! test's first line lands after libtest's `test NAME ... `).

/// The start of a skip marker line.
const SKIP_MARK: &str = "SKIPPED: ";

/// What libtest printed: the sums of its `test result:` lines, the `SKIPPED:` lines, and the
/// names in its closing `failures:` list.
#[derive(Debug, Default, PartialEq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// `test result:` lines: test binaries that ran to their end.
    pub results: u64,
    pub failures: Vec<String>,
    /// The `SKIPPED: ` markers (see `skip_marker`): a test that skipped part of its work says
    /// so (and passes).
    pub skip_lines: Vec<String>,
    /// The last `test NAME ... ` line's NAME: where a hung run stopped.
    pub last_started: Option<String>,
    /// What each failed test said: its `panicked at` line and the message after it, at most
    /// [`PANIC_LINES`] lines of [`PANIC_WIDTH`] characters each, so a run's closing summary
    /// says why even when only its end survives (CI keeps the head and tail of the output).
    pub panics: Vec<String>,
    panic_left: usize,
    in_failures: bool,
}

/// Where a panic's first line starts in `line`: `thread 'NAME' panicked at`, or, as newer Rust
/// prints it with the thread's id, `thread 'NAME' (ID) panicked at`.
fn panic_start(line: &str) -> Option<usize> {
    let at = line.find("thread '")?;
    let rest = &line[at + "thread '".len()..];
    let (_, after) = rest.split_once("' ")?;
    let after = match after.strip_prefix('(') {
        Some(id) => {
            let (digits, after) = id.split_once(") ")?;
            digits
                .chars()
                .all(|c| c.is_ascii_digit())
                .then_some(after)?
        }
        None => after,
    };
    after.starts_with("panicked at ").then_some(at)
}

/// Lines kept of one panic message, and characters kept of each line.
const PANIC_LINES: usize = 8;
const PANIC_WIDTH: usize = 240;

impl Counts {
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Counts {
        let mut c = Counts::default();
        for l in lines {
            c.line(l);
        }
        c
    }

    /// Feeds one output line: every count of `cargo xtask test` (host and VMs) comes from here.
    pub fn line(&mut self, line: &str) {
        if self.panic_left > 0 {
            // The message ends at a blank line, at libtest's backtrace hint (only the first panic
            // of a run gets one), or, under --nocapture, at libtest's `FAILED` and the next test.
            if line.trim().is_empty()
                || line.starts_with("note: run with")
                || line.starts_with("stack backtrace:")
                || line.trim() == "FAILED"
                || (line.starts_with("test ") && line.contains(" ... "))
            {
                self.panic_left = 0;
            } else if let Some(p) = self.panics.last_mut() {
                p.push_str("\n    ");
                p.push_str(clip(line.trim()));
                self.panic_left -= 1;
            }
        }
        if let Some(at) = panic_start(line) {
            self.panics.push(clip(line[at..].trim_end()).to_string());
            self.panic_left = PANIC_LINES - 1;
            return;
        }
        if self.in_failures {
            // "failures:" then one indented test name a line, up to a blank line.
            let name = line.trim();
            if line.starts_with("    ") && !name.contains(char::is_whitespace) {
                if !self.failures.iter().any(|f| f == name) {
                    self.failures.push(name.to_string());
                }
                return;
            }
            self.in_failures = false;
        }
        if let Some((name, _)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ..."))
        {
            self.last_started = Some(name.to_string());
        }
        if line.trim_end() == "failures:" {
            self.in_failures = true;
        } else if let Some(at) = line.find("test result: ") {
            self.results += 1;
            for part in line[at + "test result: ".len()..].split(['.', ';']) {
                let mut it = part.split_whitespace();
                if let (Some(n), Some(what)) =
                    (it.next().and_then(|n| n.parse::<u64>().ok()), it.next())
                {
                    match what {
                        "passed" => self.passed += n,
                        "failed" => self.failed += n,
                        "ignored" => self.ignored += n,
                        _ => {}
                    }
                }
            }
        } else if let Some(marker) = skip_marker(line) {
            self.skip_lines.push(marker.to_string());
        }
    }

    pub fn add(&mut self, o: &Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
        self.results += o.results;
        self.failures.extend(o.failures.iter().cloned());
        self.skip_lines.extend(o.skip_lines.iter().cloned());
        self.panics.extend(o.panics.iter().cloned());
        self.last_started.clone_from(&o.last_started);
    }

    /// How many `SKIPPED: ` markers were seen.
    pub fn skipped(&self) -> u64 {
        self.skip_lines.len() as u64
    }

    /// `N passed, N failed, N ignored, N skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} ignored, {} skipped",
            self.passed,
            self.failed,
            self.ignored,
            self.skipped()
        )
    }
}

/// At most [`PANIC_WIDTH`] characters of a line (on a character boundary).
fn clip(line: &str) -> &str {
    match line.char_indices().nth(PANIC_WIDTH) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// The `SKIPPED: ...` marker of a line: the line starts with it, or it follows libtest's
/// `test NAME ... ` (under `--nocapture` a test's first output line lands there). Lines that
/// merely contain "skipped" or "SKIPPED" elsewhere carry none.
pub fn skip_marker(line: &str) -> Option<&str> {
    let line = line.trim_end();
    let rest = line
        .strip_prefix("test ")
        .and_then(|r| r.split_once(" ... "))
        .map_or(line, |(_, after)| after);
    rest.starts_with(SKIP_MARK).then_some(rest)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A VM run of `resets` (`--nocapture`): a marker after `test NAME ... `.
    pub const RESETS: &str = "
running 2 tests
test an_aborted_established_connection_is_an_rst_received_by_the_peer ... ok
test connect_to_a_closed_port_is_an_rst_sent_with_tuple_netns_and_reason ... SKIPPED: connect_to_a_closed_port: no reason on 6.1
ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 12.34s
";

    /// A failed run: a marker on its own line, an ignored test, a failure list.
    pub const INVALID: &str = "
running 3 tests
test a ... ok
test b ... FAILED
test c ... ignored
SKIPPED: a: netfilter link needs Linux 6.4

failures:

---- b stdout ----
thread 'b' panicked at tests/tests/invalid.rs:1:1:
    assertion failed

failures:
    b

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 230.00s
";

    #[test]
    fn sums_libtest_results_skips_and_failures() {
        let c = Counts::parse(RESETS.lines().chain(INVALID.lines()));
        assert_eq!((c.passed, c.failed, c.ignored), (3, 1, 1));
        assert_eq!((c.skipped(), c.results), (2, 2));
        assert_eq!(c.failures, ["b"]);
        assert_eq!(
            c.skip_lines,
            [
                "SKIPPED: connect_to_a_closed_port: no reason on 6.1",
                "SKIPPED: a: netfilter link needs Linux 6.4"
            ]
        );
        assert_eq!(c.summary(), "3 passed, 1 failed, 1 ignored, 2 skipped");
        assert_eq!(
            c.panics,
            ["thread 'b' panicked at tests/tests/invalid.rs:1:1:\n    assertion failed"]
        );
        let mut total = Counts::parse(RESETS.lines());
        total.add(&c);
        assert_eq!((total.passed, total.results), (5, 3));
    }

    /// A long panic message is kept to its first lines, each clipped; a console prefix before
    /// `thread '` does not hide it.
    #[test]
    fn keeps_the_start_of_each_panic_message() {
        let long = "x".repeat(1000);
        let mut lines = vec!["[6.12/kprobe] thread 'lost' panicked at tests/tests/lost.rs:9:5:"];
        lines.extend(std::iter::repeat_n(long.as_str(), 20));
        lines.push("");
        lines.push("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s");
        let c = Counts::parse(lines);
        assert_eq!(c.panics.len(), 1);
        let p = &c.panics[0];
        assert!(
            p.starts_with("thread 'lost' panicked at tests/tests/lost.rs:9:5:"),
            "{p}"
        );
        assert_eq!(p.lines().count(), PANIC_LINES);
        assert!(
            p.lines().all(|l| l.chars().count() <= PANIC_WIDTH + 4),
            "{p}"
        );
        assert_eq!(c.failed, 1);
        let with_id = Counts::parse([
            "[5.10/kprobe] thread 'boom' (165) panicked at tests/src/lab.rs:35:5:",
            "lab run failed",
            "FAILED",
            "test clean ... ok",
        ]);
        assert_eq!(
            with_id.panics,
            ["thread 'boom' (165) panicked at tests/src/lab.rs:35:5:\n    lab run failed"]
        );
        assert_eq!(panic_start("thread 'a' (x) panicked at f"), None);
        assert_eq!(panic_start("thread 'a' exited"), None);
    }

    /// The one rule for every run: `test result:` lines are summed, `SKIPPED: ` marker lines
    /// are counted, nothing else is.
    #[test]
    fn counts_result_lines_and_skip_markers_only() {
        let c = Counts::parse([
            // libtest's results, one per test binary.
            "test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s",
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.00s",
            // Markers: at the start of a line (the host's --show-output, a VM's own line) or
            // after libtest's `test NAME ... ` (a VM's --nocapture); a console's \r is no matter.
            "SKIPPED: seq_under_is_ignored: needs kprobes (runs in the VM matrix)",
            "test window_reason ... SKIPPED: window_reason: no kprobes on this kernel",
            "SKIPPED: netfilter_mode: needs Linux 6.4\r",
            // Not markers.
            "note: skipped",
            "skipped need_root: needs root (namespaces and eBPF)",
            "skipped: no /sys/kernel/btf/vmlinux on this machine",
            "xtask: vm 6.1: warning: no module foo in 6.1.0-44-amd64, skipped",
            "ct-trace: 3 events went out without their conntrack lookup (enrichment: skipped)",
            "note: SKIPPED: not at the start of the line",
            "  SKIPPED: indented",
            "SKIPPED:no space",
            "test not_a_marker ... ok",
            "test ignored_one ... ignored",
            "running 4 tests",
        ]);
        assert_eq!((c.passed, c.failed, c.ignored, c.results), (5, 1, 1, 2));
        assert_eq!(
            c.skip_lines,
            [
                "SKIPPED: seq_under_is_ignored: needs kprobes (runs in the VM matrix)",
                "SKIPPED: window_reason: no kprobes on this kernel",
                "SKIPPED: netfilter_mode: needs Linux 6.4",
            ]
        );
        assert_eq!(c.skipped(), 3);
        // `cargo xtask test`'s skipped: ignored tests and markers.
        assert_eq!(c.ignored + c.skipped(), 4);
    }
}
