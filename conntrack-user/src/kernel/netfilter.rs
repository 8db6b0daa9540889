//! A small loader for `BPF_PROG_TYPE_NETFILTER` programs, which aya (0.14-0.16) cannot load.
//!
//! The program is compiled into the same object as everything else, under a `classifier/`
//! section that aya-obj accepts (a `netfilter` section would make aya-obj reject the whole
//! object). aya loads the object and creates every map; it is never asked to load this program.
//! Here a second parse of the same bytes keeps only the netfilter program, points its map
//! references at the maps aya created (so it writes into the same ring buffer and reads the same
//! frozen `.rodata`), and loads and links it with the raw `bpf(2)` syscall.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use aya::maps::{Map, MapData};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};
use conntrack_common::Hook;

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error("parsing the eBPF object")]
    Parse(#[source] aya_obj::ParseError),
    #[error("the eBPF object has no program `{0}`")]
    NoProgram(String),
    #[error("relocating `{0}`")]
    Relocate(String, #[source] aya_obj::relocation::EbpfRelocationError),
    #[error("the kernel rejected `{program}` ({source}); verifier log {log_at}")]
    Verifier {
        program: String,
        /// `in PATH`, or why it was not written.
        log_at: String,
        log: String,
        #[source]
        source: io::Error,
    },
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

fn map_data(m: &Map) -> &MapData {
    match m {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<RawFd> {
    // SAFETY: attr is a fully initialised bpf_attr of the right size for every command.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as RawFd)
    }
}

/// A loaded netfilter program; links made from it detach when dropped.
pub struct NetfilterProgram {
    name: String,
    fd: OwnedFd,
}

impl NetfilterProgram {
    /// Loads `name` from `object`, sharing every map of `ebpf` (call before any `take_map`).
    pub fn load(object: &[u8], name: &str, ebpf: &aya::Ebpf) -> Result<Self, NetfilterError> {
        let mut obj = aya_obj::Object::parse(object).map_err(NetfilterError::Parse)?;
        obj.programs.retain(|n, _| n == name);
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| NetfilterError::NoProgram(name.to_string()))?;
        let key = program.function_key();
        let license = program.license.clone();

        // Every map of the object must be in this list: all `#[map]`s share the ELF `maps`
        // section, and a map missing here would be resolved to a neighbour in that section.
        // relocate_maps borrows the maps while it mutates the functions: hence the clones.
        let maps: Vec<(String, RawFd, aya_obj::Map)> = obj
            .maps
            .iter()
            .map(|(n, m)| {
                let fd = ebpf
                    .map(n)
                    .map_or(-1, |am| map_data(am).fd().as_fd().as_raw_fd());
                (n.clone(), fd, m.clone())
            })
            .collect();
        let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        obj.relocate_maps(maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)), &text)
            .map_err(|e| NetfilterError::Relocate(name.to_string(), e))?;
        obj.relocate_calls(&text)
            .map_err(|e| NetfilterError::Relocate(name.to_string(), e))?;
        let insns: &[bpf_insn] = &obj.functions[&key].instructions;

        let mut log = vec![0u8; 1 << 20];
        let fd = match prog_load(name, insns, &license, &mut log, 0) {
            Ok(fd) => fd,
            Err(_) => {
                // Load again with the log on: the first attempt keeps the common path quiet.
                let err = prog_load(name, insns, &license, &mut log, 1).unwrap_err();
                let text = String::from_utf8_lossy(&log)
                    .trim_end_matches('\0')
                    .to_string();
                return Err(NetfilterError::Verifier {
                    program: name.to_string(),
                    log_at: crate::kernel::verifier::write_log(name, &text),
                    log: text,
                    source: err,
                });
            }
        };
        Ok(Self {
            name: name.to_string(),
            fd,
        })
    }

    /// The loaded program (its links keep it loaded after this is dropped).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
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
            lc.__bindgen_anon_1.prog_fd = self.fd.as_raw_fd() as u32;
            lc.attach_type = bpf_attach_type::BPF_NETFILTER as u32;
            lc.__bindgen_anon_3.netfilter.pf = family as u32;
            lc.__bindgen_anon_3.netfilter.hooknum = hook as u32;
            lc.__bindgen_anon_3.netfilter.priority = priority;
        }
        let fd =
            bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(|source| NetfilterError::Link {
                program: self.name.clone(),
                family: family.name(),
                hook: hook.name(),
                source,
            })?;
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    log: &mut [u8],
    log_level: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers and pointers that outlive the syscall.
    unsafe {
        let p = &mut attr.__bindgen_anon_3;
        p.prog_type = bpf_prog_type::BPF_PROG_TYPE_NETFILTER as u32;
        p.expected_attach_type = bpf_attach_type::BPF_NETFILTER as u32;
        p.insns = insns.as_ptr() as u64;
        p.insn_cnt = insns.len() as u32;
        p.license = license.as_ptr() as u64;
        // The kernel keeps 15 bytes of a program name.
        for (d, s) in p.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        if log_level > 0 {
            p.log_level = log_level;
            p.log_buf = log.as_mut_ptr() as u64;
            p.log_size = log.len() as u32;
        }
    }
    let fd = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
