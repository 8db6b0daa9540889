//! The one harness of the lab, the integration tests and the bench (and the child `ct-trace
//! top` runs): [`runner`] starts, reads and stops a child, [`netns`] builds their one topology.
//! The kernel's counters are read by [`crate::kstat`], beside it.
//!
//! Userspace only (the `harness` feature). It lives here, in the crate every part of the
//! workspace can use: xtask cannot depend on `conntrack-user`, whose build script needs
//! bpf-linker, which `cargo xtask setup` installs.

pub mod netns;
pub mod runner;
