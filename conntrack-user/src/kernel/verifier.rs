//! Programs the kernel refuses: their verifier log goes to a file the one-line error names (the
//! full log is also kept for `-d`). Used by aya's loads (`load`) and by the netfilter loader.

use std::{io, path::PathBuf};

use aya::programs::ProgramError;

/// Why a program did not load.
#[derive(Debug, thiserror::Error)]
pub enum ProgramLoadError {
    #[error("the kernel rejected `{program}` ({source}); verifier log in {log_path}")]
    Rejected {
        program: &'static str,
        log_path: String,
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

/// Writes a verifier log where the one-line error can point to; returns its path.
pub fn write_log(program: &str, log: &str) -> String {
    let path: PathBuf = std::env::temp_dir().join(format!("ct-trace-verifier-{program}.log"));
    let _ = std::fs::write(&path, log);
    path.display().to_string()
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
                log_path: write_log(program, &log),
                log,
                source: io_error,
            }
        }
        source => ProgramLoadError::Other { program, source },
    }
}
