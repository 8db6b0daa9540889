//! The node's own state, read directly: ctnetlink and hook dumps (`netlink`), the kernel's
//! conntrack counters and namespaces (`kstat`), and the posture report (`doctor`).

pub mod doctor;
pub mod kstat;
pub mod netlink;
