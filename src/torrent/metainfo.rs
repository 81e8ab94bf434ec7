//! Reading and writing torrent metadata with libtorrent's own parser, so bae sees a
//! torrent exactly as the session will: .torrent files (v1, v2, hybrid), magnet links,
//! and new torrents made from a directory (`bae import`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::torrent::bridge::ffi;
use crate::torrent::storage::{LayoutFile, TorrentLayout};
use crate::torrent::TorrentError;

/// A parsed .torrent file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metainfo {
    /// The torrent's name, from the torrent: untrusted.
    pub name: String,
    /// Geometry, files and info hashes.
    pub layout: TorrentLayout,
    /// The bencoded torrent, to add it again later.
    pub torrent_bytes: Vec<u8>,
}

impl Metainfo {
    pub fn info_hash_v1(&self) -> Option<[u8; 20]> {
        self.layout.info_hash_v1
    }

    pub fn info_hash_v2(&self) -> Option<[u8; 32]> {
        self.layout.info_hash_v2
    }
}

/// A parsed magnet link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MagnetInfo {
    pub info_hash_v1: Option<[u8; 20]>,
    pub info_hash_v2: Option<[u8; 32]>,
    /// The `dn` parameter, if any: untrusted.
    pub display_name: Option<String>,
    pub trackers: Vec<String>,
    /// `x.pe` peers.
    pub peers: Vec<SocketAddr>,
}

pub(crate) fn hash20(bytes: &[u8]) -> Option<[u8; 20]> {
    bytes.try_into().ok()
}

pub(crate) fn hash32(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

pub(crate) fn layout_from_ffi(
    layout: ffi::Layout,
    v1: Option<[u8; 20]>,
    v2: Option<[u8; 32]>,
) -> TorrentLayout {
    TorrentLayout {
        piece_len: layout.piece_len,
        total_len: layout.total_len,
        files: layout
            .files
            .into_iter()
            .map(|f| LayoutFile {
                path: f.path,
                len: f.len,
                pad: f.pad,
                mtime: f.mtime,
            })
            .collect(),
        info_hash_v1: v1,
        info_hash_v2: v2,
    }
}

/// Parses a .torrent file.
pub fn parse_metainfo(bytes: &[u8]) -> Result<Metainfo, TorrentError> {
    let parsed =
        ffi::parse_torrent(bytes).map_err(|e| TorrentError::InvalidTorrent(e.what().to_owned()))?;
    let v1 = hash20(&parsed.info_hash_v1);
    let v2 = hash32(&parsed.info_hash_v2);
    Ok(Metainfo {
        name: parsed.name,
        layout: layout_from_ffi(parsed.layout, v1, v2),
        torrent_bytes: bytes.to_vec(),
    })
}

/// Parses a magnet link.
pub fn parse_magnet(uri: &str) -> Result<MagnetInfo, TorrentError> {
    if !uri.starts_with("magnet:") {
        return Err(TorrentError::InvalidMagnet("not a magnet: link".into()));
    }
    let parsed =
        ffi::parse_magnet_uri(uri).map_err(|e| TorrentError::InvalidMagnet(e.what().to_owned()))?;
    Ok(MagnetInfo {
        info_hash_v1: hash20(&parsed.info_hash_v1),
        info_hash_v2: hash32(&parsed.info_hash_v2),
        display_name: Some(parsed.name).filter(|n| !n.is_empty()),
        trackers: parsed.trackers,
        peers: parsed.peers.iter().filter_map(|p| p.parse().ok()).collect(),
    })
}

/// Makes a hybrid (v1 + v2) torrent of `dir`, with file modification times. `piece_len`
/// must be a power of two of at least 16 KiB; None lets libtorrent choose.
pub fn create_torrent(
    dir: &Path,
    piece_len: Option<u64>,
    trackers: &[String],
) -> Result<Vec<u8>, TorrentError> {
    create_torrent_with_progress(dir, piece_len, trackers, &mut |_, _| {})
}

/// libtorrent's hashing callback is a plain function pointer: it counts here.
static HASHED: AtomicU32 = AtomicU32::new(0);
static PIECES: AtomicU32 = AtomicU32::new(0);
/// One torrent made at a time: the counters have one owner.
static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn hash_progress(done: u32, total: u32) {
    PIECES.store(total, Ordering::Relaxed);
    HASHED.store(done, Ordering::Relaxed);
}

/// [`create_torrent`], telling `progress(pieces hashed, pieces)` as it hashes.
pub fn create_torrent_with_progress(
    dir: &Path,
    piece_len: Option<u64>,
    trackers: &[String],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>, TorrentError> {
    let create_err = |reason: String| TorrentError::Create {
        path: dir.to_path_buf(),
        reason,
    };
    if let Some(len) = piece_len {
        if len < 16 * 1024 || !len.is_power_of_two() || len > 1 << 30 {
            return Err(create_err(format!(
                "piece size {len} is not a power of two between 16 KiB and 1 GiB"
            )));
        }
    }
    if !dir.is_dir() {
        return Err(create_err("not a directory".into()));
    }
    let dir_str = dir
        .to_str()
        .ok_or_else(|| create_err("path is not valid UTF-8".into()))?;
    let trackers: Vec<String> = trackers.to_vec();
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    HASHED.store(0, Ordering::Relaxed);
    PIECES.store(0, Ordering::Relaxed);
    // Hashing runs on its own thread; this one shows its counts as they move.
    std::thread::scope(|scope| {
        let work = scope.spawn(|| {
            ffi::make_torrent(dir_str, piece_len.unwrap_or(0), &trackers, hash_progress)
                .map_err(|e| create_err(e.what().to_owned()))
        });
        let mut shown = (0, 0);
        while !work.is_finished() {
            let now = (
                HASHED.load(Ordering::Relaxed),
                PIECES.load(Ordering::Relaxed),
            );
            if now != shown && now.1 > 0 {
                progress(u64::from(now.0), u64::from(now.1));
                shown = now;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let r = work
            .join()
            .unwrap_or_else(|_| Err(create_err("hashing panicked".into())));
        if r.is_ok() {
            let total = PIECES.load(Ordering::Relaxed);
            progress(u64::from(total), u64::from(total));
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_torrents_are_clear_errors() {
        for bytes in [&b""[..], b"not bencode", b"d4:infod4:name1:xee", b"le"] {
            let err = parse_metainfo(bytes).unwrap_err();
            assert!(matches!(err, TorrentError::InvalidTorrent(_)), "{err}");
        }
    }

    #[test]
    fn magnets_are_parsed_and_bad_ones_rejected() {
        let uri = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=Album&tr=http%3A%2F%2Ft.example%2Fannounce";
        let m = parse_magnet(uri).unwrap();
        assert_eq!(m.info_hash_v1.unwrap()[0], 0x01);
        assert_eq!(m.info_hash_v2, None);
        assert_eq!(m.display_name.as_deref(), Some("Album"));
        assert_eq!(m.trackers, vec!["http://t.example/announce".to_owned()]);
        for bad in ["", "http://x", "magnet:?dn=x", "magnet:?xt=urn:btih:zz"] {
            assert!(
                matches!(parse_magnet(bad), Err(TorrentError::InvalidMagnet(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn create_torrent_rejects_bad_input() {
        let tmp = std::env::temp_dir().join("bae-no-such-dir-for-create");
        assert!(matches!(
            create_torrent(&tmp, None, &[]),
            Err(TorrentError::Create { .. })
        ));
        let here = std::env::var("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
            .join("cpp");
        assert!(matches!(
            create_torrent(&here, Some(48 << 10), &[]),
            Err(TorrentError::Create { .. })
        ));
    }
}
