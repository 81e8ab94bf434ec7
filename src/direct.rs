//! Whole-file reads past the page cache (`O_DIRECT`), for bytes that are about to be
//! held in memory anyway — an object decrypted into the chunk cache, a chunk read
//! ahead of its reader. Filling the page cache with them would cost more CPU than the
//! read and crowd out what is worth keeping there, and a parallel run of direct reads
//! of separate files keeps the disk busier than the kernel's read-ahead of each.
//!
//! Where the file system refuses direct I/O (tmpfs, some FUSE file systems) or a read
//! comes back in an odd shape, these report `None` and the caller reads the ordinary way.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;

/// Alignment of buffers, lengths and offsets for direct reads (the largest logical
/// block size in use).
pub const ALIGN: usize = 4096;

/// Opens `path` for direct reads; `None` when its file system refuses them.
pub fn open(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// How many of a file's pages the page cache holds (`cachestat`, Linux 6.5); `None`
/// where the kernel cannot tell. A file the page cache holds (just written, or read)
/// is better read through it: a direct read would go to the disk for bytes in memory,
/// and first wait for any of them not written back yet.
pub fn cached_pages(file: &File) -> Option<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // The same number on every architecture (the common system call table).
    const SYS_CACHESTAT: libc::c_long = 451;
    // The whole file: a length of 0 reaches its end.
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: both structs are the kernel's layout and live across the call.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0,
        )
    };
    (r == 0).then_some(stat.nr_cache + stat.nr_dirty + stat.nr_writeback)
}

/// What a direct read of a whole file gave.
#[derive(Debug)]
pub struct Whole {
    /// `len` bytes: the file's, then zeros past its end if it is shorter.
    pub bytes: Bytes,
    /// How many bytes the file held, up to `len` and one block more (a read that stops
    /// short of that proves where the file ends).
    pub file_len: usize,
}

/// Reads a file opened by [`open`] from its start into an aligned part of one buffer:
/// the first `len` bytes, zeros past the end of a shorter file. `None` when the file
/// system refuses the read. A read that stops short of a block is taken for the file's
/// end: callers compare [`Whole::file_len`] with the length they expect.
pub fn read_whole(file: &File, len: usize) -> io::Result<Option<Whole>> {
    // One block more than the length: a read that stops before it proves the end.
    let room = len.div_ceil(ALIGN) * ALIGN + ALIGN;
    let mut buf: Vec<u8> = Vec::with_capacity(room + ALIGN);
    let start = buf.as_ptr().align_offset(ALIGN);
    if start + room > buf.capacity() {
        return Ok(None);
    }
    // SAFETY: `[start, start + room)` lies inside `buf`'s allocation (checked above)
    // and nothing else refers to it.
    let got = unsafe { pread_raw(file, buf.as_mut_ptr().add(start), room, 0)? };
    if got == REFUSED {
        return Ok(None);
    }
    let filled = got.max(len);
    // SAFETY: the `start` bytes before the data and the bytes from `got` up to `len`
    // (past a shorter file's end) are zeroed here, the `got` bytes after `start` were
    // written by the reads above; together they are the initialised prefix set as the
    // length.
    unsafe {
        std::ptr::write_bytes(buf.as_mut_ptr(), 0, start);
        if got < len {
            std::ptr::write_bytes(buf.as_mut_ptr().add(start + got), 0, len - got);
        }
        buf.set_len(start + filled);
    }
    Ok(Some(Whole {
        bytes: Bytes::from(buf).slice(start..start + len),
        file_len: got,
    }))
}

/// Size of a transparent huge page (x86-64, arm64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

/// Anonymous memory for direct reads, aligned to and advised as huge pages: a read
/// into 4 KiB pages needs one segment per page, and a disk request holds a few hundred
/// (254 for virtio-blk), so reads of adjacent files could never merge into one request
/// past about 1 MiB; into huge pages they merge up to the device's largest request.
/// Regions are reused (see [`POOLED_REGIONS`]): their bytes are whatever was read last.
pub struct Region {
    map: *mut u8,
    map_len: usize,
    start: usize,
    len: usize,
}

// SAFETY: the region owns its mapping; it is written only through `&mut self` and read
// through shared slices afterwards.
unsafe impl Send for Region {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for Region {}

/// Regions kept for reuse once their bytes are dropped, at most this many (their pages
/// stay resident: faulting in and zeroing fresh huge pages, and unmapping them, which
/// interrupts every CPU the process runs on, costs more than the reads).
const POOLED_REGIONS: usize = 2;

static POOL: Mutex<Vec<Region>> = Mutex::new(Vec::new());

impl Region {
    /// A region of `len` bytes (zeroed if fresh; a reused one holds old bytes).
    pub fn new(len: usize) -> io::Result<Region> {
        let span = len.max(1).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = pool.iter().position(|r| r.map_len == span + HUGE_PAGE) {
                let mut r = pool.swap_remove(at);
                r.len = len;
                return Ok(r);
            }
        }
        // Room to align the start to a huge page; the pages never touched cost nothing.
        let map_len = span + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping, not aliasing anything.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = map.cast::<u8>();
        let start = map.align_offset(HUGE_PAGE);
        // SAFETY: advice on a range inside the mapping; where huge pages are off it
        // fails or does nothing, and the region works the same with small pages.
        unsafe {
            libc::madvise(map.add(start).cast(), span, libc::MADV_HUGEPAGE);
        }
        Ok(Region {
            map,
            map_len,
            start,
            len,
        })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `[start, start + len)` lies inside the mapping (`start < HUGE_PAGE`,
        // `len <= span`), which lives as long as `self`; `&mut self` makes it exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.map.add(self.start), self.len) }
    }
}

impl AsRef<[u8]> for Region {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`; shared access only reads.
        unsafe { std::slice::from_raw_parts(self.map.add(self.start), self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.map.is_null() {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED_REGIONS {
            let map = std::mem::replace(&mut self.map, std::ptr::null_mut());
            pool.push(Region {
                map,
                map_len: self.map_len,
                start: self.start,
                len: 0,
            });
            return;
        }
        drop(pool);
        // SAFETY: unmaps exactly the mapping made in `new`, once (a region handed to
        // the pool has a null map).
        unsafe {
            libc::munmap(self.map.cast(), self.map_len);
        }
    }
}

/// One file of a [`read_batch`]: opened by [`open`], and how many of its first bytes
/// are wanted (at most the batch's slot).
pub struct Want<'a> {
    pub file: &'a File,
    pub len: usize,
}

/// What a file of a [`read_batch`] gave: its `len` bytes (the file's, then zeros past
/// its end) and how many the file held, up to `len` rounded up to [`ALIGN`]. `None`
/// where the file system refused the read.
pub type Got = Option<(Bytes, usize)>;

/// Reads several whole files at once, each into its own `slot` bytes of one [`Region`]
/// in order, all submitted together (io_uring) so that files lying next to each other
/// on the disk are read in large requests. Without io_uring (an old kernel, a sandbox
/// that forbids it) the files are read one after the other.
pub fn read_batch(wants: &[Want<'_>], slot: usize) -> io::Result<Vec<Got>> {
    read_batch_with(wants, slot, true)
}

fn read_batch_with(wants: &[Want<'_>], slot: usize, use_ring: bool) -> io::Result<Vec<Got>> {
    if wants.iter().any(|w| w.len > slot) || slot % ALIGN != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a file longer than its slot",
        ));
    }
    let mut region = Region::new(wants.len() * slot)?;
    let asked: Vec<usize> = wants
        .iter()
        .map(|w| w.len.div_ceil(ALIGN) * ALIGN)
        .collect();
    let ring = if use_ring {
        ring_reads(wants, &asked, &mut region, slot)
    } else {
        Err(Ring::Unavailable)
    };
    let mut results = match ring {
        Ok(r) => r,
        Err(Ring::Unavailable) => (0..wants.len()).map(|_| Ok(0)).collect(),
        Err(Ring::Lost(e)) => {
            // Reads may still land in the region: it must never be freed or reused.
            std::mem::forget(region);
            return Err(e);
        }
    };
    let buf = region.as_mut_slice();
    for (i, w) in wants.iter().enumerate() {
        let dst = &mut buf[i * slot..i * slot + asked[i]];
        // Finish what the ring left short (or did not do): a direct read stops short
        // of what was asked only at the end of the file, or on a signal.
        if let Ok(done) = results[i] {
            if done % ALIGN == 0 && done < asked[i] {
                results[i] = pread_from(w.file, dst, done);
            }
        }
        // Past the end of a shorter file: zeros, whatever the last block held.
        if let Ok(got) = results[i] {
            if got < w.len {
                dst[got..w.len].fill(0);
            }
        }
    }
    let region = Bytes::from_owner(region);
    let mut out = Vec::with_capacity(wants.len());
    for (i, w) in wants.iter().enumerate() {
        match std::mem::replace(&mut results[i], Ok(0)) {
            Ok(REFUSED) => out.push(None),
            Ok(got) => out.push(Some((region.slice(i * slot..i * slot + w.len), got))),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A read the file system refused (direct I/O not supported there).
const REFUSED: usize = usize::MAX;

/// Why a batch was not read through io_uring.
enum Ring {
    /// No ring could be set up, or nothing was submitted: read the files another way.
    Unavailable,
    /// Waiting for reads already submitted failed.
    Lost(io::Error),
}

/// The reads of a batch through one io_uring: per file, the bytes it read
/// ([`REFUSED`] where direct reads were refused).
fn ring_reads(
    wants: &[Want<'_>],
    asked: &[usize],
    region: &mut Region,
    slot: usize,
) -> Result<Vec<io::Result<usize>>, Ring> {
    use io_uring::{opcode, types, IoUring};
    let n = wants.len();
    let entries = u32::try_from(n.next_power_of_two()).map_err(|_| Ring::Unavailable)?;
    let mut ring = IoUring::new(entries).map_err(|_| Ring::Unavailable)?;
    let base = region.as_mut_slice().as_mut_ptr();
    for (i, w) in wants.iter().enumerate() {
        let len = u32::try_from(asked[i]).map_err(|_| Ring::Unavailable)?;
        // SAFETY (of the pointer): `[i * slot, i * slot + asked[i])` lies inside the
        // region (`asked[i] <= slot`).
        let dst = unsafe { base.add(i * slot) };
        let entry = opcode::Read::new(types::Fd(w.file.as_raw_fd()), dst, len)
            .offset(0)
            .build()
            .user_data(i as u64);
        // SAFETY: the destination lies inside the region, which outlives every entry
        // (each is waited for below, or the region is leaked); the file descriptor
        // lives as long as `wants`. Nothing reaches the kernel before `submit`.
        if unsafe { ring.submission().push(&entry) }.is_err() {
            return Err(Ring::Unavailable);
        }
    }
    let mut results: Vec<io::Result<usize>> = (0..n).map(|_| Ok(0)).collect();
    let mut left = n;
    while left > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(Ring::Lost(e)),
        }
        for cqe in ring.completion() {
            let Some(r) = results.get_mut(cqe.user_data() as usize) else {
                continue;
            };
            *r = match cqe.result() {
                got if got >= 0 => Ok(got as usize),
                e if -e == libc::EINVAL => Ok(REFUSED),
                e => Err(io::Error::from_raw_os_error(-e)),
            };
            left -= 1;
        }
    }
    Ok(results)
}

/// Fills `dst` from file offset `done` on with direct reads, to the end of the file
/// or of `dst`: the bytes read in all, or [`REFUSED`] where direct reads are refused.
fn pread_from(file: &File, dst: &mut [u8], done: usize) -> io::Result<usize> {
    // SAFETY: `dst` is valid for writes of its length.
    unsafe { pread_raw(file, dst.as_mut_ptr(), dst.len(), done) }
}

/// [`pread_from`] into `len` bytes at `dst`, initialised or not.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes, and nothing else may use them.
unsafe fn pread_raw(file: &File, dst: *mut u8, len: usize, mut done: usize) -> io::Result<usize> {
    while done < len {
        // SAFETY: writes at most `len - done` bytes at `dst + done` (the caller's promise).
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                dst.add(done).cast(),
                len - done,
                done as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL) => return Ok(REFUSED),
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        done += n as usize;
        if done % ALIGN != 0 {
            // A direct read stops short of a block only at the file's end.
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn whole_files_of_any_length_read_back_exactly_and_short_ones_pad_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 511, 4095, 4096, 4097, 12288, (1 << 20) + 28] {
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, body(len)).unwrap();
            let Some(file) = open(&path).unwrap() else {
                eprintln!("direct I/O refused here; nothing to check");
                return;
            };
            let whole = read_whole(&file, len)
                .unwrap()
                .expect("direct read refused");
            assert_eq!(whole.file_len, len, "{len} bytes");
            assert_eq!(&whole.bytes[..], &body(len)[..], "{len} bytes");
            // Asked for more than the file holds: its bytes, then zeros.
            let more = read_whole(&file, len + 5000).unwrap().unwrap();
            assert_eq!(more.file_len, len);
            assert_eq!(&more.bytes[..len], &body(len)[..]);
            assert!(more.bytes[len..].iter().all(|&b| b == 0));
            assert_eq!(more.bytes.len(), len + 5000);
            // Asked for less: the length read shows the file is longer.
            if len > 0 {
                let less = read_whole(&file, len - 1).unwrap().unwrap();
                assert!(less.file_len > len - 1);
                assert_eq!(&less.bytes[..], &body(len)[..len - 1]);
            }
        }
        assert_eq!(
            open(&dir.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn the_page_cache_is_seen_holding_a_file_just_written_and_not_after_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, body(1 << 20)).unwrap();
        let file = File::open(&path).unwrap();
        let Some(cached) = cached_pages(&file) else {
            eprintln!("no cachestat on this kernel: nothing to check");
            return;
        };
        assert!(cached > 0);
        file.sync_all().unwrap();
        // SAFETY: advice on an open descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(cached_pages(&file), Some(0));
    }

    #[test]
    fn a_batch_reads_each_file_into_its_slot_exactly_with_zeros_past_a_short_end() {
        let dir = tempfile::tempdir().unwrap();
        let slot = 1 << 20;
        let lens = [slot, 0, 1, 4095, 4096, 5000, slot - 1, slot];
        let opened: Option<Vec<File>> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let path = dir.path().join(format!("f{i}"));
                let mut bytes = body(len);
                bytes.iter_mut().for_each(|b| *b ^= i as u8);
                std::fs::write(&path, bytes).unwrap();
                open(&path).unwrap()
            })
            .collect();
        let Some(files) = opened else {
            eprintln!("direct I/O refused here; nothing to check");
            return;
        };
        for use_ring in [true, false] {
            // Each file's own length, then the whole slot (zeros past its end).
            for want_slot in [false, true] {
                let wants: Vec<Want> = files
                    .iter()
                    .zip(lens)
                    .map(|(file, len)| Want {
                        file,
                        len: if want_slot { slot } else { len },
                    })
                    .collect();
                let got = read_batch_with(&wants, slot, use_ring).unwrap();
                assert_eq!(got.len(), lens.len());
                for (i, (g, &len)) in got.iter().zip(&lens).enumerate() {
                    let (bytes, file_len) = g.as_ref().expect("direct read refused");
                    assert_eq!(*file_len, len, "file {i} (ring {use_ring})");
                    let mut expect = body(len);
                    expect.iter_mut().for_each(|b| *b ^= i as u8);
                    assert_eq!(&bytes[..len], &expect[..], "file {i} (ring {use_ring})");
                    assert_eq!(bytes.len(), wants[i].len);
                    assert!(bytes[len..].iter().all(|&b| b == 0), "file {i}");
                }
            }
        }
        let too_long = [Want {
            file: &files[0],
            len: slot + 1,
        }];
        assert!(read_batch(&too_long, slot).is_err());
    }
}
