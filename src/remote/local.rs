//! The embedded default remote: objects as files under a directory, through the same
//! [`ObjectStore`] trait (and conformance tests) as S3, so a library works with no
//! server at all.
//!
//! Invariants:
//! - An object file is complete whenever it is visible: `put` writes a temporary file in
//!   `<root>/.tmp/`, fsyncs it, renames it over the target and fsyncs the target's
//!   directory, so the object is durable when `put` returns.
//! - Keys pass [`validate_key`], so no key can name `.tmp` or leave `root`; `list` skips
//!   dot-entries (temporary files left by a crash are never listed and are removed by
//!   [`LocalDirStore::new`]).
//! - All file I/O runs on tokio's blocking pool.

use std::fs;
use std::io::{ErrorKind, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{short_range, validate_key, ObjectStore, RemoteError};

const TMP_DIR: &str = ".tmp";

/// An object store over a local directory.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// Opens (creating if needed) a directory remote at `root` and removes temporary
    /// files a crash may have left behind.
    pub fn new(root: impl Into<PathBuf>) -> Result<LocalDirStore, RemoteError> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| io_error(&root, "create", e))?;
        let entries = fs::read_dir(&tmp).map_err(|e| io_error(&tmp, "read", e))?;
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(LocalDirStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object `key` lives on disk (the key must already be valid).
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

/// Maps an I/O error: interruptions and timeouts may pass, everything else (missing
/// permissions, full disk, read-only file system) needs a person.
fn io_error(path: &Path, op: &str, e: std::io::Error) -> RemoteError {
    let msg = format!("local remote: cannot {op} {}: {e}", path.display());
    match e.kind() {
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            RemoteError::Transient(msg)
        }
        _ => RemoteError::Permanent(msg),
    }
}

fn sync_dir(dir: &Path) -> Result<(), RemoteError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "sync", e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, RemoteError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RemoteError::Permanent(format!("local remote: I/O task failed: {e}")))?
}

/// An object's bytes. Read past the page cache where the file system allows it (see
/// [`crate::direct`]): the object is decrypted into the chunk cache at once, so keeping
/// its ciphertext in memory as well would only crowd out what is worth keeping.
fn read_object(path: &Path) -> std::io::Result<Bytes> {
    match read_direct(path) {
        Ok(Some(data)) => Ok(data),
        Ok(None) => fs::read(path).map(Bytes::from),
        Err(e) => Err(e),
    }
}

/// The whole object read directly; `None` when that cannot be done or the file changed
/// length while read (objects never change: not an object as stored).
fn read_direct(path: &Path) -> std::io::Result<Option<Bytes>> {
    let Some(file) = crate::direct::open(path)? else {
        return Ok(None);
    };
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "object too large"))?;
    Ok(crate::direct::read_whole(&file, len)?
        .filter(|w| w.file_len == len)
        .map(|w| w.bytes))
}

fn put_blocking(root: &Path, key: &str, body: &[u8]) -> Result<(), RemoteError> {
    let target = root.join(key);
    let parent = target
        .parent()
        .ok_or_else(|| RemoteError::Permanent(format!("invalid object key {key:?}")))?
        .to_path_buf();
    fs::create_dir_all(&parent).map_err(|e| io_error(&parent, "create", e))?;
    let tmp = root
        .join(TMP_DIR)
        .join(format!("{}.part", super::new_object_id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        // Its pages are clean now: nothing reads an object back soon (a chunk is read from
        // the cache), so they leave the page cache to what is worth keeping there.
        // SAFETY: advice on a descriptor we own; no memory involved.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            );
        }
        fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(&target, "write", e));
    }
    sync_dir(&parent)
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<String>, RemoteError> {
    // Walk only the directory named by the prefix's complete segments.
    let dir_part = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = if dir_part.is_empty() {
        root.to_path_buf()
    } else {
        if validate_key(dir_part).is_err() {
            return Ok(Vec::new());
        }
        root.join(dir_part)
    };
    let mut keys = Vec::new();
    let mut stack = vec![(start, dir_part.to_string())];
    while let Some((dir, key_prefix)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                continue
            }
            Err(e) => return Err(io_error(&dir, "list", e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&dir, "list", e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let key = if key_prefix.is_empty() {
                name
            } else {
                format!("{key_prefix}/{name}")
            };
            let file_type = entry.file_type().map_err(|e| io_error(&dir, "list", e))?;
            if file_type.is_dir() {
                // Descend only where keys below could still match the prefix.
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    stack.push((entry.path(), key));
                }
            } else if file_type.is_file() && key.starts_with(prefix) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

#[async_trait]
impl ObjectStore for LocalDirStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        validate_key(key)?;
        let root = self.root.clone();
        let key = key.to_string();
        // Uploads and the metadata journal write objects: work that can wait for a
        // download, at a lower CPU priority (see `background`).
        crate::background::run(move || put_blocking(&root, &key, &body))
            .await
            .map_err(|e| RemoteError::Transient(format!("local remote: {e}")))?
    }

    async fn get(&self, key: &str) -> Result<Bytes, RemoteError> {
        validate_key(key)?;
        let path = self.path_of(key);
        let key = key.to_string();
        blocking(move || match read_object(&path) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                Err(RemoteError::NotFound(key))
            }
            Err(e) => Err(io_error(&path, "read", e)),
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, RemoteError> {
        validate_key(key)?;
        let path = self.path_of(key);
        let key = key.to_string();
        blocking(move || {
            let file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                    return Err(RemoteError::NotFound(key));
                }
                Err(e) => return Err(io_error(&path, "open", e)),
            };
            let len = usize::try_from(range.end.saturating_sub(range.start))
                .map_err(|_| RemoteError::Permanent(format!("object {key}: range too large")))?;
            let mut buf = vec![0u8; len];
            let mut done = 0;
            while done < len {
                match file.read_at(&mut buf[done..], range.start + done as u64) {
                    Ok(0) => return Err(short_range(&key, &range, range.start + done as u64)),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_error(&path, "read", e)),
                }
            }
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        validate_key(key)?;
        let path = self.path_of(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                Ok(())
            }
            Err(e) => Err(io_error(&path, "delete", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || list_blocking(&root, &prefix)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_read_past_the_page_cache_whole_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4095, 4096, 4097, 2 * 4096, (1 << 20) + 28] {
            let path = dir.path().join(format!("o{len}"));
            let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            fs::write(&path, &body).unwrap();
            // The test machine's temporary directory allows direct I/O (ext4, tmpfs).
            let direct = read_direct(&path).unwrap().expect("direct I/O refused");
            assert_eq!(&direct[..], &body[..], "{len} bytes");
            assert_eq!(&read_object(&path).unwrap()[..], &body[..]);
        }
        assert_eq!(
            read_object(&dir.path().join("missing")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
