//! `bae import`: copying a local album folder's bytes into the store as if they had
//! been downloaded.
//!
//! Invariant: a piece is recorded verified only when the very bytes written into the
//! store matched the torrent's own piece hash. The files are read once; every block
//! read is written to the store and fed to the piece being hashed, so a file that
//! changed after the torrent was made (even with its size and mtime kept) fails the
//! import. On any failure the torrent's chunks are removed from the store, and nothing
//! is recorded verified; the caller removes the catalog row.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::{CatalogError, Layout};
use crate::model::{FileLayout, Geometry, GeometryError, PieceIndex, TorrentId};
use crate::store::{Store, StoreError};
use crate::torrent::{HashKind, HashesError, PieceCheck, PieceHashes};

/// Read size: one chunk.
const READ_LEN_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {found} bytes, the torrent says {expected}: not the torrent's file")]
    WrongSize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{0} is shorter than the torrent says (it changed while being imported)")]
    Shorter(PathBuf),
    #[error(
        "piece {piece} does not match the torrent's {kind} hash: {files} changed since the \
         torrent was made; nothing was imported"
    )]
    Mismatch {
        piece: u32,
        kind: HashKind,
        files: String,
    },
    #[error("piece {piece} cannot be checked ({reason}); nothing was imported")]
    CannotCheck { piece: u32, reason: String },
    #[error("the torrent names an unsafe path {0:?}")]
    UnsafePath(Vec<String>),
    #[error("the torrent has no metainfo to check the files against")]
    NoMetainfo,
    #[error("the torrent's piece hashes: {0}")]
    Hashes(#[from] HashesError),
    #[error("the torrent's layout: {0}")]
    Geometry(#[from] GeometryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The piece hashes of a torrent recorded with `layout`.
pub fn piece_hashes(metainfo: &[u8], layout: &Layout) -> Result<PieceHashes, ImportError> {
    let (g, files) = file_layout(layout)?;
    Ok(PieceHashes::new(metainfo, g, &files)?)
}

/// The model's view of a catalog layout.
pub fn file_layout(layout: &Layout) -> Result<(Geometry, FileLayout), GeometryError> {
    layout.geometry_and_files()
}

/// Writes the files of `layout` found under `dir` into the store, checking every piece
/// against the torrent's hashes (from the catalog's metainfo), and marks them verified.
/// Returns the number of bytes stored. On error the store holds nothing of the torrent.
/// `progress(done, total)` is called as bytes are stored (of the non-pad total).
pub fn store_content(
    store: &Arc<Store>,
    id: TorrentId,
    dir: &Path,
    layout: &Layout,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImportError> {
    let result = copy_checked(store, id, dir, layout, progress);
    if result.is_err() {
        if let Err(e) = store.remove_torrent(id) {
            tracing::warn!(torrent = %id, error = %e, "could not clean up a failed import");
        }
    }
    result
}

fn copy_checked(
    store: &Arc<Store>,
    id: TorrentId,
    dir: &Path,
    layout: &Layout,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImportError> {
    let metainfo = store
        .catalog()
        .metainfo(id)?
        .ok_or(ImportError::NoMetainfo)?;
    let hashes = piece_hashes(&metainfo, layout)?;
    let (_, files) = file_layout(layout)?;
    let g = store.register_torrent(id)?;
    let mut hasher = PieceFeed {
        hashes: &hashes,
        geometry: g,
        files: &files,
        layout,
        buf: Vec::with_capacity(g.piece_len() as usize),
        next: 0,
    };
    let mut stored = 0u64;
    let total: u64 = layout.files.iter().filter(|f| !f.pad).map(|f| f.len).sum();
    progress(0, total);
    let mut buf = vec![0u8; READ_LEN_BYTES];
    for f in layout.files.iter().filter(|f| f.len > 0) {
        if f.pad {
            // Pad files are zeros in the stream and never stored.
            let zeros = [0u8; 16 * 1024];
            let mut left = f.len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                hasher.feed(&zeros[..n])?;
                left -= n as u64;
            }
            continue;
        }
        let path = safe_path(dir, &f.path)?;
        let io = |source| ImportError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let found = file.metadata().map_err(io)?.len();
        if found != f.len {
            return Err(ImportError::WrongSize {
                path,
                found,
                expected: f.len,
            });
        }
        let mut off = 0u64;
        while off < f.len {
            let want = (f.len - off).min(buf.len() as u64) as usize;
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => return Err(ImportError::Shorter(path)),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            // The bytes hashed are the bytes stored: one read, two uses.
            store.write(id, f.stream_offset + off, &buf[..n])?;
            hasher.feed(&buf[..n])?;
            off += n as u64;
            progress(stored + off, total);
        }
        stored += f.len;
    }
    if hasher.next != g.num_pieces() || !hasher.buf.is_empty() {
        return Err(ImportError::CannotCheck {
            piece: hasher.next,
            reason: "the files do not fill the torrent".into(),
        });
    }
    let pieces: Vec<PieceIndex> = (0..g.num_pieces()).map(PieceIndex).collect();
    store.pieces_verified(id, &pieces);
    store.flush()?;
    Ok(stored)
}

/// Joins a torrent's (untrusted) path components under `dir`, refusing any that could
/// leave it.
fn safe_path(dir: &Path, components: &[String]) -> Result<PathBuf, ImportError> {
    let bad =
        |c: &String| c.is_empty() || c == "." || c == ".." || c.contains('/') || c.contains('\0');
    if components.is_empty() || components.iter().any(bad) {
        return Err(ImportError::UnsafePath(components.to_vec()));
    }
    Ok(components.iter().fold(dir.to_path_buf(), |p, c| p.join(c)))
}

/// Collects the stream into whole pieces and checks each as soon as it is complete.
struct PieceFeed<'a> {
    hashes: &'a PieceHashes,
    geometry: Geometry,
    files: &'a FileLayout,
    layout: &'a Layout,
    buf: Vec<u8>,
    next: u32,
}

impl PieceFeed<'_> {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), ImportError> {
        while !data.is_empty() {
            let piece = PieceIndex(self.next);
            let size = self.geometry.piece_size(piece) as usize;
            if size == 0 {
                return Err(ImportError::CannotCheck {
                    piece: self.next,
                    reason: "the files run past the end of the torrent".into(),
                });
            }
            let take = (size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == size {
                match self.hashes.check(piece, &self.buf) {
                    PieceCheck::Ok => {}
                    PieceCheck::Mismatch(kind) => {
                        return Err(ImportError::Mismatch {
                            piece: piece.0,
                            kind,
                            files: self.files_of(piece),
                        })
                    }
                    PieceCheck::CannotCheck(reason) => {
                        return Err(ImportError::CannotCheck {
                            piece: piece.0,
                            reason,
                        })
                    }
                }
                self.buf.clear();
                self.next += 1;
            }
        }
        Ok(())
    }

    /// The data files a piece covers, for the error message.
    fn files_of(&self, piece: PieceIndex) -> String {
        let names: Vec<String> = self
            .files
            .files_of_range(self.geometry.piece_range(piece))
            .into_iter()
            .filter_map(|(f, _, _)| self.layout.files.get(f.0 as usize))
            .filter(|f| !f.pad)
            .map(|f| f.path.join("/"))
            .collect();
        if names.is_empty() {
            "the content".into()
        } else {
            names.join(", ")
        }
    }
}
