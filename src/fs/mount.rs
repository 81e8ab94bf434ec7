//! Putting the filesystem in front of the kernel, and taking it away again.
//!
//! [`mount`] checks the mount point, mounts read-only through `fuser`, runs the FUSE
//! session loop on its own thread and returns only once the kernel answers requests on
//! the mount. The [`MountHandle`] it returns unmounts on [`MountHandle::unmount`] or on
//! drop.
//!
//! Mount point policy: it must exist, be a directory, not already be a mount point
//! (of any filesystem; a dead FUSE mount is reported as stale) and be empty — mounting
//! over files would hide them, which is never what a user of `bae` means.
//!
//! Unmount policy, as `fusermount3 -u`: a plain unmount fails with [`FsError::Busy`]
//! while a process holds a file open under the mount (or has its working directory
//! there); the mount then stays fully working. [`MountHandle::unmount_lazy`] detaches
//! it at once (`umount -l`): new lookups fail, open files keep being served until they
//! are closed, then the session ends. Dropping a handle tries a plain unmount and falls
//! back to a lazy one. We do all unmounting ourselves: fuser 0.15's own unmount at the
//! end of a session is disarmed (see [`disarm_fuser_unmount`]), because it unmounts
//! whatever is mounted at the path by then and logs an error when nothing is.
//!
//! Stale mounts: a mount whose FUSE server died (`kill -9`) stays listed by the kernel.
//! [`clean_stale_mount`] removes one before mounting again: a mount whose source is the
//! caller's (the caller guarantees its server is gone, e.g. by holding a lock its
//! server held for life), or any FUSE mount whose connection answers `ENOTCONN`.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fuser::{MountOption, Notifier, Session};

use crate::model::CHUNK_LEN;

use super::content::Content;
use super::error::FsError;
use super::filesystem::{Filesystem, FsConfig, Invalidation, Invalidator};
use super::fuse::{FuseAdapter, ReadGate};

/// Who owns the mount's files and what their permission bits are, as other FUSE
/// mounts take them (`uid=`, `gid=`, `umask=`, `file_mode=`, `dir_mode=`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Owner shown on every inode; default: the mounting user.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Bits taken away from both modes.
    pub umask: u16,
    /// Default 0444 (files) and 0555 (directories).
    pub file_mode: Option<u16>,
    pub dir_mode: Option<u16>,
}

impl Permissions {
    /// The (file, directory) permission bits.
    pub fn modes(&self) -> (u16, u16) {
        let mask = !self.umask & 0o7777;
        (
            self.file_mode.unwrap_or(0o444) & mask,
            self.dir_mode.unwrap_or(0o555) & mask,
        )
    }
}

/// How the mount is set up.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Owner and modes shown.
    pub permissions: Permissions,
    /// Let other users than the mounting one see the files (needs `user_allow_other`
    /// in /etc/fuse.conf unless root).
    pub allow_other: bool,
    /// Backstop on each read's wait for data, after which it fails with `EIO`; `None`
    /// trusts [`Content::read`]'s own bound.
    pub read_timeout: Option<Duration>,
    /// Source name shown in /proc/mounts and `df`; also how [`clean_stale_mount`]
    /// recognises a mount of the same owner (see [`source_name`]).
    pub fsname: String,
    /// How long the kernel caches attributes and entries.
    pub attr_ttl: Duration,
    /// Largest read-ahead window of a sequential reader.
    pub max_readahead_bytes: u64,
    /// Where reads run. `None`: the mount makes and owns a small runtime of its own.
    pub runtime: Option<tokio::runtime::Handle>,
    /// How long [`mount`] waits for the kernel to start answering on the mount.
    pub ready_timeout: Duration,
    /// Where the tree keeps its records, see [`FsConfig::tree_dir`].
    pub tree_dir: Option<PathBuf>,
}

impl Default for MountOptions {
    fn default() -> Self {
        let fs = FsConfig::default();
        MountOptions {
            permissions: Permissions::default(),
            allow_other: false,
            read_timeout: fs.read_timeout,
            fsname: "bae".to_string(),
            attr_ttl: fs.attr_ttl,
            max_readahead_bytes: fs.max_readahead_bytes,
            runtime: None,
            ready_timeout: Duration::from_secs(10),
            tree_dir: None,
        }
    }
}

/// Largest read request the kernel sends us.
const MAX_READ_BYTES: u64 = CHUNK_LEN;

/// Worker threads of a runtime the mount makes for itself.
const OWN_RUNTIME_THREADS: usize = 4;

/// A live mount. Unmounts on drop (see the module comment for what happens to open
/// files).
#[derive(Debug)]
pub struct MountHandle {
    mountpoint: PathBuf,
    fs: Arc<Filesystem>,
    reads: Arc<ReadGate>,
    session: Option<JoinHandle<()>>,
    mounted: bool,
}

/// Mounts `content` read-only at `mountpoint`, returning once the mount answers.
pub fn mount(
    content: Arc<dyn Content>,
    mountpoint: &Path,
    options: MountOptions,
) -> Result<MountHandle, FsError> {
    let mountpoint = check_mountpoint(mountpoint)?;
    let defaults = FsConfig::default();
    let (file_perm, dir_perm) = options.permissions.modes();
    let config = FsConfig {
        attr_ttl: options.attr_ttl,
        read_timeout: options.read_timeout,
        max_readahead_bytes: options.max_readahead_bytes,
        uid: options.permissions.uid.unwrap_or(defaults.uid),
        gid: options.permissions.gid.unwrap_or(defaults.gid),
        file_perm,
        dir_perm,
        tree_dir: options.tree_dir.clone(),
    };
    let fs = Arc::new(Filesystem::new(content, config));

    let (runtime, owned_runtime) = match options.runtime {
        Some(handle) => (handle, None),
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(OWN_RUNTIME_THREADS)
                .thread_name("bae-fs-read")
                .enable_all()
                .build()
                .map_err(|e| FsError::io("starting the read runtime", e))?;
            (rt.handle().clone(), Some(rt))
        }
    };

    let mut mount_options = vec![
        MountOption::RO,
        MountOption::FSName(options.fsname.clone()),
        MountOption::Subtype("bae".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::CUSTOM(format!("max_read={MAX_READ_BYTES}")),
    ];
    if options.allow_other {
        mount_options.push(MountOption::AllowOther);
    }
    let (adapter, reads, device) = FuseAdapter::new(Arc::clone(&fs), runtime);
    let mut session = Session::new(adapter, &mountpoint, &mount_options).map_err(|e| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if options.allow_other && unsafe { libc::geteuid() } != 0 {
            FsError::AllowOtherRefused {
                path: mountpoint.clone(),
                reason: e.to_string(),
            }
        } else {
            FsError::io(format!("mounting {}", mountpoint.display()), e)
        }
    })?;
    device.set({
        use std::os::fd::{AsFd, AsRawFd};
        session.as_fd().as_raw_fd()
    });
    start_invalidator(&fs, session.notifier())?;
    // Which kernel mount is ours: after the session, it must not be left behind.
    let dev = mount_entry(&mountpoint).map(|m| m.dev);

    let thread_mountpoint = mountpoint.clone();
    let session_fs = Arc::clone(&fs);
    let spawned = thread::Builder::new()
        .name("bae-fuse".to_string())
        .spawn(move || {
            if let Err(e) = session.run() {
                tracing::error!(mountpoint = %thread_mountpoint.display(), error = %e, "FUSE session failed");
            }
            // The session ends when the kernel drops the connection, normally because we
            // unmounted. If our mount is still listed (connection aborted, or the loop
            // failed), nothing serves it any more: detach it rather than leave it stale.
            let entry = mount_entry(&thread_mountpoint);
            if dev.is_some() && entry.map(|m| m.dev) == dev {
                tracing::warn!(mountpoint = %thread_mountpoint.display(), "FUSE session ended while mounted; detaching the mount");
                if let Err(e) = unmount_path(&thread_mountpoint, true) {
                    tracing::error!(mountpoint = %thread_mountpoint.display(), error = %e, "detaching the mount failed");
                }
            }
            // Nothing more to tell a kernel that is gone; this ends the notifier thread.
            session_fs.set_invalidator(None);
            disarm_fuser_unmount(&session);
            drop(session);
            if let Some(rt) = owned_runtime {
                rt.shutdown_timeout(Duration::from_secs(1));
            }
            tracing::info!(mountpoint = %thread_mountpoint.display(), "FUSE session ended");
        });
    let session = match spawned {
        Ok(t) => t,
        Err(e) => {
            // The kernel mount exists but nothing would serve it.
            let _ = unmount_path(&mountpoint, true);
            return Err(FsError::io("starting the FUSE session thread", e));
        }
    };
    // From here on the handle's Drop cleans up if the mount never becomes ready.
    let handle = MountHandle {
        mountpoint,
        fs,
        reads,
        session: Some(session),
        mounted: true,
    };
    wait_until_mounted(&handle.mountpoint, options.ready_timeout)?;
    tune_kernel_readahead(&handle.mountpoint);
    tracing::info!(mountpoint = %handle.mountpoint.display(), "mounted");
    Ok(handle)
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The filesystem behind the mount (open handles, current tree…).
    pub fn filesystem(&self) -> &Arc<Filesystem> {
        &self.fs
    }

    /// What stops reads from going to the runtime given in [`MountOptions::runtime`]: its
    /// owner closes it before shutting that runtime down, as a lazily detached mount
    /// may still be read after its handle is dropped.
    pub fn read_gate(&self) -> Arc<ReadGate> {
        Arc::clone(&self.reads)
    }

    /// Unmounts, like `fusermount3 -u`. Fails with [`FsError::Busy`] while a file under
    /// the mount is open; the mount then stays up and the handle stays valid.
    pub fn unmount(&mut self) -> Result<(), FsError> {
        if !self.mounted {
            return Ok(());
        }
        unmount_path(&self.mountpoint, false)?;
        self.mounted = false;
        // The kernel has torn the connection down, so the session loop ends promptly.
        if let Some(t) = self.session.take() {
            let _ = t.join();
        }
        Ok(())
    }

    /// Detaches the mount at once, like `fusermount3 -uz`. Files already open keep
    /// being served until closed; the session thread ends after that.
    pub fn unmount_lazy(&mut self) -> Result<(), FsError> {
        if !self.mounted {
            return Ok(());
        }
        unmount_path(&self.mountpoint, true)?;
        self.mounted = false;
        // Not joined: it serves the open files until they are closed.
        self.session.take();
        Ok(())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        match self.unmount() {
            Ok(()) => {}
            Err(FsError::Busy(_)) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(), "mount busy; detaching it lazily");
                if let Err(e) = self.unmount_lazy() {
                    tracing::error!(mountpoint = %self.mountpoint.display(), error = %e, "lazy unmount failed");
                }
            }
            Err(e) => {
                tracing::error!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed")
            }
        }
    }
}

/// How long a change waits for the kernel to take its invalidations. They are quick
/// (attributes and entries only); the bound keeps a wedged kernel connection from
/// stalling whoever changed the library.
const INVALIDATION_WAIT: Duration = Duration::from_secs(2);

/// Starts the thread that passes the tree's changes on to the kernel, and makes it the
/// filesystem's [`Invalidator`]. A thread of its own: a notification may wait for the
/// kernel's lock on the root while a request on the root is being answered.
fn start_invalidator(fs: &Arc<Filesystem>, notifier: Notifier) -> Result<(), FsError> {
    type Batch = (Vec<Invalidation>, mpsc::SyncSender<()>);
    let (tx, rx) = mpsc::channel::<Batch>();
    thread::Builder::new()
        .name("bae-fuse-inval".to_string())
        .spawn(move || {
            for (batch, done) in rx {
                for inv in &batch {
                    // Attributes only (offset -1): dropping file pages could wait for
                    // a read in flight, and a torrent's bytes never change.
                    let r = match inv {
                        Invalidation::Entry { parent, name } => {
                            notifier.inval_entry(parent.0, OsStr::new(name))
                        }
                        Invalidation::Inode(ino) => notifier.inval_inode(ino.0, -1, 0),
                    };
                    // ENOENT: the kernel had not cached it; nothing to do.
                    if let Err(e) = r {
                        if e.raw_os_error() != Some(libc::ENOENT) {
                            tracing::debug!(?inv, error = %e, "kernel invalidation failed");
                        }
                    }
                }
                let _ = done.send(());
            }
        })
        .map_err(|e| FsError::io("starting the invalidation thread", e))?;
    let tx = Mutex::new(tx);
    let tell: Invalidator = Arc::new(move |batch| {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let sent = tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((batch, done_tx));
        if sent.is_ok() && done_rx.recv_timeout(INVALIDATION_WAIT).is_err() {
            tracing::warn!("the kernel did not take the mount's invalidations in time");
        }
    });
    fs.set_invalidator(Some(tell));
    Ok(())
}

/// Validates a mount point (see the module comment) and returns its canonical path.
fn check_mountpoint(path: &Path) -> Result<PathBuf, FsError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FsError::MountPointMissing(path.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(FsError::StaleMount(path.to_path_buf()))
        }
        Err(e) => {
            return Err(FsError::io(
                format!("checking mount point {}", path.display()),
                e,
            ))
        }
    };
    if !meta.is_dir() {
        return Err(FsError::MountPointNotDir(path.to_path_buf()));
    }
    let canonical = fs::canonicalize(path)
        .map_err(|e| FsError::io(format!("resolving mount point {}", path.display()), e))?;
    if mount_entry(&canonical).is_some() {
        return Err(FsError::AlreadyMounted(canonical));
    }
    let mut entries = fs::read_dir(&canonical)
        .map_err(|e| FsError::io(format!("listing mount point {}", canonical.display()), e))?;
    if entries.next().is_some() {
        return Err(FsError::MountPointNotEmpty(canonical));
    }
    Ok(canonical)
}

/// Whether a FUSE filesystem is mounted at `path` (live or stale).
pub fn is_fuse_mount(path: &Path) -> bool {
    resolve(path)
        .and_then(|p| mount_entry(&p))
        .is_some_and(|m| m.is_fuse())
}

/// The mount source (`fsname`) that names `dir` as a mount's owner: its canonical path,
/// or plain "bae" when the path cannot be carried in a mount option (not UTF-8, or a
/// comma or backslash, which `fusermount3` would split or unescape).
pub fn source_name(dir: &Path) -> String {
    let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match canonical.to_str() {
        Some(s) if !s.contains([',', '\\']) && !s.is_empty() => s.to_string(),
        _ => "bae".to_string(),
    }
}

/// How long [`clean_stale_mount`] lets a stat of a foreign FUSE mount take.
const STALE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most mounts stacked at one path that [`clean_stale_mount`] takes off.
const MAX_STACKED_MOUNTS: usize = 16;

/// Removes dead FUSE mounts at `path`, so that a new mount can go there. A FUSE mount
/// is dead when its source is `owner` — the caller vouches that no server of `owner`
/// runs — or when it answers `ENOTCONN` (its server is gone, whoever it was). Its
/// connection is aborted (so no request waits on it any more, where the fusectl
/// filesystem is mounted) and it is detached lazily (programs may still hold files
/// open on it; they get errors). Returns whether anything was removed. A live mount
/// of someone else is left alone; [`mount`] then reports it as already mounted.
///
/// Never stats `path` while the mount may be ours: a dying server may not answer.
pub fn clean_stale_mount(path: &Path, owner: &str) -> Result<bool, FsError> {
    let Some(target) = resolve_without_stat(path) else {
        return Ok(false);
    };
    let mut cleaned = false;
    for _ in 0..MAX_STACKED_MOUNTS {
        let Some(entry) = mount_entry(&target) else {
            return Ok(cleaned);
        };
        if !entry.is_fuse() {
            return Ok(cleaned);
        }
        let ours = entry.source == owner;
        if !ours && !answers_enotconn(&target) {
            return Ok(cleaned);
        }
        tracing::warn!(mountpoint = %target.display(), source = %entry.source, "removing a stale FUSE mount left by a server that is gone");
        abort_connection(entry.dev);
        match unmount_path(&target, true) {
            Ok(()) | Err(FsError::NotMounted(_)) => cleaned = true,
            Err(e) => return Err(e),
        }
    }
    Ok(cleaned)
}

/// Whether a stat of `path` fails with `ENOTCONN` (a FUSE mount whose connection is
/// gone), probed on a helper thread so that a server that never answers cannot hang us.
fn answers_enotconn(path: &Path) -> bool {
    let (tx, rx) = mpsc::channel();
    let probe = path.to_path_buf();
    let spawned = thread::Builder::new()
        .name("bae-stale-probe".to_string())
        .spawn(move || {
            let _ = tx.send(fs::metadata(&probe).err().and_then(|e| e.raw_os_error()));
        });
    if spawned.is_err() {
        return false;
    }
    matches!(
        rx.recv_timeout(STALE_PROBE_TIMEOUT),
        Ok(Some(libc::ENOTCONN))
    )
}

/// Aborts the FUSE connection of the mount with device `dev` through the fusectl
/// filesystem, if it is mounted. Best effort: a lazy unmount works without it.
fn abort_connection(dev: (u32, u32)) {
    // fusectl names a connection after the kernel's device number of the mount.
    let id = (u64::from(dev.0) << 20) | u64::from(dev.1);
    let knob = format!("/sys/fs/fuse/connections/{id}/abort");
    match fs::write(&knob, "1") {
        Ok(()) => tracing::info!(%knob, "aborted the FUSE connection"),
        Err(e) => tracing::debug!(%knob, error = %e, "could not abort the FUSE connection"),
    }
}

/// Makes fuser's end-of-session unmount a no-op. fuser 0.15.1 unmounts at drop unless a
/// poll of its /dev/fuse descriptor reports neither nothing nor an error, and it polls
/// an already dead connection as mounted: it would unmount whatever is at the path by
/// then, or log "Unmount failed: Invalid argument" when nothing is. The descriptor is
/// replaced, atomically, by the read end of a pipe with no writer, which polls as
/// hung up; the connection is over by now, so nothing needs the old descriptor.
fn disarm_fuser_unmount<T: std::os::fd::AsFd>(session: &T) {
    use std::os::fd::AsRawFd;
    let fd = session.as_fd().as_raw_fd();
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass; we own both.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    // SAFETY: `pipe` holds two descriptors we own; `fd` stays open (now naming the
    // pipe) and is closed once, by the session that owns it.
    unsafe {
        libc::close(pipe[1]);
        libc::dup3(pipe[0], fd, libc::O_CLOEXEC);
        libc::close(pipe[0]);
    }
}

/// Waits until a FUSE filesystem mounted at `path` answers requests (its root can be
/// stat'ed), or `timeout` passes. For a process that started the mount elsewhere.
pub fn wait_until_mounted(path: &Path, timeout: Duration) -> Result<(), FsError> {
    let deadline = Instant::now() + timeout;
    while !is_fuse_mount(path) {
        if Instant::now() >= deadline {
            return Err(FsError::MountTimeout(path.to_path_buf()));
        }
        thread::sleep(Duration::from_millis(10));
    }
    // The kernel holds requests until the session has answered INIT; a stat of the root
    // returns once the filesystem really serves. It runs on a helper thread so that a
    // session that never answers cannot hang the caller past the deadline.
    let (tx, rx) = mpsc::channel();
    let probe = path.to_path_buf();
    thread::Builder::new()
        .name("bae-mount-probe".to_string())
        .spawn(move || {
            let _ = tx.send(fs::metadata(&probe).map(|m| m.is_dir()));
        })
        .map_err(|e| FsError::io("starting the mount probe", e))?;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(FsError::MountPointNotDir(path.to_path_buf())),
        Ok(Err(e)) => Err(FsError::io(format!("probing mount {}", path.display()), e)),
        Err(_) => Err(FsError::MountTimeout(path.to_path_buf())),
    }
}

/// Unmounts whatever is mounted at `path`: `umount2`, or `fusermount3 -u` for users
/// that may not call it. `lazy` detaches even while files are open. Also cleans up a
/// stale mount left by a crashed process.
pub fn unmount_path(path: &Path, lazy: bool) -> Result<(), FsError> {
    let target = resolve(path).unwrap_or_else(|| path.to_path_buf());
    let c_path = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| FsError::Invalid("mount point path contains NUL"))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), flags) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => Err(FsError::Busy(target)),
        Some(libc::EINVAL) => Err(FsError::NotMounted(target)),
        Some(libc::ENOENT) => Err(FsError::MountPointMissing(target)),
        Some(libc::EPERM) => fusermount_unmount(&target, lazy),
        _ => Err(FsError::io(format!("unmounting {}", target.display()), err)),
    }
}

/// The unprivileged way: the setuid `fusermount3` helper.
fn fusermount_unmount(path: &Path, lazy: bool) -> Result<(), FsError> {
    let mut cmd = Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" }).arg("--").arg(path);
    let out = cmd
        .output()
        .map_err(|e| FsError::io("running fusermount3", e))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("busy") {
        Err(FsError::Busy(path.to_path_buf()))
    } else if stderr.contains("not found in") || stderr.contains("Invalid argument") {
        Err(FsError::NotMounted(path.to_path_buf()))
    } else {
        Err(FsError::io(
            format!("unmounting {}", path.display()),
            io::Error::other(stderr.trim().to_string()),
        ))
    }
}

/// The canonical form of `path`, also for a stale mount (which cannot be stat'ed):
/// the parent is resolved and the last component kept.
fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = fs::canonicalize(path) {
        return Some(p);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(fs::canonicalize(parent).ok()?.join(path.file_name()?))
}

/// `path` with its parent resolved and its last component kept, without touching
/// `path` itself (a dead FUSE mount may not answer). Falls back to canonicalising
/// paths that end in `..` or are a root.
fn resolve_without_stat(path: &Path) -> Option<PathBuf> {
    let name = path.file_name();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match name {
        Some(name) => Some(fs::canonicalize(parent).ok()?.join(name)),
        None => fs::canonicalize(path).ok(),
    }
}

/// One line of /proc/self/mountinfo, reduced to what we use.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountEntry {
    /// Device number (major, minor) of the mounted filesystem.
    dev: (u32, u32),
    fstype: String,
    /// The mount source (a FUSE mount's `fsname`), unescaped.
    source: String,
}

impl MountEntry {
    fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }
}

/// The mount visible exactly at `canonical`, from /proc/self/mountinfo.
fn mount_entry(canonical: &Path) -> Option<MountEntry> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&info, canonical.as_os_str().as_bytes())
}

fn parse_mountinfo(info: &str, want: &[u8]) -> Option<MountEntry> {
    // The last mount at a path is the visible one.
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = fields.get(4)?;
        if unescape_mountinfo(mount_point) != want {
            return None;
        }
        let (major, minor) = fields.get(2)?.split_once(':')?;
        let sep = fields.iter().position(|f| *f == "-")?;
        Some(MountEntry {
            dev: (major.parse().ok()?, minor.parse().ok()?),
            fstype: fields.get(sep + 1)?.to_string(),
            source: String::from_utf8_lossy(&unescape_mountinfo(fields.get(sep + 2)?)).into_owned(),
        })
    })
}

/// Undoes mountinfo's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let digits = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match octal {
            Some(byte) if b[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// Lets the kernel's own read-ahead on the mount reach what the FUSE session allows
/// (several `max_read` requests; its default is 128 KiB). Best effort: needs root, and
/// the mount works without it.
fn tune_kernel_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let kb = super::fuse::KERNEL_READAHEAD_BYTES / 1024;
    if let Err(e) = fs::write(&knob, format!("{kb}")) {
        tracing::debug!(%knob, error = %e, "could not raise the kernel read-ahead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape_mountinfo(r"/mnt/my\040music\134x"),
            b"/mnt/my music\\x".to_vec()
        );
        assert_eq!(unescape_mountinfo(r"/a\04"), b"/a\\04".to_vec());
    }

    #[test]
    fn mountinfo_lines_give_device_type_and_source() {
        let info = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
            46 27 0:41 / /tmp/m\\040x ro,nosuid shared:3 - fuse /home/a\\040b ro,user_id=0\n\
            47 46 0:42 / /tmp/m\\040x ro - fuse.bae bae ro\n";
        assert_eq!(
            parse_mountinfo(info, b"/tmp/m x"),
            Some(MountEntry {
                dev: (0, 42),
                fstype: "fuse.bae".into(),
                source: "bae".into()
            })
        );
        let lower = info.lines().take(2).collect::<Vec<_>>().join("\n");
        let e = parse_mountinfo(&lower, b"/tmp/m x").unwrap();
        assert_eq!((e.dev, e.source.as_str()), ((0, 41), "/home/a b"));
        assert!(e.is_fuse());
        assert_eq!(parse_mountinfo(info, b"/tmp/m"), None);
    }

    #[test]
    fn source_names_avoid_what_mount_options_cannot_carry() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("lib");
        fs::create_dir(&plain).unwrap();
        assert_eq!(
            source_name(&plain),
            fs::canonicalize(&plain).unwrap().to_str().unwrap()
        );
        let comma = dir.path().join("a,b");
        fs::create_dir(&comma).unwrap();
        assert_eq!(source_name(&comma), "bae");
    }

    #[test]
    fn a_missing_or_non_directory_mount_point_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            check_mountpoint(&missing),
            Err(FsError::MountPointMissing(_))
        ));
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            check_mountpoint(&file),
            Err(FsError::MountPointNotDir(_))
        ));
        assert!(matches!(
            check_mountpoint(dir.path()),
            Err(FsError::MountPointNotEmpty(_))
        ));
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert_eq!(
            check_mountpoint(&empty).unwrap(),
            fs::canonicalize(&empty).unwrap()
        );
        assert!(matches!(
            check_mountpoint(Path::new("/proc")),
            Err(FsError::AlreadyMounted(_))
        ));
    }
}
