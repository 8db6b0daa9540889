//! Files ct-trace creates where other users could reach them. ct-trace runs as root: a file it
//! wrote at a name others can guess, in a directory others can write to (`/tmp`), could be a
//! link they planted to one of root's files, or a file of theirs standing in for ct-trace's.
//!
//! So what ct-trace makes for itself lives in a [`PrivateDir`]: a directory it made, checked on
//! every open to be a real directory (not a link) of its own user that nobody else can enter,
//! whose files it creates exclusively (never an existing file, never through a link), mode 0600.
//! The files the user names keep their ordinary meaning, with the same care: [`ReadyFile`]
//! (`--ready-file`) and [`create_own`] (`--pcap`); and the ready files of the children it runs
//! ([`ReadyAt`]).
//!
//! Where: `/run/ct-trace/` (root's, 0700) holds `lab/` (the lab's ready files and saved
//! sysctls) and `verifier/` (verifier logs); see [`PrivateDir::in_run`].
//!
//! This module imports nothing of the crate: the kernel layer (verifier logs), the lab and the
//! app all use it.

use std::{
    ffi::{CStr, CString, OsString},
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::{OsStrExt as _, OsStringExt as _},
            fs::MetadataExt as _,
        },
    },
    path::{Path, PathBuf},
};

/// The most ct-trace reads of a file of its own (they hold a few lines).
const READ_MAX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A system call on `path` failed (`what` says which, as "opening", "creating"...).
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `path` is not something ct-trace may use (`why` continues the sentence).
    #[error("{} {why}", path.display())]
    Refused { path: PathBuf, why: String },
}

impl FileError {
    /// The error with its cause, for messages that do not print the chain.
    pub fn one_line(&self) -> String {
        match self {
            Self::Io { source, .. } => format!("{self}: {source}"),
            Self::Refused { .. } => self.to_string(),
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError::Io { what, path, source }
}

fn refused(path: &Path, why: impl Into<String>) -> FileError {
    FileError::Refused {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn c_path(path: &Path) -> Result<CString, FileError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| refused(path, "contains a NUL byte"))
}

/// `name` as one plain component of a directory (no `/`, not `.` or `..`).
fn c_name(name: &[u8], path: &Path) -> Result<CString, FileError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(refused(path, "does not end in a file name"));
    }
    CString::new(name).map_err(|_| refused(path, "contains a NUL byte"))
}

fn last_error<T>(ret: i32, ok: T) -> io::Result<T> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ok)
    }
}

fn open(path: &CStr, flags: i32, mode: libc::mode_t) -> io::Result<File> {
    // SAFETY: a valid C string; the fd returned is owned by the File.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    // SAFETY: a fresh fd nobody else owns.
    last_error(fd, ()).map(|()| unsafe { File::from(OwnedFd::from_raw_fd(fd)) })
}

fn open_at(dir: &File, name: &CStr, flags: i32, mode: libc::mode_t) -> io::Result<File> {
    // SAFETY: a valid directory fd and C string; the fd returned is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    // SAFETY: a fresh fd nobody else owns.
    last_error(fd, ()).map(|()| unsafe { File::from(OwnedFd::from_raw_fd(fd)) })
}

/// What is at `name` in `dir`, without following a link; None when nothing is.
fn lstat_at(dir: &File, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: zeroed is a valid `stat`; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory fd, C string and out pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match last_error(r, st) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn unlink_at(dir: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: a valid directory fd and C string.
    last_error(
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) },
        (),
    )
}

/// What an existing entry is, for the error that refuses it.
fn describe(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFLNK => "is a symbolic link",
        libc::S_IFDIR => "is a directory",
        libc::S_IFREG => "is a file",
        _ => "is not a regular file",
    }
}

/// Refuses what ct-trace must not use as its own directory.
fn checked_dir(dir: File, path: &Path) -> Result<File, FileError> {
    let m = dir.metadata().map_err(io_err("reading", path))?;
    if !m.is_dir() {
        return Err(refused(path, describe(m.mode())));
    }
    if m.uid() != euid() {
        return Err(refused(
            path,
            format!(
                "belongs to uid {}, not to ct-trace's user (uid {}): remove it",
                m.uid(),
                euid()
            ),
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(refused(
            path,
            format!(
                "is open to other users (mode {:o}; ct-trace makes it 0700): remove it",
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// A directory only ct-trace's user can use, and the files ct-trace keeps in it.
#[derive(Debug)]
pub struct PrivateDir {
    dir: File,
    path: PathBuf,
}

impl PrivateDir {
    /// `anchor/names...`: each of `names` is made (0700) where missing and checked (a directory,
    /// not a link, ct-trace's user's, closed to others). `anchor` is a system directory others
    /// cannot write to (`/run`).
    pub fn under(anchor: &Path, names: &[&str]) -> Result<Self, FileError> {
        let mut path = anchor.to_path_buf();
        let mut dir = open(&c_path(anchor)?, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(io_err("opening", anchor))?;
        for name in names {
            path.push(name);
            let c = c_name(name.as_bytes(), &path)?;
            // SAFETY: a valid directory fd and C string.
            let made = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) };
            if let Err(e) = last_error(made, ()) {
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(io_err("creating", &path)(e));
                }
            }
            dir = Self::open_dir_at(&dir, &c, &path)?;
        }
        Ok(Self { dir, path })
    }

    /// `/run/ct-trace/NAME`: ct-trace's own place on the node (`/run` is root's and emptied at
    /// boot).
    pub fn in_run(name: &str) -> Result<Self, FileError> {
        Self::under(Path::new("/run"), &["ct-trace", name])
    }

    /// A new directory with a random name (`prefix` and six characters) in `parent`, for when
    /// no fixed place can be had; it stays when ct-trace ends.
    pub fn fresh(parent: &Path, prefix: &str) -> Result<Self, FileError> {
        let template = parent.join(format!("{prefix}XXXXXX"));
        let mut buf = c_path(&template)?.into_bytes_with_nul();
        // SAFETY: a NUL-terminated buffer mkdtemp may rewrite in place.
        if unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) }.is_null() {
            return Err(io_err("creating a directory in", parent)(
                io::Error::last_os_error(),
            ));
        }
        buf.pop();
        let path = PathBuf::from(OsString::from_vec(buf));
        let dir = open(
            &c_path(&path)?,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(io_err("opening", &path))?;
        Ok(Self {
            dir: checked_dir(dir, &path)?,
            path,
        })
    }

    fn open_dir_at(parent: &File, name: &CStr, path: &Path) -> Result<File, FileError> {
        match open_at(
            parent,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(d) => checked_dir(d, path),
            // A link (ELOOP) or not a directory (ENOTDIR): say which.
            Err(e) => match lstat_at(parent, name) {
                Ok(Some(st)) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
                    Err(refused(path, describe(st.st_mode)))
                }
                _ => Err(io_err("opening", path)(e)),
            },
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in it, to hand to a child process.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn name(&self, name: &str) -> Result<(CString, PathBuf), FileError> {
        let path = self.join(name);
        Ok((c_name(name.as_bytes(), &path)?, path))
    }

    /// Creates `name`, which must not exist yet, mode 0600, for writing.
    pub fn create(&self, name: &str) -> Result<File, FileError> {
        let (c, path) = self.name(name)?;
        open_at(
            &self.dir,
            &c,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
        .map_err(io_err("creating", &path))
    }

    /// Creates `name` (see [`Self::create`]) holding `data`.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), FileError> {
        let mut f = self.create(name)?;
        f.write_all(data).map_err(|e| {
            let _ = self.remove(name);
            io_err("writing", &self.join(name))(e)
        })
    }

    /// Puts `data` at `name` at once, replacing what was there: written to a new file of this
    /// process first, then renamed over it.
    pub fn replace(&self, name: &str, data: &[u8]) -> Result<(), FileError> {
        let (to, path) = self.name(name)?;
        let tmp = format!(".{name}.{}", std::process::id());
        let (from, _) = self.name(&tmp)?;
        // One left by an earlier process with this PID.
        let _ = unlink_at(&self.dir, &from);
        self.write(&tmp, data)?;
        let fd = self.dir.as_raw_fd();
        // SAFETY: a valid directory fd and C strings.
        let r = unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) };
        last_error(r, ()).map_err(|e| {
            let _ = unlink_at(&self.dir, &from);
            io_err("replacing", &path)(e)
        })
    }

    /// The text of `name`: a regular file of ct-trace's user, never read through a link.
    pub fn read(&self, name: &str) -> Result<String, FileError> {
        let (c, path) = self.name(name)?;
        let f = open_at(
            &self.dir,
            &c,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )
        .map_err(io_err("opening", &path))?;
        let m = f.metadata().map_err(io_err("reading", &path))?;
        if !m.is_file() || m.uid() != euid() {
            return Err(refused(&path, "is not a regular file of ct-trace's user"));
        }
        let mut s = String::new();
        f.take(READ_MAX)
            .read_to_string(&mut s)
            .map_err(io_err("reading", &path))?;
        Ok(s)
    }

    /// Whether `name` is a regular file of ct-trace's user.
    pub fn holds(&self, name: &str) -> bool {
        let Ok((c, _)) = self.name(name) else {
            return false;
        };
        matches!(lstat_at(&self.dir, &c), Ok(Some(st))
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == euid())
    }

    /// The names in it.
    pub fn names(&self) -> Result<Vec<String>, FileError> {
        // The directory this very fd refers to, even if its path now names another.
        let fd = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        Ok(std::fs::read_dir(fd)
            .map_err(io_err("listing", &self.path))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect())
    }

    /// Removes `name` (not following a link; a link is removed itself).
    pub fn remove(&self, name: &str) -> Result<(), FileError> {
        let (c, path) = self.name(name)?;
        unlink_at(&self.dir, &c).map_err(io_err("removing", &path))
    }
}

/// Where a child ct-trace is told to write its ready file: `name` in a private directory, for
/// the shared runner (`conntrack_common::harness::runner`) of the lab, the tests and top's
/// tracer. No other user can say the child is ready before it is, or make it write elsewhere.
pub struct ReadyAt {
    dir: PrivateDir,
    name: String,
    /// The directory was made for this one file ([`Self::fresh`]): removed with it.
    own_dir: bool,
}

impl ReadyAt {
    /// `name` in `dir`; one left there by an earlier child with the same name is removed.
    pub fn new(dir: PrivateDir, name: String) -> Self {
        let _ = dir.remove(&name);
        Self {
            dir,
            name,
            own_dir: false,
        }
    }

    /// `name` in a new directory of its own in `parent` ([`PrivateDir::fresh`]), removed
    /// with the file.
    pub fn fresh(parent: &Path, prefix: &str, name: &str) -> Result<Self, FileError> {
        Ok(Self {
            dir: PrivateDir::fresh(parent, prefix)?,
            name: name.to_string(),
            own_dir: true,
        })
    }
}

impl conntrack_common::harness::runner::Ready for ReadyAt {
    fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    fn exists(&self) -> bool {
        self.dir.holds(&self.name)
    }

    fn remove(&self) {
        let _ = self.dir.remove(&self.name);
    }
}

impl Drop for ReadyAt {
    fn drop(&mut self) {
        let _ = self.dir.remove(&self.name);
        if self.own_dir {
            let _ = std::fs::remove_dir(self.dir.path());
        }
    }
}

/// `--ready-file`: a file the user names, whose existence says ct-trace has attached. Checked
/// before anything is attached, created once ct-trace is, removed when it ends.
#[derive(Debug)]
pub struct ReadyFile {
    /// Its directory, held open: the file is made in the directory that was checked.
    dir: File,
    name: CString,
    path: PathBuf,
    /// The file once made, held open so that its inode number cannot be given to another
    /// file: only that file is removed at the end.
    made: Option<File>,
}

impl ReadyFile {
    /// Checks that `path` can be made: its directory exists and is writable, and nothing is at
    /// `path` yet (what is there would say ct-trace is ready before it is).
    pub fn check(path: &Path) -> Result<Self, FileError> {
        let name = path
            .file_name()
            .ok_or_else(|| refused(path, "does not end in a file name"))?;
        let name = c_name(name.as_bytes(), path)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = open(&c_path(parent)?, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(io_err("opening the directory of", path))?;
        // SAFETY: a valid directory fd and C string.
        let w = unsafe {
            libc::faccessat(
                dir.as_raw_fd(),
                c".".as_ptr(),
                libc::W_OK | libc::X_OK,
                libc::AT_EACCESS,
            )
        };
        last_error(w, ()).map_err(io_err("creating files in the directory of", path))?;
        match lstat_at(&dir, &name).map_err(io_err("looking at", path))? {
            None => Ok(Self {
                dir,
                name,
                path: path.to_path_buf(),
                made: None,
            }),
            Some(st) => Err(refused(
                path,
                format!(
                    "already exists ({}): ct-trace creates it once attached (its existence is the readiness signal); remove it first",
                    describe(st.st_mode).trim_start_matches("is ")
                ),
            )),
        }
    }

    /// Creates it with `contents`: exclusively, never through a link, mode 0600.
    pub fn create(&mut self, contents: &str) -> Result<(), FileError> {
        let mut f = open_at(
            &self.dir,
            &self.name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                refused(
                    &self.path,
                    "appeared before ct-trace had attached: something else created it",
                )
            } else {
                io_err("creating", &self.path)(e)
            }
        })?;
        let written = f
            .write_all(contents.as_bytes())
            .map_err(io_err("writing", &self.path));
        self.made = Some(f);
        written
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let Some(m) = self.made.as_ref().and_then(|f| f.metadata().ok()) else {
            return;
        };
        // Only the file ct-trace made: what another put at the name since is left alone.
        if let Ok(Some(st)) = lstat_at(&self.dir, &self.name) {
            if st.st_dev == m.dev() && st.st_ino == m.ino() {
                let _ = unlink_at(&self.dir, &self.name);
            }
        }
    }
}

/// Opens `path` for writing as the user named it: created (mode 0600) when missing, else
/// truncated, but never a symbolic link, anything but a regular file, another user's file, or a
/// file with other hard links (ct-trace would write where the user did not mean).
pub fn create_own(path: &Path) -> Result<File, FileError> {
    // O_NONBLOCK: opening a FIFO someone put there neither blocks nor succeeds without a reader.
    let f = open(
        &c_path(path)?,
        libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0o600,
    )
    .map_err(|e| {
        // Refused for what it is (ELOOP, or EACCES from some kernels, for a link; ENXIO for a
        // FIFO without a reader), whatever the kernel said.
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => refused(
                path,
                "is a symbolic link: ct-trace does not write through one",
            ),
            Ok(m) if !m.is_file() => refused(path, describe(m.mode())),
            _ => io_err("opening", path)(e),
        }
    })?;
    let m = f.metadata().map_err(io_err("reading", path))?;
    if !m.is_file() {
        return Err(refused(path, describe(m.mode())));
    }
    if m.uid() != euid() {
        return Err(refused(
            path,
            format!(
                "belongs to uid {}, not to ct-trace's user (uid {}): ct-trace does not write into it",
                m.uid(),
                euid()
            ),
        ));
    }
    if m.nlink() > 1 {
        return Err(refused(
            path,
            "has other hard links: ct-trace does not write into a file that is also elsewhere",
        ));
    }
    f.set_len(0).map_err(io_err("truncating", path))?;
    // Back to ordinary writes.
    // SAFETY: a valid fd; F_GETFL/F_SETFL only change its status flags.
    let r = unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK)
    };
    last_error(r, f).map_err(io_err("opening", path))
}

#[cfg(test)]
mod tests;
