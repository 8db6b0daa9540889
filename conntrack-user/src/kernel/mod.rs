//! The kernel side: what the running kernel offers (`preflight`, `btf`), the attach plan and
//! attaching it (`load`, over `conntrack-common/src/plan.rs`), the loader for the programs aya
//! cannot load (`ownprog`) with their attachments (`netfilter` links, `trampoline` for fexit on
//! module functions), verifier logs
//! (`verifier`), and the maps read and written while the programs run (`maps`).

pub mod btf;
pub mod load;
pub mod maps;
pub mod netfilter;
pub mod ownprog;
pub mod preflight;
pub mod progstats;
pub mod trampoline;
pub mod verifier;
