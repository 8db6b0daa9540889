//! The node's own state, read directly: ctnetlink and hook dumps (`netlink`), the kernel's
//! conntrack counters and namespaces (`kstat`), the posture report (`doctor`), and the
//! Service names kube-proxy's rules give addresses (`services`); both read the rulesets with
//! the node's own tools (`tools`).

pub mod doctor;
pub mod kstat;
pub mod netlink;
pub mod services;
pub mod tools;
