//! What the tests run besides the default build's ct-trace: the image's ct-trace (built without
//! the lab) and the tools `cargo xtask setup` installs. Missing, each fails the test under
//! `cargo xtask test` (CT_TRACE_BIN set) and is a counted skip under a plain `cargo test`.

use std::path::PathBuf;

use crate::skip;

/// The ct-trace the DaemonSet's image carries: built without the lab (`cargo xtask test` builds
/// it into target/image and sets CT_TRACE_IMAGE_BIN). Missing: fails under `cargo xtask test`,
/// else a counted skip (None).
pub fn image_bin(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CT_TRACE_IMAGE_BIN") {
        return Some(p.into());
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image/release/ct-trace");
    if p.exists() {
        return Some(p);
    }
    let build =
        "cargo build --release -p conntrack-user --no-default-features --target-dir target/image";
    assert!(
        std::env::var_os("CT_TRACE_BIN").is_none(),
        "{test} needs the image's ct-trace (no lab): {build}, or set CT_TRACE_IMAGE_BIN"
    );
    skip(
        test,
        &format!("no ct-trace without the lab; build it: {build}"),
    );
    None
}

/// ct-trace's tool cache, as `cargo xtask setup` fills it.
fn tools_dir() -> PathBuf {
    std::env::var_os("CT_TRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/ct-trace")
        })
        .join("tools")
}

/// A tool on PATH or in the tool cache's bin. Missing: fails under `cargo xtask test`, else a
/// counted skip (None).
pub fn need_tool(test: &str, name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([tools_dir().join("bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CT_TRACE_BIN").is_none(),
            "{test} needs {name}: run `cargo xtask setup`"
        );
        skip(test, &format!("{name} not found; run `cargo xtask setup`"));
    }
    found
}
