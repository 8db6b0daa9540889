//! Programs the kernel refuses: their verifier log goes to a file the one-line error names (the
//! full log is also kept for `-v`). Used by aya's loads (`load`) and by the netfilter loader.
//!
//! The log outlives ct-trace, so the user can read it: `/run/ct-trace/verifier/PROGRAM.log`
//! (root's, 0700, the last log of each program), or where `/run` cannot be written (a pod's
//! read-only root) in a new `$TMPDIR/ct-trace-verifier-XXXXXX/` of its own. Never at a fixed
//! name in a directory others can write to: see `private`.

use std::io;

use aya::programs::ProgramError;

use crate::private::PrivateDir;

/// Why a program did not load.
#[derive(Debug, thiserror::Error)]
pub enum ProgramLoadError {
    #[error("the kernel rejected `{program}` ({source}); verifier log {log_at}")]
    Rejected {
        program: &'static str,
        /// `in PATH`, or why it was not written.
        log_at: String,
        log: String,
        source: io::Error,
    },
    #[error("loading `{program}`")]
    Other {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl ProgramLoadError {
    /// The full verifier log, when the kernel rejected the program.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            Self::Rejected { log, .. } => Some(log),
            Self::Other { .. } => None,
        }
    }
}

/// Writes a verifier log where the one-line error can point to; returns `in PATH`, or why it
/// is nowhere.
pub fn write_log(program: &str, log: &str) -> String {
    let name = format!("{program}.log");
    let written = PrivateDir::in_run("verifier")
        .or_else(|_| PrivateDir::fresh(&std::env::temp_dir(), "ct-trace-verifier-"))
        .and_then(|dir| dir.replace(&name, log.as_bytes()).map(|()| dir.join(&name)));
    match written {
        Ok(path) => format!("in {}", path.display()),
        Err(e) => format!("not written ({}; -v shows it)", e.one_line()),
    }
}

/// aya's error for `program`: the kernel's refusal with its verifier log written out, or another
/// failure.
pub fn program_error(program: &'static str, e: ProgramError) -> ProgramLoadError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            ProgramLoadError::Rejected {
                program,
                log_at: write_log(program, &log),
                log,
                source: io_error,
            }
        }
        source => ProgramLoadError::Other { program, source },
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

    #[test]
    fn a_log_is_written_private_and_replaced_by_the_next() {
        let program = format!("ctt_unit_{}", std::process::id());
        let logs: Vec<PathBuf> = ["first", "second"]
            .iter()
            .map(|log| {
                let at = super::write_log(&program, log);
                PathBuf::from(at.strip_prefix("in ").expect(&at))
            })
            .collect();
        let path = &logs[1];
        assert_eq!(std::fs::read_to_string(path).unwrap(), "second");
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let dir = path.parent().unwrap();
        let (f, d) = (path.metadata().unwrap(), dir.metadata().unwrap());
        assert_eq!((f.mode() & 0o7777, f.uid()), (0o600, me));
        assert_eq!((d.mode() & 0o7777, d.uid()), (0o700, me));
        let in_run = dir.starts_with("/run/ct-trace");
        if in_run {
            assert_eq!(logs[0], logs[1], "the next log replaces the last");
        }
        for p in &logs {
            let _ = std::fs::remove_file(p);
            // A directory of its own each time where /run is not writable.
            if !in_run {
                let _ = std::fs::remove_dir(p.parent().unwrap());
            }
        }
    }
}
