//! `cargo xtask setup`: Debian packages the tests and the bench use (apt-get update first, only
//! when something is missing), nightly's rust-src, bpf-linker built against rustc's own libLLVM
//! and kubernetes-validate, into the tool cache. Idempotent.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::host::{cache, output, run, tools_bin, EBPF_TOOLCHAIN};

/// bpf-linker version (linked against the LLVM of `EBPF_TOOLCHAIN`, the one that compiles the
/// eBPF crate).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: what the integration tests call (iproute2, iptables, nft, conntrack,
/// scapy for crafted segments, util-linux's setpriv), what building needs, and what `vm` and
/// the VM matrix of `test` need (qemu, busybox-static for the initramfs, cpio, kmod's
/// depmod/modprobe, xz and zstd for kernels and modules, the archive keyring the private apt
/// list is signed with, CA certificates for https mirrors).
const PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "python3",
    "python3-scapy",
    "util-linux",
    "procps",
    // Bulk traffic beside the exactness tests, and `cargo xtask bench`'s hot-path runs.
    "iperf3",
    // The exactness tests check that no program stays loaded (SIGKILL, errors).
    "bpftool",
    // The bench compares ct-trace with a capture on the node.
    "tcpdump",
    // tests/tests/top.rs drives `ct-trace top`'s terminal view as a person would.
    "tmux",
    // The README runs `sudo ct-trace`; minimal images (and CI machines) may lack sudo.
    "sudo",
    "gcc",
    "libc6-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "debian-archive-keyring",
    "ca-certificates",
    // tests/tests/deploy.rs: promtool (check and unit-test the alerts), buildah (the image,
    // built from scratch with no daemon), and a venv for kubernetes-validate (below).
    "prometheus",
    "buildah",
    "python3-venv",
    // tests/tests/pcap.rs reads `--pcap` files with tshark. Under DEBIAN_FRONTEND=noninteractive
    // its debconf question (setuid dumpcap for non-root capture) takes its default, no.
    "tshark",
];

pub fn setup() -> Result<()> {
    // Debian packages.
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    // rust-src for -Z build-std=core.
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .args(["--print", "sysroot"]),
    )
    .context("the eBPF crate needs the nightly toolchain (rustup toolchain install nightly)")?;
    if !Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        eprintln!("xtask: adding rust-src to {EBPF_TOOLCHAIN}");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }

    // bpf-linker against the libLLVM inside the nightly sysroot (Debian's LLVM is too old, and
    // its major must equal the one rustc emits bitcode for).
    let linker = tools_bin().join("bpf-linker");
    let ok = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    if !ok {
        install_bpf_linker(sysroot.trim())?;
    }

    // kubernetes-validate (PyPI; Kubernetes' schemas bundled, offline) for the deploy tests, in
    // a venv of its own under the tool cache (its PyYAML and jsonschema also check the
    // prometheus-operator resources), linked into tools_bin().
    const KUBERNETES_VALIDATE: &str = "1.37.0";
    let venv = cache().join("tools/kubernetes-validate");
    let script = venv.join("bin/kubernetes-validate");
    let ok = Command::new(&script)
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == KUBERNETES_VALIDATE
        });
    if !ok {
        eprintln!("xtask: installing kubernetes-validate {KUBERNETES_VALIDATE}");
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("kubernetes-validate=={KUBERNETES_VALIDATE}"),
        ]))?;
    }
    let link = tools_bin().join("kubernetes-validate");
    if std::fs::read_link(&link).ok() != Some(script.clone()) {
        std::fs::create_dir_all(tools_bin())?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&script, &link)?;
    }

    eprintln!(
        "xtask: setup complete (bpf-linker and kubernetes-validate in {})",
        tools_bin().display()
    );
    Ok(())
}

fn install_bpf_linker(sysroot: &str) -> Result<()> {
    let vv = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .arg("-vV"),
    )?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV shows no LLVM version")?
        .to_string();
    let lib = std::fs::read_dir(Path::new(sysroot).join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so"))
        })
        .context("no libLLVM.so in the nightly sysroot")?;
    let prefix = cache().join("tools/llvm");
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    let name = lib.file_name().unwrap();
    // A copy survives `rustup update` replacing the sysroot; bpf-linker's RUNPATH points here.
    std::fs::copy(&lib, libdir.join(name)).context("copying libLLVM")?;
    let link = libdir.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(name, &link)?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about 2-4 minutes)"
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(cache().join("tools"))
        .env("LLVM_PREFIX", &prefix))?;
    Ok(())
}
