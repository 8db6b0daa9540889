//! What the running kernel offers, as far as choosing rows goes, read once from its BTF.

use std::collections::{HashMap, HashSet};

use conntrack_common::plan::{
    Attach, Capabilities, Form, Need, Probe, Version, FORMS, NETFILTER_CTX, PLAN,
};

use super::mode::AttachMode;
use crate::{
    kernel::btf::{KernelBtf, KernelFacts},
    kernel::{preflight, trampoline},
};

/// What the running kernel offers, as far as choosing rows goes: read once by [`Self::probe`],
/// then only looked at.
#[derive(Clone, Debug)]
pub struct KernelFeatures {
    pub version: Version,
    /// Kprobes (`CONFIG_KPROBES`).
    pub kprobes: bool,
    /// [`NETFILTER_CTX`] in the kernel's BTF (the plan adds the kernel version it needs).
    pub netfilter_link: bool,
    /// Whether the kernel attached a no-op fexit program to the fexit rows' function, or why
    /// not ([`trampoline::probe`]).
    pub trampolines: Result<(), String>,
    /// BTF types the kernel has among those asked for (`btf_trace_<tracepoint>`).
    pub types: HashSet<String>,
    /// Arguments each tracepoint passes to BTF programs.
    pub tracepoint_args: HashMap<String, usize>,
    /// Parameter names of the functions the kprobes attach to (absent: not described).
    pub func_params: HashMap<String, Vec<String>>,
    /// Whether conntrack's structures are readable, or why not.
    pub conntrack: Result<(), String>,
}

impl KernelFeatures {
    /// `wanted`: the trampolines are probed only where the fexit mode may be chosen (the probe
    /// attaches to conntrack for a moment).
    pub fn probe(kbtf: &KernelFacts, version: Version, wanted: AttachMode) -> Self {
        let netfilter_link = kbtf.has_type(NETFILTER_CTX);
        let trampolines = match wanted {
            AttachMode::Auto if netfilter_link => {
                Err("not probed, the netfilter link comes first".into())
            }
            AttachMode::Auto | AttachMode::Fexit => probe_trampolines(kbtf, version),
            _ => Err(format!("not probed with --attach {}", wanted.name())),
        };
        Self {
            version,
            kprobes: preflight::has_kprobes(),
            netfilter_link,
            trampolines,
            types: kbtf.types.clone(),
            tracepoint_args: kbtf.tracepoint_args.clone(),
            func_params: kbtf.func_params.clone(),
            conntrack: kbtf.ct_offsets.as_ref().map(|_| ()).map_err(Clone::clone),
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            version: self.version,
            kprobes: self.kprobes,
            netfilter_link: self.netfilter_link,
            trampolines: self.trampolines.is_ok(),
        }
    }

    /// Whether a tracepoint passes the arguments of `form`.
    pub fn has_form(&self, form: Form) -> bool {
        self.tracepoint_args
            .get(form.tracepoint)
            .is_some_and(|&n| n >= form.args)
    }

    /// Whether the kernel's BTF shows the prototype `row` reads (its leading parameter names),
    /// or, for a function the BTF does not describe at all, whether this kernel is one whose
    /// source was read to have it ([`Probe::vouched`]: modules had no BTF before 5.11).
    fn prototype(&self, row: &Probe) -> Result<(), String> {
        let Some(func) = row.attach.function() else {
            return Ok(());
        };
        let want = row.params;
        match self.func_params.get(func) {
            None => match row.vouched {
                Some((from, to)) if (from..=to).contains(&self.version) => Ok(()),
                _ => Err(format!(
                    "the kernel's BTF does not describe {func} (not loaded, or inlined)"
                )),
            },
            Some(have)
                if have.len() >= want.len() && have.iter().zip(want).all(|(h, w)| h == w) =>
            {
                Ok(())
            }
            Some(have) => Err(format!(
                "{func} has another prototype here ({}), ct-trace reads ({})",
                have.join(", "),
                want.join(", ")
            )),
        }
    }

    /// Why `row` cannot have `need` here; `attached`: where the rows decided before it attach.
    pub(super) fn lacks(&self, need: Need, row: &Probe, attached: &[Attach]) -> Option<String> {
        match need {
            Need::Kprobes => (!self.kprobes).then(|| "this kernel has no kprobes".to_string()),
            Need::NetfilterLink => (!self.netfilter_link)
                .then(|| "this kernel has no netfilter BPF programs".to_string()),
            Need::Trampolines => self.trampolines.clone().err(),
            Need::Tracepoint => {
                let tp = row.attach.tracepoint()?;
                (!self.types.contains(&format!("btf_trace_{tp}")))
                    .then(|| format!("this kernel has no tracepoint {tp}"))
            }
            Need::Prototype => self.prototype(row).err(),
            Need::ConntrackLayout => self
                .conntrack
                .as_ref()
                .err()
                .map(|e| format!("conntrack's structures are not readable: {e}")),
            Need::ReturnProbe => {
                let ret = Attach::Kretprobe(row.attach.function()?);
                (!attached.contains(&ret)).then(|| "its return probe is not attached".to_string())
            }
        }
    }
}

/// Asks the kernel whether it attaches fexit programs to the function of the plan's fexit row.
fn probe_trampolines(kbtf: &KernelFacts, version: Version) -> Result<(), String> {
    let Some((row, func)) = PLAN.iter().find_map(|p| match p.attach {
        Attach::Fexit(f) => Some((p, f)),
        _ => None,
    }) else {
        return Err("no fexit program in the plan".into());
    };
    if version < row.min_kernel {
        let (v, m) = (version, row.min_kernel);
        return Err(format!(
            "needs Linux {}.{}, this is {}.{}",
            m.0, m.1, v.0, v.1
        ));
    }
    let Some(target) = kbtf.func_ids.get(func) else {
        return Err(format!(
            "the kernel's BTF does not describe {func} (not loaded, or no module BTF)"
        ));
    };
    trampoline::probe(func, target)
}

/// Reads from the kernel's BTF what [`attach`](super::attach()) and the event path need: the
/// types, tracepoints and functions [`PLAN`] names, and the enums of reset and drop reasons.
pub fn facts(kbtf: &KernelBtf) -> KernelFacts {
    let mut types = vec![NETFILTER_CTX.to_string()];
    let mut tracepoints: Vec<&str> = FORMS.iter().map(|f| f.tracepoint).collect();
    let mut funcs = Vec::new();
    for p in PLAN {
        if let Some(tp) = p.attach.tracepoint() {
            types.push(format!("btf_trace_{tp}"));
            tracepoints.push(tp);
        }
        funcs.extend(p.attach.function());
    }
    kbtf.facts(
        &types,
        &tracepoints,
        &funcs,
        &["sk_rst_reason", "skb_drop_reason"],
    )
}
