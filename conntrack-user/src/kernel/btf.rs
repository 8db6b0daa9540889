//! Everything ct-trace needs to know about the running kernel's types, read from its BTF:
//! structure offsets for the programs' read-only globals, enum names for reset and drop
//! reasons, and which tracepoint arguments this kernel passes.
//!
//! Nothing here depends on the layout of the machine ct-trace was built on.

use std::{collections::HashMap, path::Path};

use btf_rs::{Btf, Type};
use conntrack_common::{CtOffsets, Offsets, CT_TCP_BYTES, CT_TUPLE_BYTES};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where a loaded module publishes its BTF (split BTF on top of vmlinux's). Distribution kernels
/// build nf_conntrack as a module: the prototypes of its functions are only there.
pub const MODULE_BTF_DIR: &str = "/sys/kernel/btf";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Missing {
        path: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("kernel BTF has no type `{0}`")]
    NoType(String),
    #[error("kernel BTF: `{ty}` has no field `{field}`")]
    NoField { ty: String, field: String },
    #[error("kernel BTF: `{ty}.{field}` is a bitfield or not byte aligned")]
    Unaligned { ty: String, field: String },
    #[error("reading kernel BTF")]
    Read(#[source] anyhow::Error),
}

/// The kernel's BTF, with the lookups ct-trace needs.
pub struct KernelBtf {
    btf: Btf,
    /// Modules whose BTF was added on top of vmlinux's.
    pub modules: Vec<String>,
    /// The first type id of each added module (split BTF ids continue after the base's).
    module_ids: Vec<(u32, String)>,
}

/// Where the fields of conntrack's structures are, for decoding the raw copies in a `Reason`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtLayout {
    /// `struct nf_conntrack_tuple`: `src.u3`, `src.u.all`, `src.l3num`, `dst.u3`, `dst.u.all`.
    pub src_u3: u32,
    pub src_port: u32,
    pub l3num: u32,
    pub dst_u3: u32,
    pub dst_port: u32,
    /// `struct ip_ct_tcp`: `seen[2]` (each `ip_ct_tcp_state_size` bytes) and `state`.
    pub seen: u32,
    pub tcp_state_size: u32,
    pub state: u32,
    /// `struct ip_ct_tcp_state`.
    pub td_end: u32,
    pub td_maxend: u32,
    pub td_maxwin: u32,
    pub td_maxack: u32,
    pub td_scale: u32,
    pub flags: u32,
}

impl KernelBtf {
    /// vmlinux's BTF, plus nf_conntrack's when it is a loaded module.
    pub fn load() -> Result<Self, BtfError> {
        let mut k = Self::from_path(Path::new(VMLINUX_BTF))?;
        k.add_module("nf_conntrack");
        Ok(k)
    }

    pub fn from_path(path: &Path) -> Result<Self, BtfError> {
        // Read whole, parse from memory: btf-rs's file reader seeks through a BufReader, which
        // drops its buffer at each seek (126,000 lseek calls for 6.18's vmlinux, seconds of
        // start-up in an emulated VM).
        std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Btf::from_bytes(&bytes))
            .map(|btf| Self {
                btf,
                modules: vec![],
                module_ids: vec![],
            })
            .map_err(|source| BtfError::Missing {
                path: path.display().to_string(),
                source,
            })
    }

    /// Adds a loaded module's BTF; false when the module is built in or not loaded.
    pub fn add_module(&mut self, name: &str) -> bool {
        let path = Path::new(MODULE_BTF_DIR).join(name);
        if !path.is_file() {
            return false;
        }
        let split = std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Btf::from_split_bytes(&bytes, &self.btf));
        match split {
            Ok(split) => {
                // The base's last id, by bisection (btf-rs does not tell its type count).
                let (mut lo, mut hi) = (0u32, u32::MAX / 2);
                while lo + 1 < hi {
                    let mid = lo + (hi - lo) / 2;
                    match self.btf.resolve_type_by_id(mid) {
                        Ok(_) => lo = mid,
                        Err(_) => hi = mid,
                    }
                }
                self.module_ids.push((hi, name.to_string()));
                self.btf = split;
                self.modules.push(name.to_string());
                true
            }
            Err(e) => {
                log::warn!("cannot read {}: {e}", path.display());
                false
            }
        }
    }

    /// Parameter names of a kernel function (`...` for a variadic tail), from its BTF `FUNC`.
    /// `None` when the kernel's BTF does not describe the function.
    pub fn func_params(&self, name: &str) -> Option<Vec<String>> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.into_iter().find_map(|t| {
            let Type::Func(f) = t else { return None };
            let Type::FuncProto(p) = self.btf.resolve_chained_type(&f).ok()? else {
                return None;
            };
            Some(
                p.parameters
                    .iter()
                    .map(|x| {
                        if x.is_variadic() {
                            "...".to_string()
                        } else {
                            self.btf.resolve_name(x).unwrap_or_default()
                        }
                    })
                    .collect(),
            )
        })
    }

    /// The BTF id of a kernel function's `FUNC`, and the module whose BTF has it (`None`:
    /// vmlinux): what a BPF trampoline is attached by.
    pub fn func_id(&self, name: &str) -> Option<FuncId> {
        let ids = self.btf.resolve_ids_by_name(name).ok()?;
        let id = ids
            .into_iter()
            .find(|&id| matches!(self.btf.resolve_type_by_id(id), Ok(Type::Func(_))))?;
        let module = self
            .module_ids
            .iter()
            .rev()
            .find(|(first, _)| id >= *first)
            .map(|(_, m)| m.clone());
        Some(FuncId { id, module })
    }

    /// Size in bytes of a named struct.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        Ok(self.named_struct(name)?.size() as u32)
    }

    /// Where `struct nf_conn` keeps what a `Reason` copies. The copies have fixed sizes: a kernel
    /// whose structures outgrew them is refused here rather than decoded wrong.
    pub fn ct_offsets(&self) -> Result<CtOffsets, BtfError> {
        let too_big = |ty: &str, size: u32, max: usize| -> Result<(), BtfError> {
            if size as usize > max {
                return Err(BtfError::NoField {
                    ty: ty.to_string(),
                    field: format!("(size {size} > the {max} bytes ct-trace copies)"),
                });
            }
            Ok(())
        };
        too_big(
            "nf_conntrack_tuple",
            self.struct_size("nf_conntrack_tuple")?,
            CT_TUPLE_BYTES,
        )?;
        too_big("ip_ct_tcp", self.struct_size("ip_ct_tcp")?, CT_TCP_BYTES)?;
        let tuplehash = self.offset("nf_conn", "tuplehash")?;
        let in_hash = self.offset("nf_conntrack_tuple_hash", "tuple")?;
        let hash_size = self.struct_size("nf_conntrack_tuple_hash")?;
        Ok(CtOffsets {
            status: self.offset("nf_conn", "status")?,
            tuple_original: tuplehash + in_hash,
            tuple_reply: tuplehash + hash_size + in_hash,
            proto_tcp: self.offset("nf_conn", "proto.tcp")?,
            // Without CONFIG_NET_NS there is one namespace and no field: the programs then
            // take the packet's device's.
            net: self.offset("nf_conn", "ct_net.net").unwrap_or(0),
            _pad: 0,
        })
    }

    pub fn ct_layout(&self) -> Result<CtLayout, BtfError> {
        let t = |f: &str| self.offset("nf_conntrack_tuple", f);
        let s = |f: &str| self.offset("ip_ct_tcp_state", f);
        Ok(CtLayout {
            src_u3: t("src.u3")?,
            src_port: t("src.u.all")?,
            l3num: t("src.l3num")?,
            dst_u3: t("dst.u3")?,
            dst_port: t("dst.u.all")?,
            seen: self.offset("ip_ct_tcp", "seen")?,
            tcp_state_size: self.struct_size("ip_ct_tcp_state")?,
            state: self.offset("ip_ct_tcp", "state")?,
            td_end: s("td_end")?,
            td_maxend: s("td_maxend")?,
            td_maxwin: s("td_maxwin")?,
            td_maxack: s("td_maxack")?,
            td_scale: s("td_scale")?,
            flags: s("flags")?,
        })
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NoType(name.to_string()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoType(name.to_string()))
    }

    /// Strips typedefs and qualifiers.
    fn strip(&self, mut t: Type) -> Result<Type, BtfError> {
        loop {
            t = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x),
                Type::Volatile(x) | Type::Const(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(x)
                }
                Type::TypeTag(x) => self.btf.resolve_chained_type(x),
                _ => return Ok(t),
            }
            .map_err(BtfError::Read)?;
        }
    }

    /// Bit offset of `field` inside `s`, looking through anonymous structs and unions (the
    /// kernel nests many fields, e.g. `sk_buff.dev`, in them).
    fn find_member(
        &self,
        s: &btf_rs::Struct,
        field: &str,
    ) -> Result<Option<(u32, Type)>, BtfError> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(m).map_err(BtfError::Read)?;
            if name == field {
                if m.bitfield_size().is_some_and(|b| b != 0) {
                    return Err(BtfError::Unaligned {
                        ty: self.btf.resolve_name(s).unwrap_or_default(),
                        field: field.to_string(),
                    });
                }
                return Ok(Some((m.bit_offset(), ty)));
            }
            if name.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = self.strip(ty)? {
                    if let Some((off, t)) = self.find_member(&inner, field)? {
                        return Ok(Some((m.bit_offset() + off, t)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of a dotted field path, e.g. `offset("net_device", "nd_net.net")`.
    pub fn offset(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        let mut s = self.named_struct(ty)?;
        let mut bits = 0;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (off, t) = self
                .find_member(&s, part)?
                .ok_or_else(|| BtfError::NoField {
                    ty: ty.to_string(),
                    field: path.to_string(),
                })?;
            bits += off;
            if i + 1 < parts.len() {
                s = match self.strip(t)? {
                    Type::Struct(x) | Type::Union(x) => x,
                    _ => {
                        return Err(BtfError::NoField {
                            ty: ty.to_string(),
                            field: path.to_string(),
                        })
                    }
                };
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Unaligned {
                ty: ty.to_string(),
                field: path.to_string(),
            });
        }
        Ok(bits / 8)
    }

    /// Every offset the programs read.
    pub fn offsets(&self) -> Result<Offsets, BtfError> {
        Ok(Offsets {
            skb_head: self.offset("sk_buff", "head")?,
            skb_network_header: self.offset("sk_buff", "network_header")?,
            skb_dev: self.offset("sk_buff", "dev")?,
            skb_nfct: self.offset("sk_buff", "_nfct")?,
            dev_ifindex: self.offset("net_device", "ifindex")?,
            dev_nd_net: self.offset("net_device", "nd_net.net")?,
            net_ns_inum: self.offset("net", "ns.inum")?,
            sk_family: self.offset("sock_common", "skc_family")?,
            sk_state: self.offset("sock_common", "skc_state")?,
            sk_net: self.offset("sock_common", "skc_net.net")?,
            sk_daddr: self.offset("sock_common", "skc_daddr")?,
            sk_rcv_saddr: self.offset("sock_common", "skc_rcv_saddr")?,
            sk_v6_daddr: self.offset("sock_common", "skc_v6_daddr")?,
            sk_v6_rcv_saddr: self.offset("sock_common", "skc_v6_rcv_saddr")?,
            sk_dport: self.offset("sock_common", "skc_dport")?,
            sk_num: self.offset("sock_common", "skc_num")?,
            sk_sport: self.offset("inet_sock", "inet_sport")?,
            state_hook: self.offset("nf_hook_state", "hook")?,
            state_pf: self.offset("nf_hook_state", "pf")?,
            state_in: self.offset("nf_hook_state", "in")?,
            state_out: self.offset("nf_hook_state", "out")?,
            state_net: self.offset("nf_hook_state", "net")?,
            // Optional: without them every verdict is trusted (a kernel without IPv6 has no
            // hooks_ipv6); userspace says so at start-up.
            net_hooks_ipv4: self.offset("net", "nf.hooks_ipv4").unwrap_or(0),
            net_hooks_ipv6: self.offset("net", "nf.hooks_ipv6").unwrap_or(0),
            entries_hooks: self.offset("nf_hook_entries", "hooks").unwrap_or(0),
            // Optional: without it table pressure is not told from other drops.
            net_ct_count: self.offset("net", "ct.count").unwrap_or(0),
        })
    }

    /// Names of an enum's values (`sk_rst_reason`, `skb_drop_reason`), empty if the kernel has
    /// no such enum. Numbering differs between kernels, so it is always read, never assumed.
    pub fn enum_names(&self, name: &str) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        let Ok(types) = self.btf.resolve_types_by_name(name) else {
            return out;
        };
        for t in types {
            match t {
                Type::Enum(e) => {
                    for m in &e.members {
                        if let Ok(n) = self.btf.resolve_name(m) {
                            out.insert(m.val(), n);
                        }
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        if let Ok(n) = self.btf.resolve_name(m) {
                            out.insert(m.val() as u32, n);
                        }
                    }
                }
                _ => continue,
            }
        }
        out
    }

    /// Number of arguments a tracepoint passes to BTF programs, from its `btf_trace_<name>`
    /// typedef (a pointer to a function whose first parameter is the tracepoint's `void *`).
    pub fn tracepoint_args(&self, tracepoint: &str) -> Option<usize> {
        let name = format!("btf_trace_{tracepoint}");
        let t = self
            .btf
            .resolve_types_by_name(&name)
            .ok()?
            .into_iter()
            .next()?;
        let t = self.strip(t).ok()?;
        let Type::Ptr(p) = t else { return None };
        let Type::FuncProto(f) = self.btf.resolve_chained_type(&p).ok()? else {
            return None;
        };
        Some(f.parameters.len().saturating_sub(1))
    }

    pub fn has_type(&self, name: &str) -> bool {
        self.btf
            .resolve_ids_by_name(name)
            .is_ok_and(|v| !v.is_empty())
    }
}

/// Where a kernel function's BTF `FUNC` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncId {
    pub id: u32,
    /// The module whose (split) BTF has it; `None`: vmlinux's.
    pub module: Option<String>,
}

/// Everything ct-trace takes from the kernel's BTF, read once at start-up. The parsed BTF is tens
/// of MiB; these facts are a few KiB, so the BTF is dropped before anything else is loaded.
#[derive(Debug)]
pub struct KernelFacts {
    pub offsets: Option<Offsets>,
    /// Why `offsets` is missing.
    pub offsets_error: String,
    pub ct_offsets: Result<CtOffsets, String>,
    pub ct_layout: Result<CtLayout, String>,
    /// Types asked for that the kernel has (`btf_trace_<tp>`, `bpf_nf_ctx`, ...).
    pub types: std::collections::HashSet<String>,
    /// Arguments of the tracepoints asked for.
    pub tracepoint_args: HashMap<String, usize>,
    /// Parameter names of the functions asked for (absent: not described).
    pub func_params: HashMap<String, Vec<String>>,
    /// BTF ids of the functions asked for (absent: not described).
    pub func_ids: HashMap<String, FuncId>,
    /// Enum value names (`sk_rst_reason`, `skb_drop_reason`).
    pub enums: HashMap<String, HashMap<u32, String>>,
    /// Modules whose BTF was read on top of vmlinux's.
    pub modules: Vec<String>,
}

impl KernelBtf {
    /// Reads what ct-trace needs: the offsets, conntrack's layout, and the named types,
    /// tracepoints, functions and enums.
    pub fn facts(
        &self,
        types: &[String],
        tracepoints: &[&str],
        funcs: &[&str],
        enums: &[&str],
    ) -> KernelFacts {
        let (offsets, offsets_error) = match self.offsets() {
            Ok(o) => (Some(o), String::new()),
            Err(e) => (None, e.to_string()),
        };
        KernelFacts {
            offsets,
            offsets_error,
            ct_offsets: self.ct_offsets().map_err(|e| e.to_string()),
            ct_layout: self.ct_layout().map_err(|e| e.to_string()),
            types: types.iter().filter(|t| self.has_type(t)).cloned().collect(),
            tracepoint_args: tracepoints
                .iter()
                .filter_map(|t| Some((t.to_string(), self.tracepoint_args(t)?)))
                .collect(),
            func_params: funcs
                .iter()
                .filter_map(|f| Some((f.to_string(), self.func_params(f)?)))
                .collect(),
            func_ids: funcs
                .iter()
                .filter_map(|f| Some((f.to_string(), self.func_id(f)?)))
                .collect(),
            enums: enums
                .iter()
                .map(|e| (e.to_string(), self.enum_names(e)))
                .collect(),
            modules: self.modules.clone(),
        }
    }
}

impl KernelFacts {
    pub fn has_type(&self, name: &str) -> bool {
        self.types.contains(name)
    }

    pub fn tracepoint_args(&self, tp: &str) -> Option<usize> {
        self.tracepoint_args.get(tp).copied()
    }

    pub fn func_params(&self, func: &str) -> Option<Vec<String>> {
        self.func_params.get(func).cloned()
    }

    pub fn enum_names(&self, name: &str) -> HashMap<u32, String> {
        self.enums.get(name).cloned().unwrap_or_default()
    }
}

/// Turns an enum value name into the words users see: `SK_RST_REASON_NO_SOCKET` -> `NO_SOCKET`.
pub fn short_reason(name: &str) -> &str {
    name.strip_prefix("SK_RST_REASON_")
        .or_else(|| name.strip_prefix("SKB_DROP_REASON_"))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF. Without it, `test` fails under `cargo xtask test` (which sets
    /// CT_TRACE_BIN) and is a counted skip under a plain `cargo test`; a file that is there but
    /// does not parse fails the test either way.
    fn kernel(test: &str) -> Option<KernelBtf> {
        if !Path::new(VMLINUX_BTF).exists() {
            assert!(
                std::env::var_os("CT_TRACE_BIN").is_none(),
                "{test} needs the kernel's BTF: no {VMLINUX_BTF} on this machine (CONFIG_DEBUG_INFO_BTF)"
            );
            println!("SKIPPED: {test}: no {VMLINUX_BTF} on this machine");
            return None;
        }
        Some(KernelBtf::load().unwrap_or_else(|e| panic!("{test}: {e}")))
    }

    #[test]
    fn offsets_of_the_running_kernel_are_plausible() {
        let Some(k) = kernel("offsets_of_the_running_kernel_are_plausible") else {
            return;
        };
        let o = k.offsets().expect("every field ct-trace reads exists");
        // `_nfct` follows the cb[] array and the dst pointer in every kernel since 4.11.
        assert!(o.skb_nfct > 48 && o.skb_nfct < 256, "{o:?}");
        assert!(o.skb_head > o.skb_nfct, "{o:?}");
        assert_ne!(o.sk_dport, o.sk_num);
        assert_eq!(o.sk_num, o.sk_dport + 2, "skc_num follows skc_dport: {o:?}");
    }

    #[test]
    fn missing_fields_are_errors_naming_them() {
        let Some(k) = kernel("missing_fields_are_errors_naming_them") else {
            return;
        };
        let e = k.offset("sk_buff", "no_such_field").unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel BTF: `sk_buff` has no field `no_such_field`"
        );
        assert!(matches!(
            k.offset("no_such_struct_xyz", "a"),
            Err(BtfError::NoType(_))
        ));
    }

    #[test]
    fn conntrack_structures_fit_the_copies() {
        let Some(k) = kernel("conntrack_structures_fit_the_copies") else {
            return;
        };
        let c = k.ct_offsets().expect("nf_conn is described in BTF");
        assert!(
            c.tuple_reply > c.tuple_original && c.proto_tcp > c.status,
            "{c:?}"
        );
        let l = k
            .ct_layout()
            .expect("conntrack's TCP state is described in BTF");
        assert_eq!((l.src_u3, l.tcp_state_size), (0, 20), "{l:?}");
        let params = k
            .func_params("nf_conntrack_in")
            .expect("nf_conntrack_in has a BTF prototype");
        assert_eq!(params, ["skb", "state"]);
    }

    #[test]
    fn reason_names_are_shortened() {
        assert_eq!(short_reason("SK_RST_REASON_NO_SOCKET"), "NO_SOCKET");
        assert_eq!(
            short_reason("SKB_DROP_REASON_NETFILTER_DROP"),
            "NETFILTER_DROP"
        );
        assert_eq!(short_reason("OTHER"), "OTHER");
    }
}
