//! Unit tests of the private files: links, FIFOs, hard links and foreign files refused.

use std::os::unix::fs::{symlink, PermissionsExt as _};

use super::*;

/// A scratch directory, removed with everything in it.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        Self(
            PrivateDir::fresh(&std::env::temp_dir(), "ctt-unit-")
                .unwrap()
                .path
                .clone(),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn root() -> bool {
    euid() == 0
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn makes_nested_private_directories_and_reopens_them() {
    let s = Scratch::new();
    let d = PrivateDir::under(&s.0, &["a", "b"]).unwrap();
    assert_eq!(d.path(), s.0.join("a/b"));
    assert_eq!(mode(&s.0.join("a")), 0o700);
    assert_eq!(mode(&s.0.join("a/b")), 0o700);
    d.write("x", b"1").unwrap();
    let again = PrivateDir::under(&s.0, &["a", "b"]).unwrap();
    assert_eq!(again.read("x").unwrap(), "1");
    assert_eq!(again.names().unwrap(), ["x"]);
}

#[test]
fn refuses_a_link_an_open_directory_or_a_file_in_place_of_its_directory() {
    let s = Scratch::new();
    std::fs::create_dir(s.0.join("elsewhere")).unwrap();
    symlink(s.0.join("elsewhere"), s.0.join("link")).unwrap();
    let e = PrivateDir::under(&s.0, &["link"]).unwrap_err().to_string();
    assert!(e.ends_with("link is a symbolic link"), "{e}");
    std::fs::create_dir(s.0.join("open")).unwrap();
    std::fs::set_permissions(s.0.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = PrivateDir::under(&s.0, &["open"]).unwrap_err().to_string();
    assert!(e.contains("is open to other users (mode 777"), "{e}");
    std::fs::write(s.0.join("file"), "").unwrap();
    let e = PrivateDir::under(&s.0, &["file"]).unwrap_err().to_string();
    assert!(e.ends_with("file is a file"), "{e}");
    if root() {
        std::fs::create_dir(s.0.join("theirs")).unwrap();
        std::os::unix::fs::chown(s.0.join("theirs"), Some(65534), Some(65534)).unwrap();
        let e = PrivateDir::under(&s.0, &["theirs"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to uid 65534"), "{e}");
    }
}

#[test]
fn creates_files_exclusively_without_following_links() {
    let s = Scratch::new();
    let d = PrivateDir::under(&s.0, &["d"]).unwrap();
    d.write("a", b"first").unwrap();
    assert_eq!(mode(&d.join("a")), 0o600);
    assert!(d.write("a", b"second").is_err());
    assert_eq!(d.read("a").unwrap(), "first");
    std::fs::write(s.0.join("victim"), "victim").unwrap();
    symlink(s.0.join("victim"), d.join("l")).unwrap();
    assert!(d.write("l", b"x").is_err());
    assert!(d.read("l").is_err(), "a link is not read through");
    assert!(!d.holds("l"));
    assert_eq!(
        std::fs::read_to_string(s.0.join("victim")).unwrap(),
        "victim"
    );
    assert!(d.write("../escape", b"x").is_err());
    d.replace("a", b"third").unwrap();
    d.replace("a", b"fourth").unwrap();
    assert_eq!(d.read("a").unwrap(), "fourth");
    assert_eq!(mode(&d.join("a")), 0o600);
    let mut names = d.names().unwrap();
    names.sort();
    assert_eq!(names, ["a", "l"]);
    d.remove("l").unwrap();
    assert!(s.0.join("victim").exists());
}

#[test]
fn a_ready_file_must_not_exist_and_is_removed_when_dropped() {
    let s = Scratch::new();
    let p = s.0.join("ready");
    let mut r = ReadyFile::check(&p).unwrap();
    assert!(!p.exists(), "checking creates nothing");
    r.create("42\n").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "42\n");
    assert_eq!(mode(&p), 0o600);
    let e = ReadyFile::check(&p).unwrap_err().to_string();
    assert!(e.contains("already exists (a file)"), "{e}");
    drop(r);
    assert!(!p.exists());
    // A dangling link counts: creating through it would make its target.
    symlink(s.0.join("nowhere"), &p).unwrap();
    let e = ReadyFile::check(&p).unwrap_err().to_string();
    assert!(e.contains("already exists (a symbolic link)"), "{e}");
    std::fs::remove_file(&p).unwrap();
    // Planted between the check and the attach: refused, and left alone at the end.
    let mut r = ReadyFile::check(&p).unwrap();
    symlink(s.0.join("nowhere"), &p).unwrap();
    let e = r.create("1").unwrap_err().to_string();
    assert!(e.contains("appeared before ct-trace had attached"), "{e}");
    drop(r);
    assert!(p.symlink_metadata().is_ok());
    assert!(!s.0.join("nowhere").exists());
    let e = ReadyFile::check(&s.0.join("missing/ready")).unwrap_err();
    assert!(
        format!("{:#}", anyhow::Error::from(e)).starts_with(&format!(
            "opening the directory of {}/missing/ready: No such file",
            s.0.display()
        ))
    );
}

#[test]
fn a_ready_file_replaced_by_another_is_not_removed() {
    let s = Scratch::new();
    let p = s.0.join("ready");
    let mut r = ReadyFile::check(&p).unwrap();
    r.create("1").unwrap();
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, "someone else's").unwrap();
    drop(r);
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "someone else's");
}

#[test]
fn an_own_file_refuses_links_fifos_hard_links_and_other_users_files() {
    let s = Scratch::new();
    let victim = s.0.join("victim");
    std::fs::write(&victim, "victim").unwrap();
    let p = s.0.join("out");
    let f = create_own(&p).unwrap();
    drop(f);
    assert_eq!(mode(&p), 0o600);
    std::fs::write(&p, "old").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut f = create_own(&p).unwrap();
    f.write_all(b"new").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "new", "truncated");
    assert_eq!(mode(&p), 0o640, "an existing file keeps its mode");

    symlink(&victim, s.0.join("link")).unwrap();
    let e = create_own(&s.0.join("link")).unwrap_err().to_string();
    assert!(e.contains("link is a symbolic link"), "{e}");
    symlink(s.0.join("nowhere"), s.0.join("dangling")).unwrap();
    assert!(create_own(&s.0.join("dangling")).is_err());
    assert!(!s.0.join("nowhere").exists());
    std::fs::hard_link(&victim, s.0.join("hard")).unwrap();
    let e = create_own(&s.0.join("hard")).unwrap_err().to_string();
    assert!(e.contains("has other hard links"), "{e}");
    let fifo = c_path(&s.0.join("fifo")).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let e = create_own(&s.0.join("fifo")).unwrap_err().to_string();
    assert!(e.contains("fifo is not a regular file"), "{e}");
    let e = create_own(&s.0).unwrap_err().to_string();
    assert!(e.ends_with("is a directory"), "{e}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
    if root() {
        let theirs = s.0.join("theirs");
        std::fs::write(&theirs, "theirs").unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = create_own(&theirs).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 65534"), "{e}");
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "theirs");
    }
}
