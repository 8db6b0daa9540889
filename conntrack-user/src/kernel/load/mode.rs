//! The attach mode a user asks for (`--attach`); `decide` turns it into the plan's mode.

/// Where INVALID verdicts come from (`--attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Netfilter,
    Fexit,
    Kprobe,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Netfilter => "netfilter",
            Self::Fexit => "fexit",
            Self::Kprobe => "kprobe",
        }
    }

    /// The attach point that gives the verdict in this mode.
    pub fn source(self) -> &'static str {
        match self {
            Self::Auto => "the best attach point of this kernel",
            Self::Netfilter => "the netfilter link (--attach netfilter)",
            Self::Fexit => "the fexit program on nf_conntrack_in (--attach fexit)",
            Self::Kprobe => "the kretprobe on nf_conntrack_in (--attach kprobe)",
        }
    }
}
