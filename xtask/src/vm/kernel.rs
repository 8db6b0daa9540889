//! Debian kernels: the newest package(s) of a series from the private apt list, downloaded and
//! extracted with `dpkg -x` into `$CT_TRACE_CACHE/vm/<series>/` unless the same versions are
//! there already; the uncompressed vmlinux is cut out of vmlinuz (qemu boots it through PVH,
//! skipping the decompressor, which is slow under TCG).

use std::{
    fs::{self, File},
    io::{Read, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};

use super::{apt::Apt, remove_dir, secs, Series};
use crate::host::run;

/// A fetched kernel: its cache folder, vmlinux and modules.
pub(super) struct Kernel {
    pub(super) series: Series,
    pub(super) dir: PathBuf,
    /// Packages and versions, as stored in `pkgs`.
    pub(super) stamp: String,
    /// `uname -r`.
    pub(super) kver: String,
    pub(super) vmlinux: PathBuf,
    pub(super) moddir: PathBuf,
}

/// The newest packages of the series: `linux-image-*-amd64-unsigned`, or (Debian's 7.x) the
/// split `linux-binary-*` + `linux-modules-*` + `linux-base-*`.
fn resolve(apt: &Apt, s: Series) -> Result<Vec<(String, String)>> {
    let suites = s.suites();
    if let Some(image) = apt.newest(
        &format!("linux-image-{}.", s.name()),
        "-amd64-unsigned",
        suites,
    )? {
        return Ok(vec![image]);
    }
    let Some((binary, version)) =
        apt.newest(&format!("linux-binary-{}.", s.name()), "-amd64", suites)?
    else {
        bail!(
            "no generic amd64 kernel package for {} in {}",
            s.name(),
            suites.join(", ")
        );
    };
    let abi = binary.trim_start_matches("linux-binary-");
    let rest = [format!("linux-modules-{abi}"), format!("linux-base-{abi}")];
    let known = apt.madison(&rest)?;
    for name in &rest {
        ensure!(
            known.iter().any(|(n, v, _)| n == name && *v == version),
            "{binary} {version} has no {name} of the same version"
        );
    }
    let mut pkgs = vec![(binary, version.clone())];
    pkgs.extend(rest.into_iter().map(|n| (n, version.clone())));
    Ok(pkgs)
}

/// Returns the kernel and whether it was downloaded now (false: cached).
pub(super) fn fetch(apt: &Apt, vm: &Path, s: Series) -> Result<(Kernel, bool)> {
    let dir = vm.join(s.name());
    let pkgs = resolve(apt, s)?;
    let stamp = pkgs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let cached = fs::read_to_string(dir.join("pkgs")).is_ok_and(|c| c.trim() == stamp);
    if !cached {
        download(apt, vm, s, &pkgs, &stamp)?;
    } else {
        eprintln!("xtask: vm {}: cached {stamp}", s.name());
    }
    let kver = fs::read_to_string(dir.join("kver"))?.trim().to_string();
    let moddir = module_dir(&dir.join("root"))?;
    Ok((
        Kernel {
            series: s,
            vmlinux: dir.join("vmlinux"),
            dir,
            stamp,
            kver,
            moddir,
        },
        !cached,
    ))
}

fn download(apt: &Apt, vm: &Path, s: Series, pkgs: &[(String, String)], stamp: &str) -> Result<()> {
    let dir = vm.join(s.name());
    // Built aside and renamed into place: an interrupted fetch leaves no half kernel behind.
    let tmp = vm.join(format!("{}.partial", s.name()));
    remove_dir(&tmp)?;
    let debs = tmp.join("debs");
    let root = tmp.join("root");
    fs::create_dir_all(&debs)?;
    fs::create_dir_all(&root)?;
    let t = Instant::now();
    eprintln!("xtask: vm {}: downloading {stamp}", s.name());
    run(apt
        .cmd("apt-get")
        .args(["download", "-qq"])
        .args(pkgs.iter().map(|(n, v)| format!("{n}={v}")))
        .current_dir(&debs))?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    ensure!(
        files.len() == pkgs.len(),
        "apt-get download left {} .deb files for {} packages",
        files.len(),
        pkgs.len()
    );
    let bytes: u64 = files
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let downloaded = secs(t);
    let t = Instant::now();
    for f in &files {
        run(Command::new("dpkg").arg("-x").arg(f).arg(&root))?;
    }
    let moddir = module_dir(&root)?;
    let kver = moddir
        .file_name()
        .context("module folder has no name")?
        .to_string_lossy()
        .into_owned();
    // 6.1 ships /boot/vmlinuz-KVER; newer packages may keep it next to the modules.
    let find = |name: &str| -> Result<PathBuf> {
        [root.join(format!("boot/{name}-{kver}")), moddir.join(name)]
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| format!("no {name} in {}", pkgs[0].0))
    };
    fs::copy(find("config")?, tmp.join("config"))?;
    extract_vmlinux(&find("vmlinuz")?, &tmp.join("vmlinux"))?;
    fs::write(tmp.join("kver"), format!("{kver}\n"))?;
    fs::write(tmp.join("version"), format!("{}\n", pkgs[0].1))?;
    fs::write(tmp.join("pkgs"), format!("{stamp}\n"))?;
    remove_dir(&debs)?;
    remove_dir(&dir)?;
    fs::rename(&tmp, &dir)?;
    eprintln!(
        "xtask: vm {}: {kver}: downloaded {:.0} MB in {downloaded:.1} s, extracted in {:.1} s",
        s.name(),
        bytes as f64 / 1e6,
        secs(t)
    );
    Ok(())
}

/// `lib/modules/KVER` (6.1) or `usr/lib/modules/KVER` (6.12+): the one with a `kernel/` folder.
fn module_dir(root: &Path) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(d) = fs::read_dir(root.join(base)) {
            for e in d.filter_map(|e| e.ok()) {
                if e.path().join("kernel").is_dir() {
                    return Ok(e.path());
                }
            }
        }
    }
    bail!("no kernel modules under {}", root.display())
}

/// Cuts the compressed ELF kernel out of a bzImage and decompresses it (for PVH boot).
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let data = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let formats: [(&[u8], &str); 4] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], "xz"),
        (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
        (&[0x1f, 0x8b, 0x08, 0x00], "gzip"),
    ];
    for (magic, prog) in formats {
        let offsets = data
            .windows(magic.len())
            .enumerate()
            .filter(|(_, w)| *w == magic)
            .map(|(i, _)| i);
        for off in offsets {
            let Ok(mut child) = Command::new(prog)
                .arg("-dqc")
                .stdin(Stdio::piped())
                .stdout(File::create(out)?)
                .stderr(Stdio::null())
                .spawn()
            else {
                break;
            };
            // The payload is followed by other data: the decompressor may stop reading early.
            let _ = child.stdin.take().unwrap().write_all(&data[off..]);
            let _ = child.wait()?;
            let mut head = [0u8; 4];
            let elf = File::open(out)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && head == *b"\x7fELF";
            if elf {
                return Ok(());
            }
        }
    }
    let _ = fs::remove_file(out);
    bail!("no compressed ELF kernel found in {}", vmlinuz.display())
}
