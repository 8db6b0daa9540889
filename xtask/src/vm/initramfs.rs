//! The guest's initramfs, cached per kernel in `<series>/initrd.cpio` (rebuilt when the kernel
//! packages, the module list, busybox or `init.sh` change): static busybox as PID 1 running
//! `init.sh`, and the modules the guests need with their dependencies, in load order
//! (`/etc/modules`), decompressed on the host (busybox insmod reads plain `.ko` only).

use std::{
    collections::HashSet,
    fs::{self, File},
    io::Write as _,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{ensure, Context as _, Result};

use super::{guest::INIT, kernel::Kernel, remove_dir, Series};
use crate::host::run;

/// Modules every guest loads (with their dependencies), on the kernels that have them:
/// virtio-9p for the host's `/`, veth, conntrack/NAT for iptables (legacy and nft backends) and
/// nft, ctnetlink, nfnetlink_hook. Guests cannot autoload modules: the host's `/lib/modules`
/// has none for the guest kernel.
pub(super) const MODULES: &[(&str, Kernels)] = &[
    ("virtio_pci", All),
    ("9pnet_virtio", All),
    ("9p", All),
    ("veth", All),
    ("nf_conntrack", All),
    ("nf_nat", All),
    ("nf_tables", All),
    // iptables-nft puts a counter in every rule: without it every append fails with ENOENT.
    // A module of its own on 5.10, part of nf_tables on Debian's 6.1 and later.
    ("nft_counter", Before((6, 1))),
    ("nft_ct", All),
    ("nft_nat", All),
    ("nft_chain_nat", All),
    ("nft_compat", All),
    ("iptable_nat", All),
    ("iptable_filter", All),
    ("ip6table_nat", All),
    ("ip6table_filter", All),
    ("xt_conntrack", All),
    ("xt_nat", All),
    // `-p tcp --dport`: iptables-nft says "Extension tcp revision 0 not supported" without it.
    ("xt_tcpudp", All),
    // kube-proxy's rule comments, as `ct-trace lab` writes them ("Extension comment revision 0
    // not supported" without it).
    ("xt_comment", All),
    ("nf_conntrack_netlink", All),
    // The hook dump ct-trace reads (the nfnetlink hook subsystem is new in 5.14).
    ("nfnetlink_hook", From((5, 14))),
];

/// The kernels a module of `MODULES` is loaded on, by (major, minor).
#[derive(Clone, Copy)]
pub(super) enum Kernels {
    All,
    From((u32, u32)),
    Before((u32, u32)),
}
use Kernels::*;

/// The modules of `MODULES` the series' kernel has.
pub(super) fn modules(s: Series) -> impl Iterator<Item = &'static str> {
    MODULES
        .iter()
        .filter(move |(_, k)| match *k {
            All => true,
            From(v) => s.version() >= v,
            Before(v) => s.version() < v,
        })
        .map(|(m, _)| *m)
}

/// Returns the cached base initramfs, built now or before (true: built now).
pub(super) fn initrd(k: &Kernel, modules: &[String]) -> Result<(PathBuf, bool)> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox (`cargo xtask setup` installs busybox-static)")?;
    let bb = fs::read(&busybox)?;
    ensure!(
        !has_interpreter(&bb),
        "{} is linked dynamically: install busybox-static (`cargo xtask setup`)",
        busybox.display()
    );
    let stamp = format!(
        "{}\nmodules: {}\nbusybox: {} bytes\n{INIT}",
        k.stamp,
        modules.join(" "),
        bb.len()
    );
    let out = k.dir.join("initrd.cpio");
    let stamp_path = k.dir.join("initrd.stamp");
    if out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok((out, false));
    }
    let stage = k.dir.join("initrd.d");
    remove_dir(&stage)?;
    stage_init(&stage, &bb)?;
    let order = stage_modules(k, modules, &stage.join("lib/modules"))?;
    fs::write(stage.join("etc/modules"), order.join("\n") + "\n")?;
    let tmp = k.dir.join("initrd.cpio.tmp");
    cpio(&stage, &tmp)?;
    fs::rename(&tmp, &out)?;
    fs::write(&stamp_path, &stamp)?;
    remove_dir(&stage)?;
    eprintln!(
        "xtask: vm {}: initramfs with {} modules, {:.1} MB",
        k.series.name(),
        order.len(),
        fs::metadata(&out)?.len() as f64 / 1e6
    );
    Ok((out, true))
}

/// The folders, busybox (`/bin/busybox`, `/bin/sh`) and `/init`.
fn stage_init(stage: &Path, busybox: &[u8]) -> Result<()> {
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "lib/modules",
        "mnt/host",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::write(stage.join("bin/busybox"), busybox)?;
    fs::set_permissions(stage.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    symlink("busybox", stage.join("bin/sh"))?;
    fs::write(stage.join("init"), INIT)?;
    fs::set_permissions(stage.join("init"), fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Copies `modules` and their dependencies, decompressed, into `dest` (flat, by name); returns
/// their names in load order. A module the kernel lacks is skipped with a warning.
fn stage_modules(k: &Kernel, modules: &[String], dest: &Path) -> Result<Vec<String>> {
    // depmod/modprobe -b/-d BASE look in BASE/lib/modules/KVER, whichever layout the package has.
    let base = k.dir.join("depmod");
    remove_dir(&base)?;
    fs::create_dir_all(base.join("lib/modules"))?;
    symlink(&k.moddir, base.join("lib/modules").join(&k.kver))?;
    if !k.moddir.join("modules.dep").is_file() {
        // Debian's packages ship no modules.dep.
        run(Command::new("depmod").arg("-b").arg(&base).arg(&k.kver))?;
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for m in modules {
        let deps = Command::new("modprobe")
            .arg("-d")
            .arg(&base)
            .args(["-S", &k.kver, "--show-depends", m])
            .output()
            .context("running modprobe --show-depends")?;
        if !deps.status.success() {
            eprintln!(
                "xtask: vm {}: warning: no module {m} in {}, skipped",
                k.series.name(),
                k.kver
            );
            continue;
        }
        // "insmod PATH [options]" in load order; "builtin NAME" needs nothing.
        for line in String::from_utf8_lossy(&deps.stdout).lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("insmod") {
                continue;
            }
            let path = PathBuf::from(w.next().context("modprobe printed no path")?);
            let name = copy_module(&path, dest, &mut seen)?;
            order.extend(name);
        }
    }
    remove_dir(&base)?;
    Ok(order)
}

/// Copies one module file into `dest` as plain `NAME.ko` unless `seen` has it; returns the name
/// when copied.
fn copy_module(path: &Path, dest: &Path, seen: &mut HashSet<String>) -> Result<Option<String>> {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let (name, tool) = match file.rsplit_once('.') {
        Some((n, "xz")) => (n.to_string(), Some("xz")),
        Some((n, "zst")) => (n.to_string(), Some("zstd")),
        Some((n, "gz")) => (n.to_string(), Some("gzip")),
        _ => (file.to_string(), None),
    };
    if !seen.insert(name.clone()) {
        return Ok(None);
    }
    let dest = dest.join(&name);
    match tool {
        Some(tool) => run(Command::new(tool)
            .arg("-dqc")
            .arg(path)
            .stdout(File::create(&dest)?))?,
        None => {
            fs::copy(path, &dest)?;
        }
    }
    Ok(Some(name))
}

/// Whether an ELF64 file has a PT_INTERP program header (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return true;
    }
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// A newc archive of `dir`'s contents (owner root, sorted, reproducible).
pub(super) fn cpio(dir: &Path, out: &Path) -> Result<()> {
    fn walk(root: &Path, d: &Path, list: &mut Vec<String>) -> Result<()> {
        for e in fs::read_dir(d)? {
            let p = e?.path();
            list.push(p.strip_prefix(root)?.to_string_lossy().into_owned());
            if fs::symlink_metadata(&p)?.is_dir() {
                walk(root, &p, list)?;
            }
        }
        Ok(())
    }
    let mut list = Vec::new();
    walk(dir, dir, &mut list)?;
    list.sort();
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(File::create(out)?)
        .spawn()
        .context("running cpio")?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all((list.join("\n") + "\n").as_bytes())?;
    let status = child.wait()?;
    ensure!(status.success(), "cpio failed ({status})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_follow_the_kernel() {
        let on = |s| modules(s).collect::<Vec<_>>();
        let old = on(Series::V5_10);
        assert!(!old.contains(&"nfnetlink_hook"));
        assert!(old.contains(&"nft_counter"));
        assert!(old.contains(&"9p"));
        assert_eq!(old.len(), MODULES.len() - 1);
        for s in [Series::V6_1, Series::V6_12, Series::V7_2] {
            assert!(!on(s).contains(&"nft_counter"));
            assert!(on(s).contains(&"nfnetlink_hook"));
            assert_eq!(on(s).len(), MODULES.len() - 1);
        }
    }
}
