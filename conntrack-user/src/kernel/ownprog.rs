//! Programs aya (0.14-0.16) cannot load: netfilter programs (no program type in aya) and fexit
//! programs on module functions (aya never sets `attach_btf_obj_fd`, aya-rs/aya#300).
//!
//! They are compiled into the same object as everything else, under sections aya-obj accepts
//! (`classifier/`, `fexit/`). aya loads the object and creates every map; it is never asked to
//! load these programs. Here a second parse of the same bytes keeps only the one program, points
//! its map references at the maps aya created (so it writes into the same ring buffer and reads
//! the same frozen `.rodata`), and loads it with the raw `bpf(2)` syscall; the callers
//! (`netfilter`, `trampoline`) attach it.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use aya::maps::{Map, MapData};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};

#[derive(Debug, thiserror::Error)]
pub enum OwnLoadError {
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
}

/// What `BPF_PROG_LOAD` is told besides the instructions.
#[derive(Clone, Copy, Debug)]
pub struct ProgSpec {
    pub prog_type: bpf_prog_type,
    pub expected_attach_type: bpf_attach_type,
    /// The BTF `FUNC` a tracing program attaches to (ids of a module's split BTF continue after
    /// vmlinux's); 0 for other programs.
    pub attach_btf_id: u32,
    /// The module BTF object holding `attach_btf_id`; `None`: vmlinux.
    pub attach_btf_obj_fd: Option<RawFd>,
}

/// A program loaded by ct-trace's own loader; its links keep it loaded after this is dropped.
pub struct OwnProgram {
    pub name: String,
    pub fd: OwnedFd,
}

impl OwnProgram {
    /// Loads `name` from `object`, sharing every map of `ebpf` (call before any `take_map`).
    pub fn load(
        object: &[u8],
        name: &str,
        ebpf: &aya::Ebpf,
        spec: ProgSpec,
    ) -> Result<Self, OwnLoadError> {
        let mut obj = aya_obj::Object::parse(object).map_err(OwnLoadError::Parse)?;
        obj.programs.retain(|n, _| n == name);
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| OwnLoadError::NoProgram(name.to_string()))?;
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
            .map_err(|e| OwnLoadError::Relocate(name.to_string(), e))?;
        obj.relocate_calls(&text)
            .map_err(|e| OwnLoadError::Relocate(name.to_string(), e))?;
        let insns: &[bpf_insn] = &obj.functions[&key].instructions;

        let mut log = vec![0u8; 1 << 20];
        let fd = match prog_load(name, insns, &license, spec, &mut log, 0) {
            Ok(fd) => fd,
            Err(_) => {
                // Load again with the log on: the first attempt keeps the common path quiet.
                let err = prog_load(name, insns, &license, spec, &mut log, 1).unwrap_err();
                let text = String::from_utf8_lossy(&log)
                    .trim_end_matches('\0')
                    .to_string();
                return Err(OwnLoadError::Verifier {
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

/// `bpf(cmd, attr)`; a returned fd is the caller's to wrap.
pub fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<RawFd> {
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

/// `bpf(cmd, attr)` for a command that returns a new fd.
pub fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_PROG_LOAD` of `insns` as `spec` says.
pub fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    spec: ProgSpec,
    log: &mut [u8],
    log_level: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers and pointers that outlive the syscall.
    unsafe {
        let p = &mut attr.__bindgen_anon_3;
        p.prog_type = spec.prog_type as u32;
        p.expected_attach_type = spec.expected_attach_type as u32;
        p.attach_btf_id = spec.attach_btf_id;
        if let Some(fd) = spec.attach_btf_obj_fd {
            p.__bindgen_anon_1.attach_btf_obj_fd = fd as u32;
        }
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
    bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}
