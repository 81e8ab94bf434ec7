//! The kernel edge: a thin `fuser` adapter over [`Filesystem`].
//!
//! Each kernel operation is one call into the filesystem and one reply; errors become
//! errnos through [`FsError::errno`]. Metadata operations are answered on the FUSE
//! dispatch thread (they only touch memory). A small read is polled once there and
//! answered at once if its bytes are at hand (the thread then watches a moment for the
//! next request, see [`LINGER`]); every other read is spawned onto a tokio runtime and
//! answered from the task, so a read waiting for data never stalls the dispatch loop or
//! any other read. Reads stop at [`ReadGate::close`], before that runtime shuts down.
//! Every operation that would change anything gets `EROFS`.

use std::ffi::OsStr;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::consts::{
    FOPEN_KEEP_CACHE, FUSE_DO_READDIRPLUS, FUSE_PARALLEL_DIROPS, FUSE_READDIRPLUS_AUTO,
};
use fuser::{
    FileAttr, FileType, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow,
};
use tokio::runtime::Handle;

use crate::model::CHUNK_LEN;

use super::error::FsError;
use super::filesystem::{Attr, DirEntry, EntryKind, Filesystem};
use super::tree::InodeNo;

/// Read-ahead the kernel may do on its own, per file: it asks in requests of at most
/// `max_read` (one chunk), so a window of several keeps that many requests in flight
/// for a sequential reader, answered in parallel.
pub(super) const KERNEL_READAHEAD_BYTES: u32 = 4 * CHUNK_LEN as u32;

/// Background (read-ahead) requests the kernel may have in flight to us at once.
const MAX_BACKGROUND_REQUESTS: u16 = 64;

/// Directory entries fetched from the filesystem per step while filling a reply.
const READDIR_BATCH: usize = 128;

/// Reads up to this size are tried on the dispatch thread first (see `read`). Larger
/// ones, sequential reads of whole chunks, are copied into the reply on a worker, in
/// parallel with the next request.
const INLINE_READ_MAX_BYTES: u32 = 64 * 1024;

/// How long the dispatch thread watches for the next request after answering a read
/// itself, before it goes back to sleep in fuser's blocking read. A reader issuing
/// small reads one after another sends the next within microseconds; waking a thread
/// that went to sleep costs more than that (on a virtual machine, waking a thread on
/// another, idle CPU costs tens of microseconds: 4 KiB random reads ran at 13k IOPS
/// across CPUs and 135k on one).
const LINGER: Duration = Duration::from_micros(50);

fn answer_read(result: Result<bytes::Bytes, FsError>, reply: ReplyData) {
    match result {
        Ok(bytes) => reply.data(&bytes),
        Err(e) => reply.error(e.errno()),
    }
}

/// Feeds entries of directory `ino` from `offset` to `add` until it reports the reply
/// buffer full (returns true) or the directory ends.
fn fill_dir(
    fs: &Filesystem,
    ino: InodeNo,
    offset: i64,
    mut add: impl FnMut(&DirEntry) -> bool,
) -> Result<(), FsError> {
    let mut offset = u64::try_from(offset).unwrap_or(0);
    loop {
        let batch = fs.readdir(ino, offset, READDIR_BATCH)?;
        if batch.is_empty() {
            return Ok(());
        }
        for e in &batch {
            if add(e) {
                return Ok(());
            }
            offset = e.next_offset;
        }
    }
}

/// xattr size probing: a `size` of 0 asks for the length; a buffer too small is
/// `ERANGE`.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len)
    } else if len > size {
        reply.error(libc::ERANGE)
    } else {
        reply.data(value)
    }
}

fn next_offset(e: &DirEntry) -> i64 {
    i64::try_from(e.next_offset).unwrap_or(i64::MAX)
}

/// Whether reads may still go to the runtime. A lazily detached mount outlives its
/// handle while files stay open on it, and its reads would otherwise be polled on a
/// runtime its owner is shutting down (where tokio's timers panic). [`ReadGate::close`]
/// waits for a read being polled on the dispatch thread; every read after it is `EIO`.
#[derive(Debug)]
pub struct ReadGate(RwLock<bool>);

impl ReadGate {
    fn new() -> Arc<ReadGate> {
        Arc::new(ReadGate(RwLock::new(true)))
    }

    /// No read goes to the runtime after this returns.
    pub fn close(&self) {
        match self.0.write() {
            Ok(mut open) => *open = false,
            Err(poisoned) => *poisoned.into_inner() = false,
        }
    }
}

/// Where the session's `/dev/fuse` descriptor is handed to the adapter, once known.
pub struct DeviceSlot(Arc<OnceLock<RawFd>>);

impl DeviceSlot {
    pub fn set(&self, fd: RawFd) {
        let _ = self.0.set(fd);
    }
}

/// The `fuser::Filesystem` implementation handed to the session.
pub struct FuseAdapter {
    fs: Arc<Filesystem>,
    runtime: Handle,
    gate: Arc<ReadGate>,
    /// The session's `/dev/fuse` descriptor, once the session exists (see [`LINGER`]).
    device: Arc<OnceLock<RawFd>>,
}

impl FuseAdapter {
    /// The adapter, the gate that stops its reads before `runtime` shuts down, and the
    /// slot for the session's `/dev/fuse` descriptor (given once the session exists).
    pub fn new(fs: Arc<Filesystem>, runtime: Handle) -> (Self, Arc<ReadGate>, DeviceSlot) {
        let gate = ReadGate::new();
        let device = Arc::new(OnceLock::new());
        let adapter = FuseAdapter {
            fs,
            runtime,
            gate: Arc::clone(&gate),
            device: Arc::clone(&device),
        };
        (adapter, gate, DeviceSlot(device))
    }

    /// Spins for at most [`LINGER`] until the next request is there to read.
    fn linger(&self) {
        let Some(&fd) = self.device.get() else {
            return;
        };
        let until = std::time::Instant::now() + LINGER;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one pollfd, owned here; the descriptor outlives the session loop
            // this runs in (a closed one just reports POLLNVAL).
            if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 || std::time::Instant::now() >= until {
                return;
            }
            std::hint::spin_loop();
        }
    }

    fn ttl(&self) -> Duration {
        self.fs.config().attr_ttl
    }
}

fn to_system_time(unix_secs: i64) -> SystemTime {
    if unix_secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs())
    }
}

fn to_file_attr(a: &Attr) -> FileAttr {
    let time = to_system_time(a.mtime);
    FileAttr {
        ino: a.ino.0,
        size: a.size_bytes,
        blocks: a.size_bytes.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: to_file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        // Preferred I/O size: one chunk, so `cp`, `cat` & co. read in 1 MiB requests.
        blksize: CHUNK_LEN as u32,
        flags: 0,
    }
}

fn to_file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Dir => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // Each is an optimisation; a kernel without it is still served correctly.
        for cap in [
            FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO,
            FUSE_PARALLEL_DIROPS,
        ] {
            if let Err(missing) = config.add_capabilities(cap) {
                tracing::debug!(missing, "kernel lacks a FUSE capability");
            }
        }
        if let Err(nearest) = config.set_max_readahead(KERNEL_READAHEAD_BYTES) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(MAX_BACKGROUND_REQUESTS);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(InodeNo(parent), name) {
            Ok(a) => reply.entry(&self.ttl(), &to_file_attr(&a), 0),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.fs.getattr(InodeNo(ino)) {
            Ok(a) => reply.attr(&self.ttl(), &to_file_attr(&a)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.fs.opendir(InodeNo(ino)) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let filled = fill_dir(&self.fs, InodeNo(ino), offset, |e| {
            let kind = to_file_type(e.attr.kind);
            reply.add(e.attr.ino.0, next_offset(e), kind, &e.name)
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl();
        let filled = fill_dir(&self.fs, InodeNo(ino), offset, |e| {
            let attr = to_file_attr(&e.attr);
            reply.add(e.attr.ino.0, next_offset(e), &e.name, &ttl, &attr, 0)
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        match self.fs.open(InodeNo(ino), flags) {
            // The kernel keeps pages across opens (see the filesystem's module comment).
            Ok(o) => reply.opened(o.fh, FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        // Held until the read is answered or handed to the runtime.
        let open = match self.gate.0.read() {
            Ok(open) if *open => open,
            _ => return reply.error(libc::EIO),
        };
        let fs = Arc::clone(&self.fs);
        let mut read =
            Box::pin(
                async move { crate::daemon::metrics::fuse_read(fs.read(fh, offset, size)).await },
            );
        // A small read of bytes already at hand (a random read of a cached chunk) is
        // answered here: handing it to a worker and back costs more than the read. What
        // would block (disk, hashing) yields instead and goes on in a task.
        if size <= INLINE_READ_MAX_BYTES {
            let _in_runtime = self.runtime.enter();
            if let Poll::Ready(r) = crate::nowait::poll_once(read.as_mut()) {
                answer_read(r, reply);
                drop(open);
                self.linger();
                return;
            }
        }
        // Not ready: the task polls it again, with a waker that works. If the runtime is
        // gone the task is dropped, and so is `reply`: fuser then answers EIO, so the
        // reader never hangs.
        self.runtime
            .spawn(async move { answer_read(read.await, reply) });
        drop(open);
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh);
        reply.ok()
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        match self.fs.getxattr(InodeNo(ino), name) {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        match self.fs.xattr_names(InodeNo(ino)) {
            Ok(names) => {
                // NUL-terminated names back to back, as listxattr(2) returns them.
                let mut list = Vec::new();
                for n in names {
                    list.extend_from_slice(n.as_bytes());
                    list.push(0);
                }
                reply_xattr(reply, size, &list)
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            0,
            0,
            s.files,
            0,
            s.block_size,
            s.name_max_bytes,
            s.block_size,
        )
    }

    // Everything below would change the filesystem: refused.

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn unlink(&mut self, _req: &Request<'_>, _parent: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn rmdir(&mut self, _req: &Request<'_>, _parent: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _newparent: u64,
        _newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _newparent: u64,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn removexattr(&mut self, _req: &Request<'_>, _ino: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _length: i64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }

    fn copy_file_range(
        &mut self,
        _req: &Request<'_>,
        _ino_in: u64,
        _fh_in: u64,
        _offset_in: i64,
        _ino_out: u64,
        _fh_out: u64,
        _offset_out: i64,
        _len: u64,
        _flags: u32,
        reply: ReplyWrite,
    ) {
        reply.error(FsError::ReadOnly.errno())
    }
}
