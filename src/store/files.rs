//! Chunk files on the local disk: `cache/<torrent uid hex>/<chunk index>`.
//!
//! Files are sparse and written in place with positioned writes, so a 16 KiB block
//! from libtorrent lands directly at its offset. Bytes never written read back as
//! zeros (pad files, holes), which is what piece hashing expects.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const TMP_SUFFIX: &str = ".tmp";

pub fn torrent_dir(root: &Path, uid: &[u8; 16]) -> PathBuf {
    root.join(hex::encode(uid))
}

pub fn chunk_path(root: &Path, uid: &[u8; 16], index: u32) -> PathBuf {
    torrent_dir(root, uid).join(index.to_string())
}

/// Writes `data` at `offset` in the chunk file, creating it (and its directory).
pub fn write_at(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?
        }
        Err(e) => return Err(e),
    };
    file.write_all_at(data, offset)
}

/// Fills `buf` from `offset` in the chunk file; bytes past the end of the file (never
/// written) are zeros. A missing file reads as all zeros too.
pub fn read_at(path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            buf.fill(0);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
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

/// Reads a whole chunk of `len` bytes (zero-filled past the end of the file).
pub fn read_whole(path: &Path, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    read_at(path, 0, &mut buf)?;
    Ok(buf)
}

/// Replaces the chunk file atomically (temp file + rename): a reader never sees a
/// half-written chunk fetched from the remote.
pub fn write_whole(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
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

    #[test]
    fn sparse_writes_read_back_with_zero_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = chunk_path(dir.path(), &[1; 16], 3);
        write_at(&p, 100, b"abc").unwrap();
        let mut buf = [9u8; 110];
        read_at(&p, 0, &mut buf).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 0));
        assert_eq!(&buf[100..103], b"abc");
        assert!(buf[103..].iter().all(|&b| b == 0));
        let mut missing = [7u8; 4];
        read_at(&dir.path().join("nope"), 0, &mut missing).unwrap();
        assert_eq!(missing, [0; 4]);
        write_whole(&p, b"xyz").unwrap();
        assert_eq!(read_whole(&p, 5).unwrap(), b"xyz\0\0");
    }
}
