//! What every xtask command uses to drive the machine: the workspace and cache paths, running
//! commands (cargo with the tool cache on its PATH), the one table printer, phase timing, and
//! the `cargo test` selection the host run and the VM matrix share. The lowest layer of xtask:
//! it imports nothing of the crate.

use std::{env, path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

/// The toolchain that compiles the eBPF crate (and whose LLVM bpf-linker links).
pub const EBPF_TOOLCHAIN: &str = "nightly";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn cache() -> PathBuf {
    env::var_os("CT_TRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/ct-trace")
        })
}

pub fn tools_bin() -> PathBuf {
    cache().join("tools/bin")
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Prints an aligned table (two spaces between columns): every table xtask prints.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    for line in table_lines(header, rows) {
        println!("{line}");
    }
}

fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(&header)
        .chain(rows)
        .map(|line| {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(c, &w)| format!("{c:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools_bin()];
    paths.extend(env::split_paths(&path));
    c.env("PATH", env::join_paths(paths).expect("PATH"));
    c
}

/// The host's `cargo test` selection. The VM matrix builds its binaries with the same arguments
/// (and `--no-run`): the same features and profile, so nothing is rebuilt.
pub const CARGO_TEST: &[&str] = &[
    "test",
    "--workspace",
    "--exclude",
    "conntrack-ebpf",
    "--release",
    // No doc-tests: there are none, and their empty result lines would close the run.
    "--lib",
    "--bins",
    "--tests",
];

/// Runs `f`, recording how long it took under `name`.
pub fn phase<T>(phases: &mut Vec<(String, f64)>, name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    phases.push((name.to_string(), t.elapsed().as_secs_f64()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_table_columns() {
        let rows = [
            vec!["6.12".to_string(), "passed".into(), "0".into()],
            vec!["7.2".to_string(), "failed".into(), "-".into()],
        ];
        assert_eq!(
            table_lines(&["kernel", "result", "exit"], &rows),
            [
                "kernel  result  exit",
                "6.12    passed  0",
                "7.2     failed  -"
            ]
        );
    }
}
