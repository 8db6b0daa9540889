//! `cargo xtask lint`: rustfmt, and clippy with `-D warnings` on the host crates (both of
//! ct-trace's builds: the default, and the image's without the lab) and on the eBPF crate.

use anyhow::Result;

use crate::host::{cargo, run, EBPF_TOOLCHAIN};

pub fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "conntrack-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The image's build: ct-trace without the lab (code under `cfg(not(feature = "lab"))`, and
    // nothing the lab alone used left unused).
    run(cargo().args([
        "clippy",
        "-p",
        "conntrack-user",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .arg(format!("+{EBPF_TOOLCHAIN}"))
        .args([
            "clippy",
            "-p",
            "conntrack-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--target-dir", "target/bpf-clippy", "--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        ))?;
    Ok(())
}
