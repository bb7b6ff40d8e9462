//! The disk, injected: the operating system's files in production, turmoil's simulated disk in
//! the simulator (which loses unsynced writes when a host crashes).
//!
//! Only what the stores need is here: append, positional reads, fsync, truncate, atomic file
//! replacement and directory listing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One open file. All methods take `&self` so a file can be appended by one task while others
/// read it by position.
pub trait VFile: Send + Sync {
    /// Appends `bytes` at the end of the file.
    fn append(&self, bytes: &[u8]) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes every write so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Shortens the file to `len` bytes.
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// A file system.
pub trait Vfs: Send + Sync + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Opens a file for appending and reading, creating it if missing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn VFile>>;
    /// Reads a whole file; `NotFound` if it does not exist.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Replaces `path` with `bytes` atomically and durably: a crash leaves the old or the new
    /// content, never a mix (write a temp file, fsync, rename, fsync the directory).
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Renames a file and makes the rename durable.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; a missing file is not an error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// File names in a directory, sorted; empty if the directory does not exist.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the creation or removal of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Reads a file's first `len` bytes in order (buffer it: each read is a `read_at`).
pub(crate) struct VFileReader<'a> {
    file: &'a dyn VFile,
    at: u64,
    len: u64,
}

impl<'a> VFileReader<'a> {
    pub(crate) fn new(file: &'a dyn VFile, len: u64) -> Self {
        Self { file, at: 0, len }
    }
}

impl io::Read for VFileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len - self.at).min(buf.len() as u64) as usize;
        self.file.read_at(self.at, &mut buf[..n])?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

struct StdFile(std::fs::File);

impl VFile for StdFile {
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        // Opened with O_APPEND: every write lands at the current end.
        (&self.0).write_all(bytes)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.read_exact_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.sync_all()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

impl Vfs for StdFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        let file = std::fs::OpenOptions::new().read(true).append(true).create(true).open(path)?;
        Ok(Arc::new(StdFile(file)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = tmp_path(path);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        self.sync_dir(parent(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)?;
        self.sync_dir(parent(to))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for e in entries {
                    names.push(e?.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// turmoil's simulated disk: writes are lost on a simulated crash unless synced.
#[cfg(feature = "turmoil")]
pub mod sim {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use turmoil::fs::shim::std::fs as tfs;

    use super::{VFile, Vfs, parent, tmp_path};

    /// The current turmoil host's disk. Must be used from inside the host's tasks.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TurmoilFs;

    struct TurmoilFile(Mutex<tfs::File>);

    impl VFile for TurmoilFile {
        fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
            let mut f = self.0.lock().expect("file lock");
            f.seek(SeekFrom::End(0))?;
            f.write_all(bytes)
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let mut f = self.0.lock().expect("file lock");
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(buf)
        }

        fn sync(&self) -> std::io::Result<()> {
            self.0.lock().expect("file lock").sync_data()
        }

        fn truncate(&self, len: u64) -> std::io::Result<()> {
            let f = self.0.lock().expect("file lock");
            f.set_len(len)?;
            f.sync_all()
        }

        fn size(&self) -> std::io::Result<u64> {
            let mut f = self.0.lock().expect("file lock");
            f.seek(SeekFrom::End(0))
        }
    }

    impl Vfs for TurmoilFs {
        fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
            tfs::create_dir_all(path)
        }

        fn open(&self, path: &Path) -> std::io::Result<Arc<dyn VFile>> {
            let f = tfs::OpenOptions::new().read(true).write(true).create(true).open(path)?;
            Ok(Arc::new(TurmoilFile(Mutex::new(f))))
        }

        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            tfs::read(path)
        }

        fn write_atomic(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
            let tmp = tmp_path(path);
            let mut f = tfs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            tfs::rename(&tmp, path)?;
            tfs::sync_dir(parent(path))
        }

        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            tfs::rename(from, to)?;
            tfs::sync_dir(parent(to))
        }

        fn remove(&self, path: &Path) -> std::io::Result<()> {
            match tfs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }

        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            let mut names = Vec::new();
            match tfs::read_dir(dir) {
                Ok(entries) => {
                    for e in entries {
                        names.push(e?.file_name().to_string_lossy().into_owned());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            names.sort();
            Ok(names)
        }

        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            tfs::sync_dir(dir)
        }
    }
}
