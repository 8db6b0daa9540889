//! `BPF_PROG_TYPE_NETFILTER` programs and their links, which aya (0.14-0.16) cannot load.
//!
//! The program is compiled into the same object as everything else, under a `classifier/`
//! section that aya-obj accepts (a `netfilter` section would make aya-obj reject the whole
//! object), and loaded by ct-trace's own loader ([`crate::kernel::ownprog`]); here it is linked
//! with `BPF_LINK_CREATE`.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};
use conntrack_common::Hook;

use crate::kernel::ownprog::{bpf_fd, OwnLoadError, OwnProgram, ProgSpec};

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error(transparent)]
    Load(#[from] OwnLoadError),
    #[error("bpf(BPF_LINK_CREATE) for `{program}` at {family}/{hook}")]
    Link {
        program: String,
        family: &'static str,
        hook: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Where links attach: `NFPROTO_*` and `enum nf_inet_hooks`, from the shared vocabulary.
pub use conntrack_common::{Family, Hook as HookNum};

/// `NF_IP_PRI_CONNTRACK` (-200) + 1: right behind conntrack, before mangle (-150), DNAT (-100)
/// and filter (0), so the verdict is seen before any rule acts on it.
pub const PRIORITY: i32 = -199;

/// The last priority tried when another BPF program (another ct-trace) holds `PRIORITY`: the
/// kernel refuses two BPF hooks at one priority (EBUSY, `nf_hook_entries_grow()`), and anything
/// before `NF_IP_PRI_MANGLE` (-150) still runs before a mangle rule could drop the packet.
pub const LAST_PRIORITY: i32 = -151;

impl NetfilterProgram {
    /// Attaches at the first free priority from [`PRIORITY`] to [`LAST_PRIORITY`]; returns the
    /// link and the priority it got.
    pub fn attach_free(
        &self,
        family: Family,
        hook: Hook,
    ) -> Result<(OwnedFd, i32), NetfilterError> {
        let mut priority = PRIORITY;
        loop {
            match self.attach(family, hook, priority) {
                Ok(fd) => return Ok((fd, priority)),
                Err(NetfilterError::Link { ref source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) && priority < LAST_PRIORITY =>
                {
                    priority += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A loaded netfilter program; links made from it detach when dropped.
pub struct NetfilterProgram(OwnProgram);

impl NetfilterProgram {
    /// Loads `name` from `object`, sharing every map of `ebpf` (call before any `take_map`).
    pub fn load(object: &[u8], name: &str, ebpf: &aya::Ebpf) -> Result<Self, NetfilterError> {
        let spec = ProgSpec {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_NETFILTER,
            expected_attach_type: bpf_attach_type::BPF_NETFILTER,
            attach_btf_id: 0,
            attach_btf_obj_fd: None,
        };
        Ok(Self(OwnProgram::load(object, name, ebpf, spec)?))
    }

    /// The loaded program (its links keep it loaded after this is dropped).
    pub fn into_fd(self) -> OwnedFd {
        self.0.fd
    }

    /// Attaches at `family`/`hook` in the caller's network namespace.
    pub fn attach(
        &self,
        family: Family,
        hook: Hook,
        priority: i32,
    ) -> Result<OwnedFd, NetfilterError> {
        // SAFETY: all-zero is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing plain integers into the link_create member of the union.
        unsafe {
            let lc = &mut attr.link_create;
            lc.__bindgen_anon_1.prog_fd = self.0.fd.as_raw_fd() as u32;
            lc.attach_type = bpf_attach_type::BPF_NETFILTER as u32;
            lc.__bindgen_anon_3.netfilter.pf = family as u32;
            lc.__bindgen_anon_3.netfilter.hooknum = hook as u32;
            lc.__bindgen_anon_3.netfilter.priority = priority;
        }
        bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(|source| NetfilterError::Link {
            program: self.0.name.clone(),
            family: family.name(),
            hook: hook.name(),
            source,
        })
    }
}
