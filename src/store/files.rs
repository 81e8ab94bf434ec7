//! Chunk files on the local disk: `cache/<torrent uid hex>/<chunk index>`.
//!
//! Files are sparse and written in place with positioned writes, so a 16 KiB block
//! from libtorrent lands directly at its offset. Bytes never written read back as
//! zeros (pad files, holes), which is what piece hashing expects. A complete chunk's
//! file may be shorter than the chunk (trailing pad bytes never written), so only its
//! hash says whether it is intact; a [`FileStamp`] says whether it changed since.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

pub const TMP_SUFFIX: &str = ".tmp";

/// What identifies one version of a file: any write, truncation or replacement (even
/// one that restores the modification time) changes the inode's change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub ino: u64,
    pub ctime_ns: i128,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            len: meta.len(),
            ino: meta.ino(),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

pub fn torrent_dir(root: &Path, uid: &[u8; 16]) -> PathBuf {
    root.join(hex::encode(uid))
}

pub fn chunk_path(root: &Path, uid: &[u8; 16], index: u32) -> PathBuf {
    torrent_dir(root, uid).join(index.to_string())
}

/// Writes `data` at `offset` in the chunk file, creating it (and its directory).
pub fn write_at(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    open_for_write(path)?.write_all_at(data, offset)
}

/// Opens the chunk file for writing, creating it (and its directory).
pub fn open_for_write(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()
        }
        r => r,
    }
}

/// Fills `buf` from `offset` in an open file; bytes past its end are zeros.
pub fn read_file_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Appends `len` bytes from `offset` in an open file to `out`, read straight into its
/// spare room (no zero-filling first; zeros past the end of the file, as in a sparse
/// file): the parts of a
/// read spanning several chunks land in one buffer without a copy between.
pub fn append_at(file: &File, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
    if pread_append(file, offset, len, 0, out)? {
        Ok(())
    } else {
        // Without RWF_NOWAIT the kernel never answers EAGAIN for a regular file.
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }
}

/// Like [`append_at`], only from the page cache: `false` (and `out` as it was) when
/// some of the bytes would have to come from the disk.
pub fn append_at_cached(
    file: &File,
    offset: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    pread_append(file, offset, len, libc::RWF_NOWAIT, out)
}

/// `preadv2` with `flags` into `data`'s spare room, `len` bytes appended; `false` (and
/// `data` as it was) if the kernel says the read would block (only with `RWF_NOWAIT`).
fn pread_append(
    file: &File,
    offset: u64,
    len: usize,
    flags: libc::c_int,
    data: &mut Vec<u8>,
) -> io::Result<bool> {
    let base = data.len();
    data.reserve(len);
    let spare = &mut data.spare_capacity_mut()[..len];
    match preadv2_full(file, offset, spare.as_mut_ptr().cast(), len, flags)? {
        // SAFETY: `preadv2_full` initialised the first `n` bytes of the spare room,
        // right after the first `base`.
        Some(n) => unsafe { data.set_len(base + n) },
        None => return Ok(false),
    }
    data.resize(base + len, 0);
    Ok(true)
}

/// Fills `buf` from `offset` in an open file, only from the page cache (`RWF_NOWAIT`):
/// `false` when some of the bytes would have to come from the disk (`buf` then holds
/// garbage). Zeros past the end of the file, as in a sparse file.
pub fn read_at_cached(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
    let Some(n) = preadv2_full(file, offset, buf.as_mut_ptr(), buf.len(), libc::RWF_NOWAIT)? else {
        return Ok(false);
    };
    buf[n..].fill(0);
    Ok(true)
}

/// `preadv2` with `flags` until `len` bytes are at `dst` or the file ends: the bytes
/// read, or `None` if the kernel says the read would block (only with `RWF_NOWAIT`).
/// `dst` must be valid for writes of `len` bytes (initialised or not).
fn preadv2_full(
    file: &File,
    offset: u64,
    dst: *mut u8,
    len: usize,
    flags: libc::c_int,
) -> io::Result<Option<usize>> {
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    while done < len {
        let iov = libc::iovec {
            // SAFETY (of the call below): `dst + done` has `len - done` writable bytes
            // (the caller's promise); the kernel writes at most that.
            iov_base: unsafe { dst.add(done) }.cast(),
            iov_len: len - done,
        };
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: one valid iovec (see above) and an fd that lives as long as `file`.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) if flags != 0 => Ok(None),
                Some(libc::EINTR) => continue,
                _ => Err(e),
            };
        }
        if n == 0 {
            // The end of the file (a short read for want of cached pages is EAGAIN when
            // retried): the rest is zeros, as in a sparse file.
            break;
        }
        done += n as usize;
    }
    Ok(Some(done))
}

/// Fills `buf` from `offset` in the chunk file (zeros past its end); `false` when the
/// file does not exist (nothing was read).
pub fn read_at_existing(path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
    match File::open(path) {
        Ok(f) => read_file_at(&f, offset, buf).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads the first `len` bytes of a file (positional, whatever its offset) straight into a new
/// buffer's spare room (no zero-filling a chunk's worth first). Bytes past the end of a
/// shorter file are zeros, as in a sparse file: pad bytes are never written.
pub fn read_whole(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut data = Vec::with_capacity(len);
    append_at(file, 0, len, &mut data)?;
    Ok(data)
}

/// Asks the kernel to start reading a chunk file into the page cache (a read of it is
/// coming). Advice only: errors are ignored.
pub fn will_need(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on an open file descriptor; advice only, no memory.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
    }
}

/// Opens a chunk file that must exist, with its current stamp.
pub fn open_stamped(path: &Path) -> io::Result<(File, FileStamp)> {
    let file = File::open(path)?;
    let stamp = FileStamp::of(&file.metadata()?);
    Ok((file, stamp))
}

/// Replaces the chunk file atomically (temp file, rename): a reader never sees a
/// half-written chunk fetched from the remote. Not synced: such a chunk is safe in the
/// remote, and after a crash every chunk file is hashed before its first use, so a torn
/// one is fetched again. Returns the new file's stamp.
pub fn write_whole(path: &Path, data: &[u8]) -> io::Result<FileStamp> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let result = (|| {
        let f = File::create(&tmp)?;
        f.write_all_at(data, 0)?;
        std::fs::rename(&tmp, path)?;
        Ok(FileStamp::of(&f.metadata()?))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn sync(path: &Path) -> io::Result<()> {
    match File::open(path) {
        Ok(f) => f.sync_data(),
        // Nothing written means nothing to make durable (e.g. an all-pad chunk).
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes from `offset` in an open file, read straight into a new buffer (no
    /// zero-filling first); bytes past its end are zeros. Positional: the file may be shared
    /// by concurrent readers (kept-open chunk files), so its offset is never used.
    pub fn read_vec_at(file: &File, offset: u64, len: usize) -> io::Result<bytes::Bytes> {
        let mut data = Vec::with_capacity(len);
        append_at(file, offset, len, &mut data)?;
        Ok(bytes::Bytes::from(data))
    }

    /// Like `read_vec_at`, but only from the page cache (`RWF_NOWAIT`): `None` when
    /// some of the bytes would have to come from the disk.
    pub fn read_vec_at_cached(
        file: &File,
        offset: u64,
        len: usize,
    ) -> io::Result<Option<bytes::Bytes>> {
        let mut data = Vec::with_capacity(len);
        Ok(append_at_cached(file, offset, len, &mut data)?.then(|| bytes::Bytes::from(data)))
    }

    /// A kept-open chunk file is shared by concurrent reads: no read may depend on, or
    /// move, the file's offset (a seek-then-read served one reader the other's bytes).
    #[test]
    fn reads_of_one_shared_file_are_positional() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let file = std::sync::Arc::new(File::open(&p).unwrap());
        {
            use std::io::{Seek, SeekFrom};
            (&*file).seek(SeekFrom::Start(12345)).unwrap();
        }
        assert_eq!(read_whole(&file, 1 << 20).unwrap(), data);
        let readers: Vec<_> = (0..4u64)
            .map(|t| {
                let (file, data) = (file.clone(), data.clone());
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let at = ((t * 7919 + i * 104_729) % ((1 << 20) - 4096)) as usize;
                        let got = read_vec_at(&file, at as u64, 4096).unwrap();
                        assert_eq!(&got[..], &data[at..at + 4096], "read at {at}");
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
    }

    #[test]
    fn sparse_writes_read_back_with_zero_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = chunk_path(dir.path(), &[1; 16], 3);
        write_at(&p, 100, b"abc").unwrap();
        let mut buf = [9u8; 110];
        assert!(read_at_existing(&p, 0, &mut buf).unwrap());
        assert!(buf[..100].iter().all(|&b| b == 0));
        assert_eq!(&buf[100..103], b"abc");
        assert!(buf[103..].iter().all(|&b| b == 0));
        let mut missing = [7u8; 4];
        assert!(!read_at_existing(&dir.path().join("nope"), 0, &mut missing).unwrap());
        write_whole(&p, b"xyz").unwrap();
        let mut whole = [1u8; 5];
        assert!(read_at_existing(&p, 0, &mut whole).unwrap());
        assert_eq!(&whole, b"xyz\0\0");
        assert!(open_stamped(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn stamps_change_with_any_write_even_when_mtime_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let before = write_whole(&p, &[5u8; 4096]).unwrap();
        assert_eq!(open_stamped(&p).unwrap().1, before);
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        // ctime has a coarse clock on some file systems: make sure it can move.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_at(&p, 10, b"altered").unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_modified(mtime).unwrap();
        assert_ne!(open_stamped(&p).unwrap().1, before);
    }

    #[test]
    fn a_read_from_the_page_cache_is_the_plain_read_zeros_past_the_end_included() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap(); // just written: in the page cache
        let f = File::open(&path).unwrap();
        for (offset, len) in [(0u64, 4096usize), (5000, 4096), (8000, 4096), (12_000, 100)] {
            let cached = read_vec_at_cached(&f, offset, len).unwrap();
            // Into a slice (a peer's block), over garbage: the same bytes.
            let mut block = vec![0xAAu8; len];
            let into_slice = read_at_cached(&f, offset, &mut block).unwrap();
            assert_eq!(into_slice, cached.is_some(), "at {offset}");
            // None only where the file system cannot say (not ext4, the test's).
            if let Some(cached) = cached {
                assert_eq!(cached, read_vec_at(&f, offset, len).unwrap(), "at {offset}");
                assert_eq!(cached.len(), len);
                assert_eq!(block, cached, "at {offset}");
            } else {
                let fs_type = std::process::Command::new("stat")
                    .args(["-f", "-c", "%T"])
                    .arg(dir.path())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                assert_ne!(fs_type, "ext2/ext3", "a cached read fell back on ext4");
            }
        }
    }

    #[test]
    fn a_whole_read_is_zero_past_a_short_file_and_stops_at_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::write(&path, b"abcdef").unwrap();
        // A chunk whose tail is pad bytes, never written: the file is shorter.
        let f = File::open(&path).unwrap();
        assert_eq!(read_whole(&f, 9).unwrap(), b"abcdef\0\0\0");
        let f = File::open(&path).unwrap();
        assert_eq!(read_whole(&f, 4).unwrap(), b"abcd");
    }
}
