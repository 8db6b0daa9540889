//! The kernel side: what the running kernel offers (`preflight`, `btf`), the attach plan and
//! attaching it (`load`, over `conntrack-common/src/plan.rs`), the netfilter-link loader aya
//! lacks (`netfilter`), and verifier logs (`verifier`).

pub mod btf;
pub mod load;
pub mod netfilter;
pub mod preflight;
pub mod progstats;
pub mod verifier;
