//! A private apt list of the Debian suites the VMs boot kernels from (each series' suites:
//! bullseye, bookworm, trixie, sid and their security suites) under `$CT_TRACE_CACHE/vm/apt`:
//! the system's sources are only read, for the archive addresses; `apt-get update` runs on it at
//! most once a day. Finds the newest package of a name pattern in given suites.

use std::{
    cmp::Ordering,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{secs, Series};
use crate::host::{output, run};

pub(super) struct Apt {
    dir: PathBuf,
    opts: Vec<String>,
}

impl Apt {
    pub(super) fn new(vm: &Path) -> Result<Self> {
        let dir = vm.join("apt");
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache"))?;
        let (main, security) = archive_uris()?;
        let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut list = String::new();
        for suite in Series::ALL.iter().flat_map(|s| s.suites()) {
            let uri = if suite.ends_with("-security") {
                &security
            } else {
                &main
            };
            writeln!(list, "deb [signed-by={key}] {uri} {suite} main")?;
        }
        let sources = dir.join("sources.list");
        if fs::read_to_string(&sources).ok().as_deref() != Some(list.as_str()) {
            fs::write(&sources, &list)?;
            let _ = fs::remove_file(dir.join("updated"));
        }
        let opts = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=-".into(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            // A binary cache of the lists (the system's docker-style config disables it): each
            // apt-cache call then takes milliseconds instead of seconds.
            "Dir::Cache::pkgcache=pkgcache.bin".into(),
            "Dir::Cache::srcpkgcache=".into(),
            "Acquire::Languages=none".into(),
            // The system's appstream config adds ~25 MB of DEP-11 metadata per update otherwise.
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            // Our folders are root's: no `_apt` sandbox user (and no warning about it).
            "APT::Sandbox::User=root".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(Apt { dir, opts })
    }

    pub(super) fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.args(&self.opts);
        c
    }

    /// `apt-get update` on the private list, at most once a day (apt dates the list files with
    /// the archive's Last-Modified, so a stamp of our own says when we last refreshed).
    pub(super) fn refresh(&self) -> Result<()> {
        let stamp = self.dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(24 * 3600));
        if fresh {
            return Ok(());
        }
        let t = Instant::now();
        eprintln!("xtask: vm: refreshing the Debian package lists");
        match run(self.cmd("apt-get").args(["update", "-qq"])) {
            Ok(()) => {
                fs::write(&stamp, "")?;
                eprintln!("xtask: vm: package lists refreshed in {:.1} s", secs(t));
            }
            Err(e) if self.has_lists() => {
                eprintln!("xtask: vm: warning: {e:#}; using the previous package lists")
            }
            Err(e) => return Err(e.context("fetching the Debian package lists")),
        }
        Ok(())
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// The newest `PREFIX<abi>SUFFIX` package in one of `suites`: (name, version).
    pub(super) fn newest(
        &self,
        prefix: &str,
        suffix: &str,
        suites: &[&str],
    ) -> Result<Option<(String, String)>> {
        let names: Vec<String> = output(self.cmd("apt-cache").args(["pkgnames", prefix]))?
            .lines()
            .filter(|n| {
                n.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix(suffix))
                    .is_some_and(generic_abi)
            })
            .map(String::from)
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        let mut best: Option<(String, String)> = None;
        for (name, version, suite) in self.madison(&names)? {
            if !suites.contains(&suite.as_str()) {
                continue;
            }
            let better = match &best {
                None => true,
                Some((bn, bv)) => match natural_cmp(&name, bn) {
                    Ordering::Greater => true,
                    Ordering::Equal => version_gt(&version, bv)?,
                    Ordering::Less => false,
                },
            };
            if better {
                best = Some((name, version));
            }
        }
        Ok(best)
    }

    /// (name, version, suite) of every version of `names` the lists know.
    pub(super) fn madison(&self, names: &[String]) -> Result<Vec<(String, String, String)>> {
        let out = output(self.cmd("apt-cache").arg("madison").args(names))?;
        Ok(out
            .lines()
            .filter_map(|l| {
                // "NAME | VERSION | URI SUITE/COMPONENT ARCH Packages"
                let mut f = l.split('|').map(str::trim);
                let (name, version, source) = (f.next()?, f.next()?, f.next()?);
                let suite = source.split_whitespace().nth(1)?.split('/').next()?;
                Some((name.into(), version.into(), suite.into()))
            })
            .collect())
    }
}

/// The Debian archive and security archive the system's apt sources point at.
fn archive_uris() -> Result<(String, String)> {
    let mut uris = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources"))
            .collect();
        files.sort();
        for f in files {
            for line in fs::read_to_string(&f).unwrap_or_default().lines() {
                if let Some(rest) = line.trim().strip_prefix("URIs:") {
                    uris.extend(rest.split_whitespace().map(String::from));
                }
            }
        }
    }
    // One-line format: deb [options] URI SUITE COMPONENT...
    for line in fs::read_to_string("/etc/apt/sources.list")
        .unwrap_or_default()
        .lines()
    {
        let mut w = line.split_whitespace().peekable();
        if w.next() != Some("deb") {
            continue;
        }
        if w.peek().is_some_and(|t| t.starts_with('[')) {
            for t in w.by_ref() {
                if t.ends_with(']') {
                    break;
                }
            }
        }
        uris.extend(w.next().map(String::from));
    }
    let uris: Vec<String> = uris
        .into_iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    let main = uris
        .iter()
        .find(|u| u.ends_with("/debian"))
        .context("the apt sources name no Debian archive (a URI ending in /debian)")?
        .clone();
    let security = uris
        .iter()
        .find(|u| u.ends_with("/debian-security"))
        .cloned()
        .unwrap_or_else(|| format!("{main}-security"));
    Ok((main, security))
}

/// `abi` (what follows `linux-image-6.1.`, before `-amd64...`) names the generic flavour:
/// `0-56`, `117+deb13`; the other flavours append `-cloud`, `-rt`.
fn generic_abi(abi: &str) -> bool {
    abi.split('-')
        .all(|p| p.starts_with(|c: char| c.is_ascii_digit()))
}

/// Orders names like `sort -V`: digit runs compare as numbers.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let strip = |d: &[u8]| -> Vec<u8> {
                    let z = d.iter().take_while(|&&c| c == b'0').count();
                    d[z..].to_vec()
                };
                let (da, db) = (strip(&a[..na]), strip(&b[..nb]));
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(&db));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[na..], &b[nb..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn version_gt(a: &str, b: &str) -> Result<bool> {
    Ok(Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .context("running dpkg --compare-versions")?
        .success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_generic_flavour() {
        assert!(generic_abi("0-56"));
        assert!(generic_abi("117+deb13"));
        assert!(generic_abi("13+deb14"));
        assert!(!generic_abi("0-56-cloud"));
        assert!(!generic_abi("117+deb13-rt"));
    }

    #[test]
    fn orders_like_sort_v() {
        assert_eq!(
            natural_cmp("linux-image-6.12.9+deb13", "linux-image-6.12.117+deb13"),
            Ordering::Less
        );
        assert_eq!(
            natural_cmp("linux-image-6.12.115+deb13.1", "linux-image-6.12.115+deb13"),
            Ordering::Greater
        );
        assert_eq!(natural_cmp("6.1.0-56", "6.1.0-56"), Ordering::Equal);
    }
}
