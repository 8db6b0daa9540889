//! The attach plan's consumer. The plan itself (every program, where it attaches, the prototype
//! it assumes, the kernels that have it, what it needs and what ct-trace does without it) is data
//! in [`conntrack_common::plan`]. Here: what the running kernel offers ([`KernelFeatures`], read
//! once), which rows it gets ([`decide`], pure), and attaching them ([`attach()`], one small
//! function per attach kind), with the lines preflight prints: what was attached, what was
//! skipped and why.
//!
//! One file per concept: `features` (what the kernel offers, read from its BTF), `decide` (which
//! rows it gets, pure, with its tests), `globals` (loading the object with its read-only globals
//! set) and `attach` (one function per attach kind).

mod attach;
mod decide;
mod features;
mod globals;
mod mode;

pub use attach::{attach, Attached, ConntrackHooked};
pub use decide::{attach_mode, choose_mode, decide, Decided, Decision};
pub use features::{facts, KernelFeatures};
pub use globals::Globals;
pub use mode::AttachMode;

use aya::programs::ProgramError;

use crate::{
    kernel::btf::BtfError, kernel::netfilter::NetfilterError, kernel::ownprog::OwnLoadError,
    kernel::trampoline::TrampolineError, kernel::verifier::ProgramLoadError,
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("{0}")]
    Facts(String),
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no program `{0}`")]
    NoProgram(&'static str),
    /// The kernel rejected a program (verifier log), or aya could not load it.
    #[error(transparent)]
    Program(#[from] ProgramLoadError),
    #[error(transparent)]
    Netfilter(#[from] NetfilterError),
    #[error(transparent)]
    Trampoline(#[from] TrampolineError),
    #[error("no program could be attached on this kernel")]
    NothingAttached,
    #[error("--attach {mode}: {why}")]
    Mode { mode: &'static str, why: String },
    #[error("attaching `{program}` to {target}")]
    Kprobe {
        program: &'static str,
        target: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl LoadError {
    /// The full verifier log, when the kernel rejected a program.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            Self::Program(e) => e.verifier_log(),
            Self::Netfilter(NetfilterError::Load(OwnLoadError::Verifier { log, .. }))
            | Self::Trampoline(TrampolineError::Load(OwnLoadError::Verifier { log, .. })) => {
                Some(log)
            }
            _ => None,
        }
    }
}
