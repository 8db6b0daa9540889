//! Compiles conntrack-ebpf for the BPF target (nightly, build-std, bpf-linker) into OUT_DIR.
//! bpf-linker is looked up on PATH and in the cache `cargo xtask setup` fills.

use std::{env, path::PathBuf};

fn tools_bin() -> Option<PathBuf> {
    let cache = env::var_os("CT_TRACE_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ct-trace")))?;
    Some(cache.join("tools/bin"))
}

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=CT_TRACE_CACHE");
    if let Some(bin) = tools_bin() {
        if bin.join("bpf-linker").exists() {
            let path = env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![bin];
            paths.extend(env::split_paths(&path));
            // A build script is single-threaded: changing its own environment is safe, and the
            // cargo it spawns inherits it.
            env::set_var("PATH", env::join_paths(paths)?);
        }
    }
    if which_bpf_linker().is_none() {
        anyhow::bail!(
            "bpf-linker not found on PATH or in the ct-trace tool cache: run `cargo xtask setup`"
        );
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../conntrack-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?
        .to_string();
    println!("cargo::rerun-if-changed=../conntrack-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "conntrack-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn which_bpf_linker() -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.exists())
}
