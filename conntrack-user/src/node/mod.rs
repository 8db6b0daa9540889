//! The node's own state, read directly: ctnetlink and hook dumps (`netlink`), the kernel's
//! conntrack counters and namespaces (`kstat`), the posture report (`doctor`), the Service
//! names kube-proxy's rules give addresses (`services`; both read the rulesets with the node's
//! own tools, `tools`), who fills the conntrack table (`top`) and the resets it causes
//! meanwhile (`caused`: a tracer run as top's child).

pub mod caused;
pub mod doctor;
pub mod kstat;
pub mod netlink;
pub mod services;
pub mod tools;
pub mod top;
