//! `bae import`: copying a local album folder's bytes into the store as if they had
//! been downloaded. The torrent was just made from these files by libtorrent (which
//! hashed them); each file's size and mtime are checked again after the copy, so a file
//! that changed in between fails the import instead of storing bytes that do not match.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::catalog::Layout;
use crate::model::{PieceIndex, TorrentId};
use crate::store::Store;

/// Writes the files of `layout` found under `dir` into the store and marks every piece
/// verified. Returns the number of bytes stored.
pub fn store_content(
    store: &Arc<Store>,
    id: TorrentId,
    dir: &Path,
    layout: &Layout,
) -> anyhow::Result<u64> {
    let g = store.register_torrent(id)?;
    let mut stored = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for f in layout.files.iter().filter(|f| !f.pad && f.len > 0) {
        let mut path = dir.to_path_buf();
        for c in &f.path {
            path.push(c);
        }
        let before =
            std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if before.len() != f.len {
            bail!("{} changed since the torrent was made", path.display());
        }
        let mut file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut off = 0u64;
        while off < f.len {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                bail!(
                    "{} is shorter than when the torrent was made",
                    path.display()
                );
            }
            let n = n.min((f.len - off) as usize);
            store.write(id, f.stream_offset + off, &buf[..n])?;
            off += n as u64;
        }
        let after = std::fs::metadata(&path)?;
        if after.len() != before.len() || after.modified().ok() != before.modified().ok() {
            bail!("{} changed while it was being imported", path.display());
        }
        stored += f.len;
    }
    let pieces: Vec<PieceIndex> = (0..g.num_pieces()).map(PieceIndex).collect();
    store.pieces_verified(id, &pieces);
    store.flush()?;
    Ok(stored)
}
