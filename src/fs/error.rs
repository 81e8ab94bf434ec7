//! The one error type at the filesystem's edge. Every variant knows its errno, so the
//! FUSE adapter turns any failure into a reply with one call, and `mount` failures get
//! one clear message for the user.

use std::io;
use std::path::PathBuf;

use super::content::ContentError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    /// Any attempt to change the filesystem: it is read-only.
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// No such extended attribute.
    #[error("no such attribute")]
    NoData,
    /// Reading torrent data failed; logged where it happens.
    #[error(transparent)]
    Content(#[from] ContentError),

    // Mounting and unmounting.
    #[error("mount point {0} does not exist")]
    MountPointMissing(PathBuf),
    #[error("mount point {0} is not a directory")]
    MountPointNotDir(PathBuf),
    #[error("mount point {0} is already mounted (unmount it first)")]
    AlreadyMounted(PathBuf),
    #[error("mount point {0} is a stale mount whose filesystem is gone (run `bae umount` or `fusermount3 -u` on it)")]
    StaleMount(PathBuf),
    #[error("mount point {0} is not empty (mounting would hide its files)")]
    MountPointNotEmpty(PathBuf),
    #[error("{0} is not mounted")]
    NotMounted(PathBuf),
    #[error("{0} is busy: a file under it is open or it is some process's working directory")]
    Busy(PathBuf),
    #[error("the mount at {0} did not become ready in time")]
    MountTimeout(PathBuf),
    /// A user other than root asked for `allow_other` and the FUSE helper refused.
    #[error("mounting {path} with allow_other was refused ({reason}); as a user other than root this needs a line `user_allow_other` in /etc/fuse.conf")]
    AllowOtherRefused { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// The errno a kernel request failing with this error is answered with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound | FsError::MountPointMissing(_) => libc::ENOENT,
            FsError::NotDir | FsError::MountPointNotDir(_) => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NoData => libc::ENODATA,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Invalid(_) | FsError::NotMounted(_) => libc::EINVAL,
            FsError::Content(ContentError::NotFound) => libc::ENOENT,
            FsError::Content(_) => libc::EIO,
            FsError::AlreadyMounted(_) | FsError::Busy(_) | FsError::MountPointNotEmpty(_) => {
                libc::EBUSY
            }
            FsError::StaleMount(_) => libc::ENOTCONN,
            FsError::MountTimeout(_) => libc::ETIMEDOUT,
            FsError::AllowOtherRefused { .. } => libc::EPERM,
            FsError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        FsError::Io {
            context: context.into(),
            source,
        }
    }
}
