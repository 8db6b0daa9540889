//! fexit programs on kernel functions, also a module's (nf_conntrack is one on distribution
//! kernels), which aya (0.14-0.16) cannot attach: it never sets `attach_btf_obj_fd`
//! (aya-rs/aya#300).
//!
//! A trampoline is built from the function's BTF prototype, so the program is loaded with the
//! id of the function's `FUNC` and, for a module's function, an fd of the module's BTF object
//! (Linux 5.11: 290248a5b7d8 "bpf: Allow to specify kernel module BTFs when attaching BPF
//! programs"); `BPF_RAW_TRACEPOINT_OPEN` without a name then attaches it (5.5). Dropping the
//! link detaches it.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_btf_info, bpf_cmd, bpf_insn, bpf_prog_type,
};

use crate::kernel::{
    btf::FuncId,
    ownprog::{bpf, bpf_fd, prog_load, OwnLoadError, OwnProgram, ProgSpec},
};

#[derive(Debug, thiserror::Error)]
pub enum TrampolineError {
    #[error(transparent)]
    Load(#[from] OwnLoadError),
    #[error("finding the BTF object of module {module}")]
    ModuleBtf {
        module: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching `{program}` at fexit/{func}")]
    Attach {
        program: String,
        func: String,
        #[source]
        source: io::Error,
    },
}

/// The BTF object a function's trampoline is built from: an fd of its module's BTF, `None` for
/// vmlinux.
fn btf_obj(target: &FuncId) -> Result<Option<OwnedFd>, TrampolineError> {
    let Some(module) = &target.module else {
        return Ok(None);
    };
    module_btf(module)
        .map(Some)
        .map_err(|source| TrampolineError::ModuleBtf {
            module: module.clone(),
            source,
        })
}

/// An fd of the BTF object the kernel loaded for `module`: walks the BTF ids
/// (`BPF_BTF_GET_NEXT_ID`) and matches each object's name.
pub fn module_btf(module: &str) -> io::Result<OwnedFd> {
    let mut id = 0u32;
    loop {
        // SAFETY: all-zero is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut attr).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                io::Error::new(io::ErrorKind::NotFound, "the kernel has no such BTF object")
            } else {
                e
            }
        })?;
        // SAFETY: reading the integer the kernel wrote into the union.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        // SAFETY: all-zero is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
        let fd = match bpf_fd(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => fd,
            // Unloaded between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let mut name = [0u8; 64];
        // SAFETY: all-zero is a valid bpf_btf_info and bpf_attr.
        let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
        info.name = name.as_mut_ptr() as u64;
        info.name_len = name.len() as u32;
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.info.bpf_fd = fd.as_raw_fd() as u32;
        attr.info.info_len = std::mem::size_of::<bpf_btf_info>() as u32;
        attr.info.info = (&mut info as *mut bpf_btf_info) as u64;
        bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        if info.kernel_btf != 0 && &name[..len] == module.as_bytes() {
            return Ok(fd);
        }
    }
}

fn fexit_spec(target: &FuncId, obj: &Option<OwnedFd>) -> ProgSpec {
    ProgSpec {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
        expected_attach_type: bpf_attach_type::BPF_TRACE_FEXIT,
        attach_btf_id: target.id,
        attach_btf_obj_fd: obj.as_ref().map(|fd| fd.as_raw_fd()),
    }
}

/// Attaches a loaded tracing program at the function it was loaded for.
fn raw_tp_open(prog: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: all-zero is a valid bpf_attr; no name: the program's attach target is used.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    bpf_fd(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

/// Loads `program` from `object` (sharing the maps of `ebpf`) as an fexit program on `func`,
/// described by `target`, and attaches it; returns the program and its link.
pub fn attach_fexit(
    object: &[u8],
    program: &str,
    ebpf: &aya::Ebpf,
    func: &str,
    target: &FuncId,
) -> Result<(OwnProgram, OwnedFd), TrampolineError> {
    let obj = btf_obj(target)?;
    let prog = OwnProgram::load(object, program, ebpf, fexit_spec(target, &obj))?;
    let link = raw_tp_open(&prog.fd).map_err(|source| TrampolineError::Attach {
        program: program.to_string(),
        func: func.to_string(),
        source,
    })?;
    Ok((prog, link))
}

/// Whether this kernel builds a trampoline for `func`: loads and attaches a program that does
/// nothing (`r0 = 0; exit`) and detaches it at once. Kernels and security policies refuse
/// trampolines in ways a version or config cannot tell (this project's build host: EPERM with an
/// empty verifier log), so the kernel is asked.
pub fn probe(func: &str, target: &FuncId) -> Result<(), String> {
    let obj = btf_obj(target).map_err(|e| format!("{e}: {}", source_of(&e)))?;
    // r0 = 0 (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT).
    // SAFETY: all-zero is a valid bpf_insn.
    let mut insns: [bpf_insn; 2] = unsafe { std::mem::zeroed() };
    insns[0].code = 0xb7;
    insns[1].code = 0x95;
    let license = CString::new("GPL").unwrap_or_default();
    let prog = prog_load(
        "ctt_probe",
        &insns,
        &license,
        fexit_spec(target, &obj),
        &mut [],
        0,
    )
    .map_err(|e| format!("the kernel refuses fexit programs on {func} (BPF_PROG_LOAD: {e})"))?;
    raw_tp_open(&prog)
        .map(drop)
        .map_err(|e| format!("the kernel cannot attach fexit programs to {func} ({e})"))
}

fn source_of(e: &TrampolineError) -> String {
    std::error::Error::source(e).map_or_else(String::new, |s| s.to_string())
}
