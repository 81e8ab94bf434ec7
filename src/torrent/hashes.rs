//! The torrent's own piece hashes, read from its bencoded metainfo (the bytes the
//! catalog keeps), so that bae can check bytes it did not get from libtorrent's hasher:
//! `bae import` hashes what it copies, `bae verify` re-checks what the cache holds.
//!
//! - v1 (BEP 3): `pieces` is one SHA-1 per piece of the content stream, pad bytes
//!   included (as zeros).
//! - v2 (BEP 52): each non-empty file has a `pieces root`, the root of a SHA-256 Merkle
//!   tree over its 16 KiB blocks (the last block hashed as it is, missing leaves are 32
//!   zero bytes); `piece layers` holds, for each file larger than one piece, the layer
//!   of that tree where one hash covers one piece. A file of at most one piece has no
//!   layer: its root, over the next power of two of its blocks, is the check. Pieces never
//!   straddle files (pads align every file to a piece), so v2 pieces map to stream
//!   pieces through the file layout.
//!
//! Invariants: nothing here panics on hostile metainfo (the parser is bounded, every
//! length is checked before it is used); piece layers are not covered by the info hash,
//! so a layer is only used after its own root was recomputed and matched; a hybrid
//! torrent is checked against both hash versions it can, and a piece passes only when
//! every check that could run passed.

use sha1::{Digest, Sha1};
use sha2::Sha256;

use super::bencode::{self, BencodeError, Dict, Value};
use crate::model::{FileLayout, Geometry, PieceIndex};

/// BitTorrent v2 leaf size.
pub const BLOCK_LEN_BYTES: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HashesError {
    #[error("metainfo is not valid bencode: {0}")]
    Bencode(#[from] BencodeError),
    #[error("metainfo has no info dictionary")]
    NoInfo,
    #[error("metainfo piece length {found:?} does not match the torrent's {expected}")]
    PieceLen { found: Option<i64>, expected: u64 },
    #[error("metainfo `pieces` holds {found} bytes; {pieces} pieces need {}", *pieces as u64 * 20)]
    V1Pieces { found: usize, pieces: u32 },
    #[error("metainfo v2 hashes are unusable: {0}")]
    V2(String),
    #[error("metainfo has neither v1 `pieces` nor a v2 file tree")]
    NoHashes,
}

/// Which hash a piece failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKind {
    /// SHA-1 of the whole piece (BEP 3).
    V1,
    /// SHA-256 Merkle root of the piece's blocks (BEP 52).
    V2,
    /// Bytes after a v2 file's end within its last piece (pad) are not zero.
    Pad,
}

impl std::fmt::Display for HashKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HashKind::V1 => "v1 SHA-1",
            HashKind::V2 => "v2 Merkle",
            HashKind::Pad => "zero padding",
        })
    }
}

/// The outcome of checking one piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PieceCheck {
    Ok,
    Mismatch(HashKind),
    /// No hash covers this piece (say, a magnet's metadata without v2 piece layers).
    CannotCheck(String),
}

#[derive(Clone, Debug)]
enum Layer {
    /// The file fits in one piece: the pieces root itself is the piece's hash.
    Single,
    Hashes(Vec<[u8; 32]>),
    Missing(String),
}

#[derive(Clone, Debug)]
struct V2File {
    first_piece: u32,
    num_pieces: u32,
    len: u64,
    root: [u8; 32],
    layer: Layer,
}

/// Expected hashes of every piece of one torrent.
#[derive(Clone, Debug)]
pub struct PieceHashes {
    geometry: Geometry,
    v1: Option<Vec<[u8; 20]>>,
    /// Non-empty v2 files, in stream order.
    v2: Option<Vec<V2File>>,
    /// Why a torrent with a v2 part is checked with v1 only.
    v2_unusable: Option<String>,
    info_hash_v1: Option<[u8; 20]>,
    info_hash_v2: Option<[u8; 32]>,
}

impl PieceHashes {
    /// Reads the hashes of `metainfo` (a bencoded .torrent) for a torrent with the given
    /// geometry and file layout (pad files included, as the catalog records them).
    pub fn new(
        metainfo: &[u8],
        geometry: Geometry,
        files: &FileLayout,
    ) -> Result<PieceHashes, HashesError> {
        let (top, _) = bencode::decode_prefix(metainfo)?;
        let Value::Dict(top) = top else {
            return Err(HashesError::NoInfo);
        };
        let info = top.dict(b"info").ok_or(HashesError::NoInfo)?;
        let piece_len = info.int(b"piece length");
        if piece_len.and_then(|l| u64::try_from(l).ok()) != Some(geometry.piece_len()) {
            return Err(HashesError::PieceLen {
                found: piece_len,
                expected: geometry.piece_len(),
            });
        }
        let num_pieces = geometry.num_pieces();
        let v1 = match info.bytes(b"pieces") {
            Some(p) => {
                if p.len() as u64 != u64::from(num_pieces) * 20 {
                    return Err(HashesError::V1Pieces {
                        found: p.len(),
                        pieces: num_pieces,
                    });
                }
                Some(
                    p.chunks_exact(20)
                        .map(|h| h.try_into().unwrap_or([0; 20]))
                        .collect::<Vec<[u8; 20]>>(),
                )
            }
            None => None,
        };
        let has_v2 = info.int(b"meta version") == Some(2) && info.get(b"file tree").is_some();
        let (v2, v2_unusable) = if has_v2 {
            match v2_files(&top, info, geometry, files) {
                Ok(f) => (Some(f), None),
                Err(reason) if v1.is_some() => (None, Some(reason)),
                Err(reason) => return Err(HashesError::V2(reason)),
            }
        } else {
            (None, None)
        };
        if v1.is_none() && v2.is_none() {
            return Err(HashesError::NoHashes);
        }
        Ok(PieceHashes {
            geometry,
            info_hash_v1: v1.as_ref().map(|_| Sha1::digest(info.raw).into()),
            info_hash_v2: has_v2.then(|| Sha256::digest(info.raw).into()),
            v1,
            v2,
            v2_unusable,
        })
    }

    /// SHA-1 of the info dictionary when the torrent has a v1 part: compare with the
    /// info hash the torrent is known by, so the hashes are the torrent's own.
    pub fn info_hash_v1(&self) -> Option<[u8; 20]> {
        self.info_hash_v1
    }

    /// SHA-256 of the info dictionary when the torrent has a v2 part.
    pub fn info_hash_v2(&self) -> Option<[u8; 32]> {
        self.info_hash_v2
    }

    pub fn has_v1(&self) -> bool {
        self.v1.is_some()
    }

    pub fn has_v2(&self) -> bool {
        self.v2.is_some()
    }

    /// Why a torrent with v2 hashes is checked with v1 only, if it is.
    pub fn v2_unusable(&self) -> Option<&str> {
        self.v2_unusable.as_deref()
    }

    pub fn num_pieces(&self) -> u32 {
        self.geometry.num_pieces()
    }

    /// Whether some hash covers piece `piece` (v1, or a usable v2 tree for its file).
    pub fn can_check(&self, piece: PieceIndex) -> bool {
        if piece.0 >= self.geometry.num_pieces() {
            return false;
        }
        if self.v1.is_some() {
            return true;
        }
        self.v2.as_deref().is_some_and(|files| {
            let i = files.partition_point(|f| f.first_piece + f.num_pieces <= piece.0);
            files
                .get(i)
                .is_some_and(|f| f.first_piece <= piece.0 && !matches!(f.layer, Layer::Missing(_)))
        })
    }

    /// Checks piece `piece` given its bytes in stream order (pad bytes as zeros).
    pub fn check(&self, piece: PieceIndex, data: &[u8]) -> PieceCheck {
        if piece.0 >= self.geometry.num_pieces() {
            return PieceCheck::CannotCheck(format!("piece {} is out of range", piece.0));
        }
        let expected = self.geometry.piece_size(piece);
        if data.len() as u64 != expected {
            return PieceCheck::CannotCheck(format!(
                "piece {} has {expected} bytes, {} given",
                piece.0,
                data.len()
            ));
        }
        let mut checked = false;
        if let Some(v1) = &self.v1 {
            let h: [u8; 20] = Sha1::digest(data).into();
            if v1.get(piece.0 as usize) != Some(&h) {
                return PieceCheck::Mismatch(HashKind::V1);
            }
            checked = true;
        }
        let mut reason = self.v2_unusable.clone();
        if let Some(files) = &self.v2 {
            match self.check_v2(files, piece, data) {
                PieceCheck::Ok => checked = true,
                PieceCheck::CannotCheck(r) => reason = Some(r),
                m @ PieceCheck::Mismatch(_) => return m,
            }
        }
        if checked {
            PieceCheck::Ok
        } else {
            PieceCheck::CannotCheck(reason.unwrap_or_else(|| "no hash for this piece".into()))
        }
    }

    fn check_v2(&self, files: &[V2File], piece: PieceIndex, data: &[u8]) -> PieceCheck {
        let i = files.partition_point(|f| f.first_piece + f.num_pieces <= piece.0);
        let Some(f) = files.get(i).filter(|f| f.first_piece <= piece.0) else {
            return PieceCheck::CannotCheck(format!("piece {} is in no v2 file", piece.0));
        };
        let k = piece.0 - f.first_piece;
        let piece_len = self.geometry.piece_len();
        let in_file = (f.len - u64::from(k) * piece_len).min(piece_len) as usize;
        let Some((body, pad)) = data.split_at_checked(in_file) else {
            return PieceCheck::CannotCheck(format!("piece {} is shorter than its file", piece.0));
        };
        if pad.iter().any(|&b| b != 0) {
            return PieceCheck::Mismatch(HashKind::Pad);
        }
        let leaves = block_hashes(body);
        let (width, expected) = match &f.layer {
            Layer::Single => (leaves.len().next_power_of_two(), &f.root),
            Layer::Hashes(h) => match h.get(k as usize) {
                Some(h) => ((piece_len / BLOCK_LEN_BYTES) as usize, h),
                None => return PieceCheck::CannotCheck("piece layer too short".into()),
            },
            Layer::Missing(r) => return PieceCheck::CannotCheck(r.clone()),
        };
        if merkle_root(leaves, width, [0; 32]) == *expected {
            PieceCheck::Ok
        } else {
            PieceCheck::Mismatch(HashKind::V2)
        }
    }
}

/// The v2 files of the torrent matched with the layout's data files, with their
/// validated piece layers. An `Err` says why v2 cannot be used.
fn v2_files(
    top: &Dict<'_>,
    info: &Dict<'_>,
    geometry: Geometry,
    layout: &FileLayout,
) -> Result<Vec<V2File>, String> {
    let piece_len = geometry.piece_len();
    if !piece_len.is_power_of_two() {
        return Err(format!("piece length {piece_len} is not a power of two"));
    }
    let Some(Value::Dict(tree)) = info.get(b"file tree") else {
        return Err("`file tree` is not a dictionary".into());
    };
    let mut tree_files = Vec::new();
    walk_tree(tree, &mut tree_files)?;
    let data_files: Vec<_> = layout
        .files()
        .iter()
        .filter(|f| !f.pad && f.len > 0)
        .collect();
    if data_files.len() != tree_files.len() {
        return Err(format!(
            "the file tree has {} non-empty files, the torrent {}",
            tree_files.len(),
            data_files.len()
        ));
    }
    let layers = match top.get(b"piece layers") {
        Some(Value::Dict(d)) => Some(d),
        _ => None,
    };
    let mut out = Vec::with_capacity(data_files.len());
    for (span, (len, root)) in data_files.iter().zip(tree_files) {
        if span.len != len {
            return Err(format!(
                "a file of {len} bytes in the file tree is {} bytes in the torrent",
                span.len
            ));
        }
        if span.offset % piece_len != 0 {
            return Err(format!(
                "a file at stream offset {} does not start on a piece",
                span.offset
            ));
        }
        let num_pieces = len.div_ceil(piece_len);
        let layer = if num_pieces == 1 {
            Layer::Single
        } else {
            match layers.and_then(|l| l.bytes(&root)) {
                None => Layer::Missing("the metainfo has no piece layer for this file".into()),
                Some(b) if b.len() as u64 != num_pieces * 32 => Layer::Missing(format!(
                    "piece layer holds {} bytes, {num_pieces} pieces need {}",
                    b.len(),
                    num_pieces * 32
                )),
                Some(b) => {
                    let hashes: Vec<[u8; 32]> = b
                        .chunks_exact(32)
                        .map(|h| h.try_into().unwrap_or([0; 32]))
                        .collect();
                    if layer_root(&hashes, piece_len) == root {
                        Layer::Hashes(hashes)
                    } else {
                        Layer::Missing("piece layer does not match the file's pieces root".into())
                    }
                }
            }
        };
        out.push(V2File {
            first_piece: (span.offset / piece_len) as u32,
            num_pieces: num_pieces as u32,
            len,
            root,
            layer,
        });
    }
    if out
        .last()
        .is_some_and(|f| f.first_piece + f.num_pieces > geometry.num_pieces())
    {
        return Err("the file tree runs past the end of the torrent".into());
    }
    Ok(out)
}

/// Non-empty files of a v2 file tree in order, as (length, pieces root). A node whose
/// dictionary has the empty key is a file; any other node is a directory.
fn walk_tree(node: &Dict<'_>, out: &mut Vec<(u64, [u8; 32])>) -> Result<(), String> {
    for (name, child) in &node.entries {
        let Value::Dict(child) = child else {
            return Err("a file tree entry is not a dictionary".into());
        };
        if name.is_empty() {
            let len = child
                .int(b"length")
                .and_then(|l| u64::try_from(l).ok())
                .ok_or("a file in the file tree has no valid length")?;
            if len == 0 {
                continue;
            }
            let root: [u8; 32] = child
                .bytes(b"pieces root")
                .and_then(|r| r.try_into().ok())
                .ok_or("a non-empty file in the file tree has no 32-byte pieces root")?;
            out.push((len, root));
        } else {
            walk_tree(child, out)?;
        }
    }
    Ok(())
}

/// SHA-256 of each 16 KiB block of `data` (the last one may be shorter).
fn block_hashes(data: &[u8]) -> Vec<[u8; 32]> {
    data.chunks(BLOCK_LEN_BYTES as usize)
        .map(|b| Sha256::digest(b).into())
        .collect()
}

/// Root of a binary Merkle tree of `width` leaves (a power of two): `leaves` first,
/// then `pad` for the rest.
fn merkle_root(mut level: Vec<[u8; 32]>, width: usize, pad: [u8; 32]) -> [u8; 32] {
    let width = width.max(1);
    level.resize(width.max(level.len()), pad);
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| {
                let mut h = Sha256::new();
                h.update(pair[0]);
                h.update(pair.get(1).unwrap_or(&pad));
                h.finalize().into()
            })
            .collect();
    }
    level[0]
}

/// The pieces root a piece layer implies: the layer padded (to a power of two) with
/// the root of a piece made only of zero leaves, then reduced.
fn layer_root(layer: &[[u8; 32]], piece_len: u64) -> [u8; 32] {
    let per_piece = (piece_len / BLOCK_LEN_BYTES) as usize;
    let pad = merkle_root(Vec::new(), per_piece, [0; 32]);
    merkle_root(layer.to_vec(), layer.len().next_power_of_two(), pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    #[test]
    fn merkle_pads_leaves_with_zero_hashes() {
        let a = sha(&[b"a"]);
        let b = sha(&[b"b"]);
        let c = sha(&[b"c"]);
        assert_eq!(merkle_root(vec![a], 1, [0; 32]), a);
        assert_eq!(merkle_root(vec![a, b], 2, [0; 32]), sha(&[&a, &b]));
        let z = [0u8; 32];
        let expect = sha(&[&sha(&[&a, &b]), &sha(&[&c, &z])]);
        assert_eq!(merkle_root(vec![a, b, c], 4, [0; 32]), expect);
        // A wider tree: the zero leaves' parents are hashes of zeros, not zeros.
        let zz = sha(&[&z, &z]);
        let wide = sha(&[&sha(&[&sha(&[&a, &b]), &sha(&[&c, &z])]), &sha(&[&zz, &zz])]);
        assert_eq!(merkle_root(vec![a, b, c], 8, [0; 32]), wide);
    }

    #[test]
    fn a_layer_reduces_to_the_root_of_the_whole_tree() {
        // A file of 5 blocks with 2-block pieces: 3 pieces; the full tree has 8 leaves.
        let data: Vec<u8> = (0..5 * BLOCK_LEN_BYTES as usize - 100)
            .map(|i| (i % 251) as u8)
            .collect();
        let leaves = block_hashes(&data);
        assert_eq!(leaves.len(), 5);
        let root = merkle_root(leaves.clone(), 8, [0; 32]);
        let piece_len = 2 * BLOCK_LEN_BYTES;
        let layer: Vec<[u8; 32]> = leaves
            .chunks(2)
            .map(|c| merkle_root(c.to_vec(), 2, [0; 32]))
            .collect();
        assert_eq!(layer.len(), 3);
        assert_eq!(layer_root(&layer, piece_len), root);
    }
}
