//! How much room the local cache has left: the input of the download backpressure.
//!
//! Two bounds, whichever is tighter:
//! - the cache bound: bytes that cannot be evicted now (not uploaded, pinned, in use by
//!   reads: `used - evictable`) must stay under `Store::limit_bytes()`;
//! - the free-space reserve of the cache's filesystem (`cache_free_reserve`, default the
//!   smaller of 2 GiB and 5 % of the filesystem): never written below. When the disk is
//!   what binds and evictable chunks exist, they are evicted to make room (a cache limit
//!   larger than the disk must not stop downloads while there is something to drop).
//!
//! `room` is called by the disk subsystem every 250 ms (it reads the store's accounting
//! and calls statvfs); `status` explains, from the last sample, why downloads wait.
//! A torrent larger than the bound cannot stay pinned (it would fill the cache with what
//! can never be evicted and stop every download): [`CachePressure::pin_fits`] says so,
//! and such a torrent is downloaded and seeded unpinned.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::daemon::config::parse_size;
use crate::store::Store;
use crate::torrent::{human, Room, RoomLimit};

/// The default reserve: the smaller of this and [`DEFAULT_RESERVE_PERCENT`].
const DEFAULT_RESERVE_BYTES: u64 = 2 << 30;
const DEFAULT_RESERVE_PERCENT: f64 = 5.0;
/// A write that found the disk full counts in `status` for this long.
const NO_SPACE_SHOWN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PressureError {
    #[error("invalid cache_free_reserve {0:?} (examples: 2GiB, 500MiB, 5%)")]
    Reserve(String),
}

/// `cache_free_reserve` from the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reserve {
    Auto,
    Bytes(u64),
    Percent(f64),
}

impl Reserve {
    pub fn parse(text: Option<&str>) -> Result<Reserve, PressureError> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Reserve::Auto);
        };
        let bad = || PressureError::Reserve(text.to_owned());
        if let Some(p) = text.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=90.0).contains(&p) {
                return Err(bad());
            }
            return Ok(Reserve::Percent(p));
        }
        parse_size(text).map(Reserve::Bytes).map_err(|_| bad())
    }

    /// The reserve in bytes on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        let pct = |p: f64| (total as f64 * p / 100.0) as u64;
        match self {
            Reserve::Auto => DEFAULT_RESERVE_BYTES.min(pct(DEFAULT_RESERVE_PERCENT)),
            Reserve::Bytes(b) => b,
            Reserve::Percent(p) => pct(p),
        }
    }
}

/// (available to unprivileged writers, total) bytes of the filesystem holding `dir`.
fn disk_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only writes into the struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// The tighter of the two bounds, from the store's accounting and the disk's free space.
/// Kept free under the bound: once the gate closes, blocks peers already sent still
/// arrive (libtorrent's receive buffers), and each can begin a chunk the store counts whole.
fn slack(limit: u64) -> u64 {
    (limit / 16).clamp(256 << 10, 4 << 20)
}

/// `used` (all present chunks) and `evictable` (the part that could go) are the store's.
pub fn room_of(
    used: u64,
    evictable: u64,
    not_uploaded: u64,
    limit: u64,
    disk: Option<(u64, u64)>,
) -> Room {
    let held = used.saturating_sub(evictable);
    // What is still evictable was left in place on purpose (see `room`): room is what
    // is free under the bound now, less the slack for blocks peers already sent.
    let cache = limit
        .saturating_sub(slack(limit))
        .saturating_sub(used.max(held));
    let disk_room = disk.map(|(free, reserve)| free.saturating_sub(reserve));
    let limit = match disk {
        Some((free, reserve)) if free.saturating_sub(reserve) < cache => {
            RoomLimit::Disk { free, reserve }
        }
        _ => RoomLimit::Cache {
            held,
            not_uploaded,
            limit,
        },
    };
    Room {
        cache,
        disk: disk_room,
        limit,
    }
}

pub struct CachePressure {
    store: Arc<Store>,
    dir: PathBuf,
    reserve: Reserve,
    last: Mutex<Option<Room>>,
    no_space_at: Mutex<Option<Instant>>,
    statvfs_failed: Mutex<bool>,
    /// Bytes that may still be written before the disk is looked at again (see
    /// `may_write`).
    headroom: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CachePressure {
    pub fn new(
        store: Arc<Store>,
        cache_dir: &Path,
        reserve: Option<&str>,
    ) -> Result<CachePressure, PressureError> {
        Ok(CachePressure {
            store,
            dir: cache_dir.to_owned(),
            reserve: Reserve::parse(reserve)?,
            last: Mutex::new(None),
            no_space_at: Mutex::new(None),
            statvfs_failed: Mutex::new(false),
            headroom: Mutex::new(0),
        })
    }

    fn disk(&self) -> Option<(u64, u64)> {
        match disk_space(&self.dir) {
            Ok((free, total)) => {
                *lock(&self.statvfs_failed) = false;
                Some((free, self.reserve.bytes(total)))
            }
            Err(e) => {
                if !std::mem::replace(&mut *lock(&self.statvfs_failed), true) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the cache disk's free space; only the cache bound applies");
                }
                None
            }
        }
    }

    /// The room left now. Evicts (least recently used first) what is evictable to make
    /// `want` bytes of room under the bound, and to stay above the disk's reserve: the
    /// store itself evicts only after uploads, so new chunks would otherwise pile on top
    /// of a full cache.
    pub fn room(&self, want: u64) -> Room {
        let limit = self.store.limit_bytes();
        let mut s = self.store.stats();
        let held = s.used_bytes.saturating_sub(s.evictable_bytes);
        let bound = limit.saturating_sub(slack(limit));
        let target = want.min(bound.saturating_sub(held));
        if s.evictable_bytes > 0 && bound.saturating_sub(s.used_bytes) < target {
            self.evict_down_to(limit, bound - target);
            s = self.store.stats();
        }
        let mut disk = self.disk();
        if let (Some((free, reserve)), true) = (disk, s.evictable_bytes > 0) {
            // Room for the next interval and its overshoot (evicted chunks are safe in
            // the remote), bounded so a small disk is not emptied for one sample.
            let want_free = reserve + want.min(reserve.max(32 << 20));
            if free < want_free {
                self.evict_down_to(limit, s.used_bytes.saturating_sub(want_free - free));
                s = self.store.stats();
                disk = self.disk();
            }
        }
        let room = room_of(
            s.used_bytes,
            s.evictable_bytes,
            s.not_uploaded_bytes,
            limit,
            disk,
        );
        tracing::trace!(
            used = s.used_bytes,
            evictable = s.evictable_bytes,
            want,
            "cache room sampled"
        );
        *lock(&self.last) = Some(room.clone());
        room
    }

    /// Evicts until the cache holds at most `target` bytes (or nothing evictable is
    /// left).
    fn evict_down_to(&self, limit: u64, target: u64) {
        if target < limit {
            self.store.evict_to(target);
        }
    }

    /// Whether `len` more bytes may be written without going below the reserve. The
    /// gate keeps downloads above it in the large; this is the exact check, per block:
    /// the disk is looked at again once half of the room last seen has been written
    /// (other writers share the disk), and what is evictable goes first when it is tight.
    pub fn may_write(&self, len: u64) -> bool {
        let mut head = lock(&self.headroom);
        if *head >= len {
            *head -= len;
            return true;
        }
        let Some(room) = self.disk_room() else {
            return true;
        };
        let room = if room < len {
            self.room(len);
            self.disk_room().unwrap_or(u64::MAX)
        } else {
            room
        };
        if room < len {
            return false;
        }
        *head = (room / 2).saturating_sub(len);
        true
    }

    /// Free space above the reserve, or `None` when it cannot be read.
    fn disk_room(&self) -> Option<u64> {
        self.disk()
            .map(|(free, reserve)| free.saturating_sub(reserve))
    }

    /// A write found the disk full (it is retried until there is room).
    pub fn note_no_space(&self) {
        *lock(&self.no_space_at) = Some(Instant::now());
    }

    /// Why downloads wait, while they do (for `status`).
    pub fn status(&self) -> Option<String> {
        let recent_enospc = lock(&self.no_space_at).is_some_and(|t| t.elapsed() < NO_SPACE_SHOWN);
        let last = lock(&self.last).clone();
        match last {
            Some(room) if room.tight() => {
                let mut text = format!("downloads wait: {room}");
                if let RoomLimit::Disk { .. } = room.limit {
                    text.push_str(
                        " (they go on as uploads let chunks be evicted, or space is freed)",
                    );
                }
                Some(text)
            }
            _ if recent_enospc => Some(
                "downloads wait: the cache's disk is at its free-space reserve (or full); writes are retried"
                    .into(),
            ),
            _ => None,
        }
    }

    /// Whether a torrent of `size` bytes may be pinned: its chunks, never evictable,
    /// must leave the bound some room for downloads to go on.
    pub fn pin_fits(&self, size: u64) -> bool {
        pin_fits(size, self.store.limit_bytes())
    }
}

/// Each peer socket's receive buffer for a cache bound of `limit` bytes: what peers
/// have sent into their sockets still arrives once downloads are told to wait, so it
/// must be small beside the bound (an explicit size also stops Linux autotuning it up
/// to `tcp_rmem`'s maximum). A 64th of the bound, within [256 KiB, 4 MiB]: 4 MiB
/// still carries 200 MB/s from one peer 20 ms away; a 64 MiB cache gets 1 MiB.
pub fn peer_receive_buffer(limit: u64) -> u32 {
    (limit / 64).clamp(256 << 10, 4 << 20) as u32
}

/// See [`CachePressure::pin_fits`].
pub fn pin_fits(size: u64, limit: u64) -> bool {
    // The same margin the room keeps free under the bound.
    size.saturating_add(slack(limit)) <= limit
}

/// The `status` warning for a pinned torrent that is seeded unpinned.
pub fn unpinned_warning(name: &str, size: u64, limit: u64) -> String {
    format!(
        "{name} ({}) does not fit in the cache ({}): it is downloaded and seeded without pinning",
        human(size),
        human(limit)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn reserve_settings() {
        assert_eq!(Reserve::parse(None).unwrap(), Reserve::Auto);
        assert_eq!(Reserve::parse(Some("")).unwrap(), Reserve::Auto);
        assert_eq!(Reserve::parse(Some("5%")).unwrap(), Reserve::Percent(5.0));
        assert_eq!(
            Reserve::parse(Some("500MiB")).unwrap(),
            Reserve::Bytes(500 * MIB)
        );
        assert!(Reserve::parse(Some("lots")).is_err());
        assert!(Reserve::parse(Some("95%")).is_err());
        // Auto: 5 % of a small disk, 2 GiB of a large one.
        assert_eq!(Reserve::Auto.bytes(256 * MIB), 256 * MIB / 20);
        assert_eq!(Reserve::Auto.bytes(1 << 40), 2 << 30);
        assert_eq!(Reserve::Percent(10.0).bytes(1000), 100);
    }

    #[test]
    fn the_tighter_bound_wins() {
        // 64 MiB bound (4 MiB of it slack), 56 MiB present of which 10 evictable.
        let r = room_of(
            56 * MIB,
            10 * MIB,
            46 * MIB,
            64 * MIB,
            Some((1 << 40, 2 << 30)),
        );
        assert_eq!(r.bytes(), 4 * MIB);
        assert!(matches!(r.limit, RoomLimit::Cache { held, .. } if held == 46 * MIB));
        // Over the bound: no room, not an underflow.
        let r = room_of(100 * MIB, 0, 100 * MIB, 64 * MIB, None);
        assert_eq!(r.bytes(), 0);
        assert!(r.tight());
        // The disk binds: 20 MiB free, 16 MiB reserve.
        let r = room_of(10 * MIB, 0, 10 * MIB, 10 << 30, Some((20 * MIB, 16 * MIB)));
        assert_eq!(r.bytes(), 4 * MIB);
        assert!(matches!(r.limit, RoomLimit::Disk { .. }));
        let r = room_of(10 * MIB, 0, 10 * MIB, 10 << 30, Some((10 * MIB, 16 * MIB)));
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn pins_must_leave_room() {
        assert!(pin_fits(32 * MIB, 64 * MIB));
        assert!(pin_fits(60 * MIB, 64 * MIB));
        assert!(!pin_fits(61 * MIB, 64 * MIB));
        assert!(!pin_fits(300 * MIB, 64 * MIB));
    }

    #[test]
    fn peer_buffers_shrink_with_a_small_cache() {
        assert_eq!(peer_receive_buffer(64 * MIB), MIB as u32);
        assert_eq!(peer_receive_buffer(4 * MIB), 256 << 10);
        assert_eq!(peer_receive_buffer(1 << 40), 4 << 20);
        assert!(peer_receive_buffer(1 << 30) < 32 << 20);
    }

    #[test]
    fn statvfs_reads_this_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = disk_space(dir.path()).unwrap();
        assert!(total > 0 && free <= total);
        assert!(disk_space(Path::new("/no/such/dir")).is_err());
    }
}
