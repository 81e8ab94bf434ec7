//! `bae::torrent::PieceHashes` against torrents made by libtorrent (python3-libtorrent
//! for v1, v2-only and hybrid; bae's own creator for hybrid): every piece of the real
//! content passes, a piece with one changed byte fails, and metadata without v2 piece
//! layers (as a magnet's may be) falls back to v1 or says it cannot check.

mod common;

use bae::model::{FileLayout, FileSpan, Geometry, PieceIndex};
use bae::torrent::bencode::{self, Value};
use bae::torrent::{
    create_torrent, parse_metainfo, HashKind, Metainfo, PieceCheck, PieceHashes, TorrentLayout,
};
use common::swarm::{expected_stream, make_album, python_torrent};

const PIECE_LEN: u64 = 64 * 1024;
/// Multi-file, with files of several pieces (partial last piece and block), of exactly
/// one piece, and smaller than a piece (2 blocks, and less than one block).
const ALBUM: &[(&str, usize)] = &[
    ("01 - Long.flac", 300_001),
    ("02 - Piece.flac", 65_536),
    ("03 - Short.flac", 20_000),
    ("cover.jpg", 5_000),
    ("extra/notes.txt", 131_073),
];

fn file_layout(l: &TorrentLayout) -> (Geometry, FileLayout) {
    let mut off = 0;
    let spans = l
        .files
        .iter()
        .map(|f| {
            let s = FileSpan {
                offset: off,
                len: f.len,
                pad: f.pad,
            };
            off += f.len;
            s
        })
        .collect();
    (
        Geometry::new(l.total_len, l.piece_len).unwrap(),
        FileLayout::new(spans, l.total_len).unwrap(),
    )
}

fn hashes_of(meta: &Metainfo, bytes: &[u8]) -> PieceHashes {
    let (g, files) = file_layout(&meta.layout);
    PieceHashes::new(bytes, g, &files).unwrap()
}

fn piece<'a>(stream: &'a [u8], g: &Geometry, p: u32) -> &'a [u8] {
    let r = g.piece_range(PieceIndex(p));
    &stream[r.start as usize..r.end as usize]
}

/// Every piece of `stream` passes; one flipped byte in the data of each piece fails
/// with `kind`.
fn assert_checks(h: &PieceHashes, meta: &Metainfo, stream: &[u8], kind: HashKind) {
    let (g, files) = file_layout(&meta.layout);
    assert_eq!(h.num_pieces(), g.num_pieces());
    for p in 0..g.num_pieces() {
        let data = piece(stream, &g, p);
        assert_eq!(h.check(PieceIndex(p), data), PieceCheck::Ok, "piece {p}");
        // Flip the last byte of the piece that belongs to a data file.
        let r = g.piece_range(PieceIndex(p));
        let in_data = files
            .files_of_range(r.clone())
            .into_iter()
            .rfind(|(f, _, _)| !files.file(*f).unwrap().pad)
            .unwrap();
        let span = files.file(in_data.0).unwrap();
        let at = (span.offset + in_data.1 + in_data.2 - 1 - r.start) as usize;
        let mut bad = data.to_vec();
        bad[at] ^= 0x01;
        assert_eq!(
            h.check(PieceIndex(p), &bad),
            PieceCheck::Mismatch(kind),
            "piece {p}"
        );
    }
    // Wrong lengths and indices are reported, not panics.
    assert!(matches!(
        h.check(PieceIndex(g.num_pieces()), b""),
        PieceCheck::CannotCheck(_)
    ));
    assert!(matches!(
        h.check(PieceIndex(0), &stream[..10]),
        PieceCheck::CannotCheck(_)
    ));
}

struct Made {
    _dir: tempfile::TempDir,
    meta: Metainfo,
    bytes: Vec<u8>,
    stream: Vec<u8>,
}

fn python_made(mode: &str) -> Made {
    let dir = tempfile::tempdir().unwrap();
    let album = make_album(dir.path(), "Hash Album", ALBUM, 7);
    let out = dir.path().join("a.torrent");
    let (bytes, _) = python_torrent(&album, &out, PIECE_LEN, mode);
    let meta = parse_metainfo(&bytes).unwrap();
    let stream = expected_stream(&album, &meta.layout);
    Made {
        _dir: dir,
        meta,
        bytes,
        stream,
    }
}

/// The metainfo with its top-level `piece layers` entry removed.
fn without_piece_layers(bytes: &[u8]) -> Vec<u8> {
    let Value::Dict(top) = bencode::decode(bytes).unwrap() else {
        panic!("not a dict")
    };
    let Some(Value::Dict(layers)) = top.get(b"piece layers") else {
        panic!("no piece layers")
    };
    let start = layers.raw.as_ptr() as usize - bytes.as_ptr() as usize;
    let key = b"12:piece layers";
    let key_at = start - key.len();
    assert_eq!(&bytes[key_at..start], key);
    let mut out = bytes[..key_at].to_vec();
    out.extend_from_slice(&bytes[start + layers.raw.len()..]);
    out
}

/// The metainfo with the v1 `pieces` entry of its info dictionary removed.
fn without_v1_pieces(bytes: &[u8]) -> Vec<u8> {
    let Value::Dict(top) = bencode::decode(bytes).unwrap() else {
        panic!("not a dict")
    };
    let pieces = top.dict(b"info").unwrap().bytes(b"pieces").unwrap();
    let start = pieces.as_ptr() as usize - bytes.as_ptr() as usize;
    let key = format!("6:pieces{}:", pieces.len());
    let key_at = start - key.len();
    assert_eq!(&bytes[key_at..start], key.as_bytes());
    let mut out = bytes[..key_at].to_vec();
    out.extend_from_slice(&bytes[start + pieces.len()..]);
    out
}

#[test]
fn v1_torrents_are_checked_with_sha1() {
    for mode in ["v1", "v1pad"] {
        let m = python_made(mode);
        let h = hashes_of(&m.meta, &m.bytes);
        assert!(h.has_v1() && !h.has_v2(), "{mode}");
        assert_eq!(h.info_hash_v1(), m.meta.info_hash_v1());
        assert_checks(&h, &m.meta, &m.stream, HashKind::V1);
    }
}

#[test]
fn v2_only_torrents_are_checked_with_merkle_trees() {
    let m = python_made("v2");
    let h = hashes_of(&m.meta, &m.bytes);
    assert!(!h.has_v1() && h.has_v2());
    assert_eq!(h.info_hash_v2(), m.meta.info_hash_v2());
    assert_checks(&h, &m.meta, &m.stream, HashKind::V2);

    // Bytes after a file's end in its last piece are pad: they must be zeros.
    let (g, files) = file_layout(&m.meta.layout);
    let pad = files
        .files()
        .iter()
        .find(|f| f.pad && f.len > 0)
        .expect("libtorrent aligns v2 files with pad files");
    let p = (pad.offset / g.piece_len()) as u32;
    let r = g.piece_range(PieceIndex(p));
    let mut data = piece(&m.stream, &g, p).to_vec();
    data[(pad.offset - r.start) as usize] = 1;
    assert_eq!(
        h.check(PieceIndex(p), &data),
        PieceCheck::Mismatch(HashKind::Pad)
    );

    // Without piece layers, files of one piece are still checked by their root; the
    // pieces of longer files cannot be.
    let bare = without_piece_layers(&m.bytes);
    let h = hashes_of(&m.meta, &bare);
    let mut checked = 0;
    let mut unchecked = 0;
    for p in 0..g.num_pieces() {
        let r = h.check(PieceIndex(p), piece(&m.stream, &g, p));
        assert_eq!(h.can_check(PieceIndex(p)), r == PieceCheck::Ok, "piece {p}");
        match r {
            PieceCheck::Ok => checked += 1,
            PieceCheck::CannotCheck(_) => unchecked += 1,
            other => panic!("piece {p}: {other:?}"),
        }
    }
    // Single-piece files: 02, 03, cover. Multi-piece: 01 (5 pieces), notes (3).
    assert_eq!((checked, unchecked), (3, 8));
}

#[test]
fn hybrid_torrents_are_checked_with_both() {
    let m = python_made("hybrid");
    let h = hashes_of(&m.meta, &m.bytes);
    assert!(h.has_v1() && h.has_v2() && h.v2_unusable().is_none());
    assert_eq!(h.info_hash_v1(), m.meta.info_hash_v1());
    assert_eq!(h.info_hash_v2(), m.meta.info_hash_v2());
    assert_checks(&h, &m.meta, &m.stream, HashKind::V1);

    // The v2 half on its own (v1 `pieces` taken out) checks every piece too.
    let v2_half = without_v1_pieces(&m.bytes);
    let h2 = hashes_of(&m.meta, &v2_half);
    assert!(!h2.has_v1() && h2.has_v2());
    assert_checks(&h2, &m.meta, &m.stream, HashKind::V2);

    // A magnet's metadata may lack piece layers: v1 still checks every piece.
    let bare = without_piece_layers(&m.bytes);
    let h = hashes_of(&m.meta, &bare);
    assert_checks(&h, &m.meta, &m.stream, HashKind::V1);
}

#[test]
fn bae_created_torrents_are_hybrid_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let album = make_album(dir.path(), "Own Album", ALBUM, 11);
    let bytes = create_torrent(&album, Some(PIECE_LEN), &[]).unwrap();
    let meta = parse_metainfo(&bytes).unwrap();
    let stream = expected_stream(&album, &meta.layout);
    let h = hashes_of(&meta, &bytes);
    assert!(h.has_v1() && h.has_v2());
    assert_checks(&h, &meta, &stream, HashKind::V1);
}

#[test]
fn metainfo_that_does_not_fit_the_layout_is_refused() {
    let m = python_made("hybrid");
    let (g, files) = file_layout(&m.meta.layout);
    // Another piece length.
    let other = Geometry::new(g.total_len(), 2 * PIECE_LEN).unwrap();
    assert!(PieceHashes::new(&m.bytes, other, &files).is_err());
    // Garbage and truncations are errors, never panics.
    for cut in [0, 1, 10, m.bytes.len() / 2, m.bytes.len() - 1] {
        assert!(
            PieceHashes::new(&m.bytes[..cut], g, &files).is_err(),
            "{cut}"
        );
    }
    assert!(PieceHashes::new(b"de", g, &files).is_err());
}
