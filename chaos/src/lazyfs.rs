//! A power-cut file system, after Jepsen's LazyFS: a FUSE mount over a backing directory that
//! keeps every write in memory until the file is fsynced, and drops whatever is not synced when
//! told the power went out.
//!
//! Why: killing a process leaves its writes in the kernel's page cache, where they survive, so
//! a kill can never show that a node acknowledged something it had not made durable. Over this
//! file system it can: `chaos` SIGKILLs the node and then cuts, and the node restarts on exactly
//! what it fsynced.
//!
//! The model, and its limits:
//! - File data is the lazy part. A write lands in a per-file list of extents; reads see the
//!   backing file with the extents laid over it; `fsync`/`fdatasync` writes the extents to the
//!   backing file and fsyncs it. A cut forgets every extent of every file.
//! - Metadata is not lazy: create, mkdir, rename, unlink and truncate go straight to the backing
//!   directory, as if every directory were fsynced at once. So a cut loses unsynced data, never a
//!   rename (LazyFS's default is the same).
//! - Files are opened with `direct_io`, so the kernel caches nothing of them and every read comes
//!   here; `O_APPEND` is applied here, since without the writeback cache the kernel leaves it to
//!   the file system.
//! - `statfs` reports a nominal 1 TiB free (no statvfs without `unsafe`); the disk-full fault
//!   uses a tmpfs, not this.
//! - One thread serves every request; the chaos workload is a few hundred writes a second.
//!
//! `chaos lazyfs --backing B --mount M` mounts it (root: the mount syscall, no libfuse), prints
//! `mounted`, then reads commands on standard input: `cut` drops unsynced data and answers
//! `cut BYTES`; end of input unmounts.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Unsynced bytes one file may hold before they are written back anyway (as the kernel's
/// writeback would), so a file never fsynced cannot grow memory without bound.
const DIRTY_MAX: usize = 64 << 20;
/// Attributes and entries are never cached by the kernel: sizes change under it.
const TTL: Duration = Duration::ZERO;
/// A file handle that marks a file opened with `O_APPEND`.
const FH_APPEND: u64 = 1;

/// What is shared between the request thread and the controller.
#[derive(Default)]
pub struct State {
    /// Inode → path relative to the backing directory (the root is the empty path).
    paths: BTreeMap<u64, PathBuf>,
    inos: BTreeMap<PathBuf, u64>,
    next: u64,
    /// Inode → writes not yet synced, in the order they were made.
    dirty: BTreeMap<u64, Vec<(u64, Vec<u8>)>>,
}

impl State {
    fn ino(&mut self, rel: &Path) -> u64 {
        if let Some(i) = self.inos.get(rel) {
            return *i;
        }
        self.next += 1;
        let i = self.next;
        self.paths.insert(i, rel.to_path_buf());
        self.inos.insert(rel.to_path_buf(), i);
        i
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(i) = self.inos.remove(rel) {
            self.paths.remove(&i);
            self.dirty.remove(&i);
        }
    }

    /// Bytes written and not synced, over every file.
    pub fn unsynced(&self) -> u64 {
        self.dirty.values().flatten().map(|(_, d)| d.len() as u64).sum()
    }

    /// The power cut: every unsynced write is gone. Returns how many bytes were dropped.
    pub fn cut(&mut self) -> u64 {
        let dropped = self.unsynced();
        self.dirty.clear();
        dropped
    }
}

/// The file system over `backing`.
pub struct LazyFs {
    backing: PathBuf,
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    /// A file system over `backing`, and the handle a controller cuts through.
    pub fn new(backing: PathBuf) -> (Self, Arc<Mutex<State>>) {
        let mut st = State { next: 1, ..State::default() };
        st.paths.insert(INodeNo::ROOT.0, PathBuf::new());
        st.inos.insert(PathBuf::new(), INodeNo::ROOT.0);
        let state = Arc::new(Mutex::new(st));
        (Self { backing, state: state.clone() }, state)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn full(&self, st: &State, ino: INodeNo) -> Result<(PathBuf, PathBuf), Errno> {
        let rel = st.paths.get(&ino.0).ok_or(Errno::ENOENT)?;
        Ok((rel.clone(), self.backing.join(rel)))
    }

    fn child(&self, st: &State, parent: INodeNo, name: &OsStr) -> Result<(PathBuf, PathBuf), Errno> {
        let (rel, _) = self.full(st, parent)?;
        let rel = rel.join(name);
        let full = self.backing.join(&rel);
        Ok((rel, full))
    }

    fn attr(&self, st: &State, ino: u64, full: &Path) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(full).map_err(Errno::from)?;
        let kind = if m.is_dir() {
            FileType::Directory
        } else if m.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = logical_size(m.len(), st.dirty.get(&ino));
        let time = |s: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0));
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime()),
            mtime: time(m.mtime()),
            ctime: time(m.ctime()),
            crtime: time(m.ctime()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: u32::try_from(m.nlink()).unwrap_or(u32::MAX),
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    fn entry(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let mut st = self.lock();
        let (rel, full) = self.child(&st, parent, name)?;
        std::fs::symlink_metadata(&full).map_err(Errno::from)?;
        let ino = st.ino(&rel);
        self.attr(&st, ino, &full)
    }

    /// Unlink or rmdir: at once in the backing directory; the entry's unsynced data goes too.
    fn remove(&self, parent: INodeNo, name: &OsStr, reply: ReplyEmpty, how: impl FnOnce(&Path) -> std::io::Result<()>) {
        let mut st = self.lock();
        let result = self.child(&st, parent, name).and_then(|(rel, full)| {
            how(&full).map_err(Errno::from)?;
            st.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Writes a file's extents to its backing file and fsyncs it.
    fn sync(&self, st: &mut State, ino: u64) -> Result<(), Errno> {
        let (_, full) = self.full(st, INodeNo(ino))?;
        let f = std::fs::OpenOptions::new().write(true).open(&full).map_err(Errno::from)?;
        for (off, data) in st.dirty.get(&ino).map(Vec::as_slice).unwrap_or_default() {
            f.write_all_at(data, *off).map_err(Errno::from)?;
        }
        f.sync_data().map_err(Errno::from)?;
        st.dirty.remove(&ino);
        Ok(())
    }

    fn read_logical(&self, st: &State, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let (_, full) = self.full(st, INodeNo(ino))?;
        let f = std::fs::File::open(&full).map_err(Errno::from)?;
        let backing_len = f.metadata().map_err(Errno::from)?.len();
        let dirty = st.dirty.get(&ino);
        let end = logical_size(backing_len, dirty).min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let from_backing = backing_len.min(end).saturating_sub(offset) as usize;
        if from_backing > 0 {
            f.read_exact_at(&mut buf[..from_backing], offset).map_err(Errno::from)?;
        }
        // Later writes win: lay the extents over in the order they were made.
        for (off, data) in dirty.map(Vec::as_slice).unwrap_or_default() {
            let (lo, hi) = ((*off).max(offset), (off + data.len() as u64).min(end));
            if lo < hi {
                let src = &data[(lo - off) as usize..(hi - off) as usize];
                buf[(lo - offset) as usize..(hi - offset) as usize].copy_from_slice(src);
            }
        }
        Ok(buf)
    }
}

fn logical_size(backing: u64, dirty: Option<&Vec<(u64, Vec<u8>)>>) -> u64 {
    dirty.into_iter().flatten().map(|(o, d)| o + d.len() as u64).fold(backing, u64::max)
}

fn direct() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO
}

fn append_fh(flags: i32) -> FileHandle {
    FileHandle(if flags & libc::O_APPEND != 0 { FH_APPEND } else { 0 })
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.entry(parent, name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.lock();
        match self.full(&st, ino).and_then(|(_, full)| self.attr(&st, ino.0, &full)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.lock();
        let result = (|| {
            let (_, full) = self.full(&st, ino)?;
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).map_err(Errno::from)?;
            }
            if let Some(size) = size {
                // A truncate is metadata: it reaches the backing file at once; unsynced data
                // beyond the new end is gone, as it would be from the page cache.
                let f = std::fs::OpenOptions::new().write(true).open(&full).map_err(Errno::from)?;
                f.set_len(size).map_err(Errno::from)?;
                if let Some(extents) = st.dirty.get_mut(&ino.0) {
                    extents.retain_mut(|(off, data)| {
                        data.truncate(size.saturating_sub(*off).min(data.len() as u64) as usize);
                        !data.is_empty()
                    });
                }
            }
            self.attr(&st, ino.0, &full)
        })();
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let made = {
            let st = self.lock();
            self.child(&st, parent, name).and_then(|(_, full)| std::fs::create_dir(full).map_err(Errno::from))
        };
        match made.and_then(|()| self.entry(parent, name)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_dir(p));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        let result = (|| {
            let (from_rel, from) = self.child(&st, parent, name)?;
            let (to_rel, to) = self.child(&st, newparent, newname)?;
            std::fs::rename(&from, &to).map_err(Errno::from)?;
            // Whatever the target was is gone, unsynced data and all.
            st.forget_path(&to_rel);
            let moved: Vec<(PathBuf, u64)> =
                st.inos.iter().filter(|(p, _)| p.starts_with(&from_rel)).map(|(p, i)| (p.clone(), *i)).collect();
            for (old, i) in moved {
                // `join("")` would add a trailing slash, which names a directory.
                let rest = old.strip_prefix(&from_rel).unwrap_or(Path::new(""));
                let new = if rest.as_os_str().is_empty() { to_rel.clone() } else { to_rel.join(rest) };
                st.inos.remove(&old);
                st.inos.insert(new.clone(), i);
                st.paths.insert(i, new);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let st = self.lock();
        match self.full(&st, ino) {
            Ok(_) => reply.opened(append_fh(flags.0), direct()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made = {
            let mut st = self.lock();
            self.child(&st, parent, name).and_then(|(rel, full)| {
                use std::os::unix::fs::OpenOptionsExt;
                let truncate = flags & libc::O_TRUNC != 0;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(truncate)
                    .mode(mode)
                    .open(&full)
                    .map_err(Errno::from)?;
                let ino = st.ino(&rel);
                if truncate {
                    st.dirty.remove(&ino);
                }
                Ok(())
            })
        };
        match made.and_then(|()| self.entry(parent, name)) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), append_fh(flags), direct()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.lock();
        match self.read_logical(&st, ino.0, offset, size) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.lock();
        let result = (|| {
            let (_, full) = self.full(&st, ino)?;
            let offset = if fh.0 == FH_APPEND {
                let backing = std::fs::metadata(&full).map_err(Errno::from)?.len();
                logical_size(backing, st.dirty.get(&ino.0))
            } else {
                offset
            };
            let extents = st.dirty.entry(ino.0).or_default();
            extents.push((offset, data.to_vec()));
            if extents.iter().map(|(_, d)| d.len()).sum::<usize>() > DIRTY_MAX {
                self.sync(&mut st, ino.0)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = self.lock();
        match self.sync(&mut st, ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut st = self.lock();
        let listed = self.full(&st, ino).and_then(|(rel, full)| {
            let mut names: Vec<(String, FileType)> = Vec::new();
            for e in std::fs::read_dir(full).map_err(Errno::from)? {
                let e = e.map_err(Errno::from)?;
                let kind = match e.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                names.push((e.file_name().to_string_lossy().into_owned(), kind));
            }
            names.sort_by(|a, b| a.0.cmp(&b.0));
            Ok((rel, names))
        });
        let (rel, names) = match listed {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let mut all = vec![(ino.0, FileType::Directory, ".".to_string()), (ino.0, FileType::Directory, "..".into())];
        for (n, kind) in names {
            let i = st.ino(&rel.join(&n));
            all.push((i, kind, n));
        }
        for (k, (i, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), k as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Metadata reaches the backing directory at once (see the module's notes).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = (1u64 << 40) / 4096;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// Mounts a [`LazyFs`] over `backing` at `mount` on a thread of its own.
pub fn mount(backing: &Path, mount: &Path) -> std::io::Result<(fuser::BackgroundSession, Arc<Mutex<State>>)> {
    std::fs::create_dir_all(backing)?;
    std::fs::create_dir_all(mount)?;
    let (fs, state) = LazyFs::new(backing.to_path_buf());
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("chaos-lazyfs".into()), MountOption::Subtype("lazyfs".into())];
    let session = fuser::spawn_mount(fs, mount, &config)?;
    Ok((session, state))
}

/// `chaos lazyfs`: mounts, says `mounted`, and serves `cut` on standard input until it closes.
pub fn serve(backing: &Path, mount_at: &Path) -> anyhow::Result<()> {
    let (session, state) = mount(backing, mount_at)
        .map_err(|e| anyhow::anyhow!("cannot mount the power-cut file system at {}: {e}", mount_at.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "mounted")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match line.trim() {
            "cut" => writeln!(out, "cut {}", st.cut())?,
            "unsynced" => writeln!(out, "unsynced {}", st.unsynced())?,
            other => writeln!(out, "unknown command {other:?}")?,
        }
        out.flush()?;
    }
    session.umount_and_join()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn can_mount() -> bool {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        root && Path::new("/dev/fuse").exists()
    }

    #[test]
    fn a_cut_drops_exactly_what_was_not_fsynced() {
        if !can_mount() {
            eprintln!("skipped: mounting FUSE needs root and /dev/fuse");
            return;
        }
        let dir = std::env::temp_dir().join(format!("lazyfs-test-{}", std::process::id()));
        let (backing, at) = (dir.join("backing"), dir.join("mnt"));
        let (session, state) = mount(&backing, &at).expect("mount");
        let run = || -> std::io::Result<()> {
            use std::io::Read;
            std::fs::create_dir(at.join("wal"))?;
            let path = at.join("wal").join("seg");
            let mut f = std::fs::OpenOptions::new().create(true).append(true).read(true).open(&path)?;
            f.write_all(b"synced.")?;
            f.sync_data()?;
            f.write_all(b"lost")?;
            // Reads see unsynced data before the cut, as from a page cache.
            let mut s = String::new();
            std::fs::File::open(&path)?.read_to_string(&mut s)?;
            assert_eq!(s, "synced.lost");
            // A file made durable by write-fsync-rename (as snapshots are) survives whole.
            let tmp = at.join("snap.tmp");
            let mut t = std::fs::File::create(&tmp)?;
            t.write_all(b"snapshot")?;
            t.sync_all()?;
            std::fs::rename(&tmp, at.join("snap"))?;
            // A removed file takes its unsynced data with it (old log segments are deleted).
            std::fs::write(at.join("gone"), b"old")?;
            std::fs::remove_file(at.join("gone"))?;
            assert!(!backing.join("gone").exists());
            let dropped = state.lock().unwrap().cut();
            assert_eq!(dropped, 4);
            drop(f);
            assert_eq!(std::fs::read_to_string(&path)?, "synced.");
            assert_eq!(std::fs::read_to_string(at.join("snap"))?, "snapshot");
            // Appends after the cut go to the end of what survived.
            let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
            f.write_all(b"again")?;
            f.sync_data()?;
            assert_eq!(std::fs::read_to_string(backing.join("wal").join("seg"))?, "synced.again");
            Ok(())
        };
        let result = run();
        let _ = session.umount_and_join();
        let _ = std::fs::remove_dir_all(&dir);
        result.expect("file operations on the mount");
    }
}
