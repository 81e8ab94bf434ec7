//! Where the mount tree keeps its per-torrent records: outside the heap.
//!
//! A library of tens of thousands of albums has hundreds of thousands of names. Kept on
//! the heap they would make the daemon's memory grow with the library, not with what it
//! is doing. So each torrent's subtree is one immutable byte record (see
//! [`record`](super::record)) written once to an unlinked temporary file and read
//! through a shared read-only mapping of it: the kernel keeps the pages that lookups
//! touch in its page cache, writes the rest back and drops them under pressure, and an
//! idle mount holds none of them.
//!
//! Invariants:
//! - The file only grows (a sparse extension, then the record written into it) and the
//!   mapping never reaches past its end, so no access through the mapping can fault.
//!   The file has no name: nothing else opens it through the filesystem.
//! - A record is read only after it was written whole ([`Image::put`] returns its
//!   [`Blob`] after the write).
//! - A record that cannot go to the file (no such directory, disk full) stays on the
//!   heap: the tree is never wrong or missing for want of the file, only bigger.
//! - A [`Blob`] is 16 bytes: the tree holds one per torrent of the library.
//! - Records of removed torrents are garbage until [`Image::needs_compaction`] says the
//!   tree should copy the live ones into a fresh image.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

/// The file grows in steps of at least this much (sparse, so it costs no disk).
const MIN_GROWTH_BYTES: u64 = 4 << 20;

/// Garbage worth rewriting the image for (and only when it outweighs the live records).
const COMPACT_GARBAGE_BYTES: u64 = 64 << 20;

/// Where one record is: 16 bytes, since the tree keeps one per torrent.
#[derive(Debug)]
pub struct Blob {
    /// Offset in the file, or the key in the heap map.
    at: u64,
    len: u32,
    on_heap: bool,
}

/// The mapped file.
struct Mapped {
    file: File,
    /// A read-only view of the whole file (`None` while it is empty).
    map: Option<Mmap>,
    /// The file's length, which the mapping covers.
    cap: u64,
    /// Bytes written so far; records are appended here.
    end: u64,
}

impl Mapped {
    fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let len = bytes.len() as u64;
        let off = self.end;
        let need = off.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if need > self.cap {
            let cap = need
                .max(self.cap.saturating_mul(2))
                .max(MIN_GROWTH_BYTES)
                .next_multiple_of(MIN_GROWTH_BYTES);
            self.file.set_len(cap)?;
            // SAFETY: the file is ours alone (unlinked, never truncated: see the module
            // comment), so the mapped bytes change only by our own appends, each into a
            // range no record lives in yet.
            let map = unsafe {
                MmapOptions::new()
                    .len(usize::try_from(cap).map_err(io::Error::other)?)
                    .map(&self.file)?
            };
            self.map = Some(map);
            self.cap = cap;
        }
        self.file.write_all_at(bytes, off)?;
        self.end = need;
        Ok(off)
    }

    fn get(&self, off: u64, len: u64) -> &[u8] {
        let (Some(map), Ok(start), Ok(len)) =
            (&self.map, usize::try_from(off), usize::try_from(len))
        else {
            return &[];
        };
        start
            .checked_add(len)
            .and_then(|end| map.get(start..end))
            .unwrap_or(&[])
    }
}

/// Append-only record storage (see the module comment).
pub struct Image {
    dir: Option<PathBuf>,
    file: Option<Mapped>,
    /// Records that could not go to the file, by the key in their blob.
    heap: HashMap<u64, Box<[u8]>>,
    next_heap_key: u64,
    live: u64,
    garbage: u64,
    /// Garbage worth a compaction ([`COMPACT_GARBAGE_BYTES`]; tests lower it).
    compact_at: u64,
    /// Whether a failed write was already logged (once is enough).
    warned: bool,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("dir", &self.dir)
            .field("file_bytes", &self.file.as_ref().map(|m| m.end))
            .field("live", &self.live)
            .field("garbage", &self.garbage)
            .finish()
    }
}

impl Image {
    /// Records on the heap (tests, or when there is no directory to use).
    pub fn heap() -> Image {
        Image {
            dir: None,
            file: None,
            heap: HashMap::new(),
            next_heap_key: 0,
            live: 0,
            garbage: 0,
            compact_at: COMPACT_GARBAGE_BYTES,
            warned: false,
        }
    }

    /// Records in an unlinked file in `dir` (a directory on a disk, not a tmpfs: its
    /// pages should be reclaimable), or on the heap if no file can be made there.
    pub fn in_dir(dir: &Path) -> Image {
        let file = match unnamed_file(dir) {
            Ok(file) => Some(Mapped {
                file,
                map: None,
                cap: 0,
                end: 0,
            }),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot make the mount tree's file; keeping the tree in memory");
                None
            }
        };
        Image {
            dir: Some(dir.to_path_buf()),
            file,
            ..Image::heap()
        }
    }

    /// An empty image like this one (same directory), for compaction.
    pub fn fresh(&self) -> Image {
        let mut image = match &self.dir {
            Some(dir) => Image::in_dir(dir),
            None => Image::heap(),
        };
        image.compact_at = self.compact_at;
        image
    }

    /// Lowers the compaction threshold, so tests can reach it.
    #[cfg(test)]
    pub fn set_compact_at(&mut self, bytes: u64) {
        self.compact_at = bytes;
    }

    /// Stores `bytes`; the blob says where. `None` for a record of 4 GiB or more
    /// (a torrent of tens of millions of files), which the tree does not show.
    pub fn put(&mut self, bytes: Vec<u8>) -> Option<Blob> {
        let len = u32::try_from(bytes.len()).ok()?;
        self.live += u64::from(len);
        if let Some(m) = &mut self.file {
            match m.append(&bytes) {
                Ok(at) => {
                    return Some(Blob {
                        at,
                        len,
                        on_heap: false,
                    })
                }
                Err(e) if !self.warned => {
                    self.warned = true;
                    tracing::warn!(error = %e, "cannot write to the mount tree's file; new entries stay in memory");
                }
                Err(_) => {}
            }
        }
        let at = self.next_heap_key;
        self.next_heap_key += 1;
        self.heap.insert(at, bytes.into_boxed_slice());
        Some(Blob {
            at,
            len,
            on_heap: true,
        })
    }

    /// The bytes of `blob` (empty if it is not from this image).
    pub fn get(&self, blob: &Blob) -> &[u8] {
        if blob.on_heap {
            return self.heap.get(&blob.at).map_or(&[], |b| &b[..]);
        }
        self.file
            .as_ref()
            .map_or(&[], |m| m.get(blob.at, u64::from(blob.len)))
    }

    /// Forgets `blob`: its bytes are garbage from now on.
    pub fn release(&mut self, blob: Blob) {
        let len = u64::from(blob.len);
        self.live = self.live.saturating_sub(len);
        if blob.on_heap {
            self.heap.remove(&blob.at);
        } else {
            self.garbage += len;
        }
    }

    /// Whether the garbage is large enough, and larger than the live records, to be
    /// worth copying the live ones into a [`fresh`](Image::fresh) image.
    pub fn needs_compaction(&self) -> bool {
        self.garbage >= self.compact_at && self.garbage > self.live
    }

    #[cfg(test)]
    pub fn garbage_bytes(&self) -> u64 {
        self.garbage
    }

    /// Bytes of live records.
    pub fn live_bytes(&self) -> u64 {
        self.live
    }

    /// Whether records go to the file (else they are on the heap).
    #[cfg(test)]
    pub fn is_mapped(&self) -> bool {
        self.file.is_some()
    }
}

/// A file in `dir` that has no name: `O_TMPFILE` where the filesystem has it, else a
/// name removed at once.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    let tmp = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmp {
        Ok(f) => Ok(f),
        Err(_) => {
            let path = dir.join(format!(
                ".bae-tree-{}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_from_the_file_across_growth_and_from_the_heap() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = Image::in_dir(dir.path());
        assert!(image.is_mapped());
        // Enough records to grow the file (and remap) several times.
        let records: Vec<Vec<u8>> = (0..40u32)
            .map(|i| {
                let len = 300_000 + i as usize * 7;
                (0..len).map(|j| (j as u32 ^ i) as u8).collect()
            })
            .collect();
        let blobs: Vec<Blob> = records
            .iter()
            .map(|r| image.put(r.clone()).unwrap())
            .collect();
        assert!(blobs.iter().all(|b| !b.on_heap));
        for (r, b) in records.iter().zip(&blobs) {
            assert_eq!(image.get(b), &r[..]);
        }
        // No name is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut heap = Image::heap();
        let b = heap.put(b"abc".to_vec()).unwrap();
        assert_eq!(heap.get(&b), b"abc");
        // A blob of another image reads as nothing rather than as someone else's bytes.
        assert_eq!(heap.get(&blobs[0]), b"");
    }

    #[test]
    fn garbage_is_counted_and_compaction_is_asked_for_when_it_dominates() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = Image::in_dir(dir.path());
        let big = vec![7u8; (COMPACT_GARBAGE_BYTES / 2) as usize];
        let a = image.put(big.clone()).unwrap();
        let b = image.put(big.clone()).unwrap();
        let c = image.put(big).unwrap();
        assert_eq!(image.live_bytes(), 3 * COMPACT_GARBAGE_BYTES / 2);
        image.release(a);
        assert!(!image.needs_compaction(), "half the threshold");
        image.release(b);
        assert!(image.needs_compaction(), "64 MiB garbage, 32 MiB live");
        assert_eq!(image.get(&c).len() as u64, COMPACT_GARBAGE_BYTES / 2);
    }

    #[test]
    fn a_missing_directory_keeps_records_on_the_heap() {
        let mut image = Image::in_dir(Path::new("/nonexistent/bae-tree"));
        assert!(!image.is_mapped());
        let b = image.put(vec![1, 2, 3]).unwrap();
        assert!(b.on_heap);
        assert_eq!(image.get(&b), [1, 2, 3]);
    }
}
