//! Byte geometry of a torrent's content stream.
//!
//! The stream is the concatenation of the torrent's files in torrent order, pad files
//! included (for v2 and hybrid torrents libtorrent inserts pads so each file starts on a
//! piece boundary). Pieces are `piece_len`-sized windows of the stream, chunks are
//! `CHUNK_LEN`-sized windows; both have a short last member. Every function here is
//! total over valid input and is checked against a brute-force model in the tests.

use std::ops::Range;

use super::ids::{ChunkIndex, FileIndex, PieceIndex};

/// Size of one chunk: the unit of caching, encryption and upload.
pub const CHUNK_LEN: u64 = 1 << 20;

/// Smallest and largest piece sizes we accept (BitTorrent blocks are 16 KiB).
pub const MIN_PIECE_LEN: u64 = 16 * 1024;
pub const MAX_PIECE_LEN: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    #[error("torrent has no content")]
    Empty,
    #[error("piece length {0} is not a multiple of 16 KiB between 16 KiB and 64 MiB")]
    BadPieceLen(u64),
    #[error("piece count {pieces} does not match content length {total_len} with piece length {piece_len}")]
    PieceCount {
        pieces: u64,
        total_len: u64,
        piece_len: u64,
    },
    #[error(
        "file {index} at offset {offset} does not follow the previous file (expected {expected})"
    )]
    FileGap {
        index: usize,
        offset: u64,
        expected: u64,
    },
    #[error("files add up to {files_len} bytes but the torrent has {total_len}")]
    FilesLen { files_len: u64, total_len: u64 },
}

/// Pieces and chunks of one torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    total_len: u64,
    piece_len: u64,
}

/// One contiguous part of a stream range that falls within a single chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub chunk: ChunkIndex,
    /// Offset of the span within its chunk.
    pub offset_in_chunk: u64,
    /// Offset of the span within the content stream.
    pub stream_offset: u64,
    pub len: u64,
}

impl Geometry {
    pub fn new(total_len: u64, piece_len: u64) -> Result<Self, GeometryError> {
        if total_len == 0 {
            return Err(GeometryError::Empty);
        }
        if !(MIN_PIECE_LEN..=MAX_PIECE_LEN).contains(&piece_len) || piece_len % MIN_PIECE_LEN != 0 {
            return Err(GeometryError::BadPieceLen(piece_len));
        }
        Ok(Geometry {
            total_len,
            piece_len,
        })
    }

    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Nominal piece length (every piece but possibly the last).
    pub fn piece_len(&self) -> u64 {
        self.piece_len
    }

    pub fn num_pieces(&self) -> u32 {
        self.total_len.div_ceil(self.piece_len) as u32
    }

    pub fn num_chunks(&self) -> u32 {
        self.total_len.div_ceil(CHUNK_LEN) as u32
    }

    /// Stream bytes of piece `p`. Empty when `p` is out of range.
    pub fn piece_range(&self, p: PieceIndex) -> Range<u64> {
        window(u64::from(p.0), self.piece_len, self.total_len)
    }

    /// Stream bytes of chunk `c`. Empty when `c` is out of range.
    pub fn chunk_range(&self, c: ChunkIndex) -> Range<u64> {
        window(u64::from(c.0), CHUNK_LEN, self.total_len)
    }

    pub fn chunk_len(&self, c: ChunkIndex) -> u64 {
        let r = self.chunk_range(c);
        r.end - r.start
    }

    pub fn piece_size(&self, p: PieceIndex) -> u64 {
        let r = self.piece_range(p);
        r.end - r.start
    }

    /// Chunks that overlap piece `p` (a piece may span several chunks).
    pub fn chunks_of_piece(&self, p: PieceIndex) -> Range<u32> {
        covering(self.piece_range(p), CHUNK_LEN)
    }

    /// Pieces that overlap chunk `c`: the chunk is complete when all are verified.
    pub fn pieces_of_chunk(&self, c: ChunkIndex) -> Range<u32> {
        covering(self.chunk_range(c), self.piece_len)
    }

    /// Stream range of `len` bytes at `offset` within piece `p`, clamped to the piece.
    pub fn piece_block(&self, p: PieceIndex, offset: u64, len: u64) -> Range<u64> {
        clamp_sub(self.piece_range(p), offset, len)
    }

    /// Splits a stream range (clamped to the stream) into per-chunk spans, in order.
    pub fn chunk_spans(&self, range: Range<u64>) -> impl Iterator<Item = ChunkSpan> {
        let end = range.end.min(self.total_len);
        let mut pos = range.start.min(end);
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = pos / CHUNK_LEN;
            let chunk_end = ((chunk + 1) * CHUNK_LEN).min(end);
            let span = ChunkSpan {
                chunk: ChunkIndex(chunk as u32),
                offset_in_chunk: pos - chunk * CHUNK_LEN,
                stream_offset: pos,
                len: chunk_end - pos,
            };
            pos = chunk_end;
            Some(span)
        })
    }
}

/// One file's place in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpan {
    pub offset: u64,
    pub len: u64,
    /// A v1/v2 alignment pad: zeros, not shown to users.
    pub pad: bool,
}

/// The files of a torrent laid end to end; validated to tile the stream exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    files: Vec<FileSpan>,
    total_len: u64,
}

impl FileLayout {
    /// Builds a layout from files in torrent order; offsets must be contiguous from 0.
    pub fn new(files: Vec<FileSpan>, total_len: u64) -> Result<Self, GeometryError> {
        let mut expected = 0u64;
        for (index, f) in files.iter().enumerate() {
            if f.offset != expected {
                return Err(GeometryError::FileGap {
                    index,
                    offset: f.offset,
                    expected,
                });
            }
            expected = f.offset.saturating_add(f.len);
        }
        if expected != total_len {
            return Err(GeometryError::FilesLen {
                files_len: expected,
                total_len,
            });
        }
        Ok(FileLayout { files, total_len })
    }

    pub fn files(&self) -> &[FileSpan] {
        &self.files
    }

    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    pub fn file(&self, f: FileIndex) -> Option<&FileSpan> {
        self.files.get(f.0 as usize)
    }

    /// Stream range for `len` bytes at `offset` in file `f`, clamped to the file's end
    /// (a read past EOF is short, as with any file). Empty for an unknown file.
    pub fn file_block(&self, f: FileIndex, offset: u64, len: u64) -> Range<u64> {
        match self.file(f) {
            Some(s) => clamp_sub(s.offset..s.offset + s.len, offset, len),
            None => 0..0,
        }
    }

    /// Files overlapping a stream range, as (file, offset in file, length), in order.
    /// Zero-length files are skipped: they hold no bytes.
    pub fn files_of_range(&self, range: Range<u64>) -> Vec<(FileIndex, u64, u64)> {
        let end = range.end.min(self.total_len);
        let start = range.start.min(end);
        if start >= end {
            return Vec::new();
        }
        // First file whose end is past `start`.
        let first = self.files.partition_point(|f| f.offset + f.len <= start);
        self.files[first..]
            .iter()
            .enumerate()
            .take_while(|(_, f)| f.offset < end)
            .filter(|(_, f)| f.len > 0)
            .map(|(i, f)| {
                let s = start.max(f.offset);
                let e = end.min(f.offset + f.len);
                (FileIndex((first + i) as u32), s - f.offset, e - s)
            })
            .collect()
    }
}

/// `[i·unit, (i+1)·unit) ∩ [0, total)`, empty when out of range.
fn window(i: u64, unit: u64, total: u64) -> Range<u64> {
    let start = i.saturating_mul(unit).min(total);
    let end = i.saturating_add(1).saturating_mul(unit).min(total);
    start..end
}

/// Indices of the `unit`-windows that overlap `r` (empty for an empty range).
fn covering(r: Range<u64>, unit: u64) -> Range<u32> {
    if r.start >= r.end {
        return 0..0;
    }
    (r.start / unit) as u32..r.end.div_ceil(unit) as u32
}

/// `len` bytes at `offset` inside `outer`, clamped to `outer`.
fn clamp_sub(outer: Range<u64>, offset: u64, len: u64) -> Range<u64> {
    let start = outer.start.saturating_add(offset).min(outer.end);
    let end = start.saturating_add(len).min(outer.end);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Geometry::new(0, 256 * KIB), Err(GeometryError::Empty));
        assert!(Geometry::new(10, 1000).is_err());
        assert!(Geometry::new(10, 8 * KIB).is_err());
        assert!(Geometry::new(10, 128 * MIB).is_err());
        assert!(Geometry::new(10, 48 * KIB).is_ok());
    }

    #[test]
    fn short_last_piece_and_chunk() {
        let g = Geometry::new(5 * MIB / 2, 768 * KIB).unwrap();
        assert_eq!(g.num_pieces(), 4);
        assert_eq!(g.num_chunks(), 3);
        assert_eq!(g.piece_range(PieceIndex(3)), 3 * 768 * KIB..5 * MIB / 2);
        assert_eq!(g.chunk_len(ChunkIndex(2)), MIB / 2);
        // Piece 1 = [768K, 1536K) spans chunks 0 and 1.
        assert_eq!(g.chunks_of_piece(PieceIndex(1)), 0..2);
        // Chunk 1 = [1M, 2M) overlaps pieces 1 and 2.
        assert_eq!(g.pieces_of_chunk(ChunkIndex(1)), 1..3);
        assert_eq!(g.piece_range(PieceIndex(4)), 5 * MIB / 2..5 * MIB / 2);
    }

    #[test]
    fn file_layout_validates_and_maps() {
        let files = vec![
            FileSpan {
                offset: 0,
                len: 10,
                pad: false,
            },
            FileSpan {
                offset: 10,
                len: 0,
                pad: false,
            },
            FileSpan {
                offset: 10,
                len: 6,
                pad: true,
            },
            FileSpan {
                offset: 16,
                len: 4,
                pad: false,
            },
        ];
        let l = FileLayout::new(files.clone(), 20).unwrap();
        assert_eq!(l.file_block(FileIndex(3), 1, 100), 17..20);
        assert_eq!(
            l.files_of_range(8..18),
            vec![
                (FileIndex(0), 8, 2),
                (FileIndex(2), 0, 6),
                (FileIndex(3), 0, 2)
            ]
        );
        assert!(FileLayout::new(files.clone(), 21).is_err());
        let mut gap = files;
        gap[3].offset = 17;
        assert!(FileLayout::new(gap, 21).is_err());
    }

    fn geometry() -> impl Strategy<Value = Geometry> {
        // Piece sizes 16 KiB … 16 MiB in 16 KiB steps (powers of two and not), content
        // from one byte to a few dozen MiB.
        (1u64..=1024, 1u64..40 * MIB)
            .prop_map(|(blocks, total)| Geometry::new(total, blocks * 16 * KIB).unwrap())
    }

    proptest! {
        #[test]
        fn pieces_and_chunks_agree_with_brute_force(g in geometry(), probe in 0u64..40 * MIB) {
            let byte = probe % g.total_len();
            let piece = PieceIndex((byte / g.piece_len()) as u32);
            let chunk = ChunkIndex((byte / CHUNK_LEN) as u32);
            prop_assert!(g.piece_range(piece).contains(&byte));
            prop_assert!(g.chunk_range(chunk).contains(&byte));
            // The piece containing the byte overlaps the chunk containing it, both ways.
            prop_assert!(g.chunks_of_piece(piece).contains(&chunk.0));
            prop_assert!(g.pieces_of_chunk(chunk).contains(&piece.0));
            // Brute force: the overlap relation computed from ranges.
            let pr = g.piece_range(piece);
            let brute: Vec<u32> = (0..g.num_chunks())
                .filter(|&c| { let cr = g.chunk_range(ChunkIndex(c)); cr.start < pr.end && pr.start < cr.end })
                .collect();
            prop_assert_eq!(g.chunks_of_piece(piece).collect::<Vec<_>>(), brute);
            let cr = g.chunk_range(chunk);
            let first = cr.start / g.piece_len();
            let brute: Vec<u32> = (first as u32..g.num_pieces())
                .take_while(|&p| g.piece_range(PieceIndex(p)).start < cr.end)
                .collect();
            prop_assert_eq!(g.pieces_of_chunk(chunk).collect::<Vec<_>>(), brute);
        }

        #[test]
        fn ranges_tile_the_stream(g in geometry()) {
            let mut pos = 0;
            for p in 0..g.num_pieces() {
                let r = g.piece_range(PieceIndex(p));
                prop_assert_eq!(r.start, pos);
                prop_assert!(r.end > r.start);
                pos = r.end;
            }
            prop_assert_eq!(pos, g.total_len());
            let sum: u64 = (0..g.num_chunks()).map(|c| g.chunk_len(ChunkIndex(c))).sum();
            prop_assert_eq!(sum, g.total_len());
        }

        #[test]
        fn spans_cover_a_block_exactly(g in geometry(), p in 0u32..5000, off in 0u64..16 * MIB, len in 0u64..17 * MIB) {
            let p = PieceIndex(p % g.num_pieces());
            let r = g.piece_block(p, off, len);
            prop_assert!(r.start >= g.piece_range(p).start && r.end <= g.piece_range(p).end);
            let spans: Vec<_> = g.chunk_spans(r.clone()).collect();
            let mut pos = r.start;
            for s in &spans {
                prop_assert_eq!(s.stream_offset, pos);
                prop_assert!(s.len > 0);
                prop_assert_eq!(u64::from(s.chunk.0) * CHUNK_LEN + s.offset_in_chunk, pos);
                prop_assert!(s.offset_in_chunk + s.len <= g.chunk_len(s.chunk));
                pos += s.len;
            }
            prop_assert_eq!(pos, r.end);
        }

        #[test]
        fn files_map_back_and_forth(lens in proptest::collection::vec(0u64..3 * MIB, 1..12), start in 0u64..36 * MIB, len in 0u64..8 * MIB) {
            let mut off = 0;
            let files: Vec<FileSpan> = lens.iter().map(|&l| { let f = FileSpan { offset: off, len: l, pad: false }; off += l; f }).collect();
            let total = off;
            let layout = FileLayout::new(files, total).unwrap();
            let range = start.min(total)..(start + len).min(total);
            let parts = layout.files_of_range(range.clone());
            // Each part maps back through file_block to a contiguous stream piece.
            let mut pos = range.start;
            for (f, off_in_file, l) in &parts {
                let back = layout.file_block(*f, *off_in_file, *l);
                prop_assert_eq!(back.start, pos);
                prop_assert_eq!(back.end - back.start, *l);
                pos = back.end;
            }
            prop_assert_eq!(pos, range.end);
            // Brute force: which non-empty files contain at least one byte of the range.
            let brute: Vec<u32> = layout.files().iter().enumerate()
                .filter(|(_, f)| f.len > 0 && f.offset < range.end && range.start < f.offset + f.len)
                .map(|(i, _)| i as u32).collect();
            prop_assert_eq!(parts.iter().map(|p| p.0 .0).collect::<Vec<_>>(), brute);
        }
    }
}
