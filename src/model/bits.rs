//! Compact per-piece and per-chunk state: what a torrent costs in memory.
//!
//! A library holds tens of millions of chunks, so the per-chunk state the daemon keeps
//! is two bits, and a torrent whose chunks are all in one state (every chunk uploaded,
//! or none complete) costs no per-chunk memory at all. Counts are kept alongside, so
//! "how many" never walks the bits.

use super::ChunkState;

/// A set of piece (or chunk) indices in `0..len`, with its size kept.
#[derive(Clone, Debug)]
pub struct BitSet {
    len: u32,
    count: u32,
    /// `None`: the set is empty or full, as `count` says (no allocation for a complete
    /// torrent, nor a flag: a library has a set or two per torrent).
    words: Option<Box<[u64]>>,
}

/// Equal as sets, whatever the representation.
impl PartialEq for BitSet {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self.count == other.count
            && (0..self.len).all(|i| self.contains(i) == other.contains(i))
    }
}

impl Eq for BitSet {}

impl BitSet {
    pub fn empty(len: u32) -> Self {
        BitSet {
            len,
            count: 0,
            words: None,
        }
    }

    pub fn full(len: u32) -> Self {
        BitSet {
            len,
            count: len,
            words: None,
        }
    }

    pub fn from_bools(bits: &[bool]) -> Self {
        let mut s = BitSet::empty(bits.len() as u32);
        for (i, &b) in bits.iter().enumerate() {
            if b {
                s.insert(i as u32);
            }
        }
        s
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many indices are in the set.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    pub fn contains(&self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        match &self.words {
            None => self.count == self.len,
            Some(w) => w[(i / 64) as usize] >> (i % 64) & 1 == 1,
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        let (len, full) = (self.len, self.count == self.len);
        self.words.get_or_insert_with(|| {
            let fill = if full { u64::MAX } else { 0 };
            vec![fill; len.div_ceil(64) as usize].into_boxed_slice()
        })
    }

    /// Adds `i`; returns whether it was new. Out-of-range indices are ignored.
    pub fn insert(&mut self, i: u32) -> bool {
        if i >= self.len || self.contains(i) {
            return false;
        }
        self.words_mut()[(i / 64) as usize] |= 1 << (i % 64);
        self.count += 1;
        self.compact();
        true
    }

    /// Removes `i`; returns whether it was there.
    pub fn remove(&mut self, i: u32) -> bool {
        if !self.contains(i) {
            return false;
        }
        self.words_mut()[(i / 64) as usize] &= !(1 << (i % 64));
        self.count -= 1;
        self.compact();
        true
    }

    /// Drops the words once the set is uniform again.
    fn compact(&mut self) {
        if self.count == self.len || self.count == 0 {
            self.words = None;
        }
    }

    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.len).map(|i| self.contains(i)).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }
}

/// The [`ChunkState`] of every chunk of a torrent, two bits each, with counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkStates {
    len: u32,
    complete: u32,
    uploaded: u32,
    /// `None`: every chunk is in `uniform`.
    packed: Option<Box<[u8]>>,
    uniform: ChunkState,
}

fn code(s: ChunkState) -> u8 {
    match s {
        ChunkState::Partial => 0,
        ChunkState::Complete => 1,
        ChunkState::Uploaded => 2,
    }
}

fn decode(c: u8) -> ChunkState {
    match c {
        1 => ChunkState::Complete,
        2 => ChunkState::Uploaded,
        _ => ChunkState::Partial,
    }
}

impl ChunkStates {
    pub fn uniform(len: u32, state: ChunkState) -> Self {
        let (complete, uploaded) = match state {
            ChunkState::Partial => (0, 0),
            ChunkState::Complete => (len, 0),
            ChunkState::Uploaded => (len, len),
        };
        ChunkStates {
            len,
            complete,
            uploaded,
            packed: None,
            uniform: state,
        }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u32) -> Option<ChunkState> {
        if i >= self.len {
            return None;
        }
        Some(match &self.packed {
            None => self.uniform,
            Some(p) => decode(p[(i / 4) as usize] >> ((i % 4) * 2) & 3),
        })
    }

    /// Sets chunk `i`'s state; returns the old one (`None` out of range).
    pub fn set(&mut self, i: u32, state: ChunkState) -> Option<ChunkState> {
        let old = self.get(i)?;
        if old == state {
            return Some(old);
        }
        let (len, uniform) = (self.len, code(self.uniform));
        let packed = self.packed.get_or_insert_with(|| {
            let byte = uniform * 0b0101_0101;
            vec![byte; len.div_ceil(4) as usize].into_boxed_slice()
        });
        let shift = (i % 4) * 2;
        let b = &mut packed[(i / 4) as usize];
        *b = (*b & !(3 << shift)) | (code(state) << shift);
        let count = |s: ChunkState| {
            (
                u32::from(s != ChunkState::Partial),
                u32::from(s == ChunkState::Uploaded),
            )
        };
        let (oc, ou) = count(old);
        let (nc, nu) = count(state);
        self.complete = self.complete + nc - oc;
        self.uploaded = self.uploaded + nu - ou;
        // Uniform again: drop the packed bits.
        let uniform = if self.uploaded == self.len {
            Some(ChunkState::Uploaded)
        } else if self.complete == 0 {
            Some(ChunkState::Partial)
        } else if self.complete == self.len && self.uploaded == 0 {
            Some(ChunkState::Complete)
        } else {
            None
        };
        if let Some(u) = uniform {
            self.packed = None;
            self.uniform = u;
        }
        Some(old)
    }

    /// Chunks not partial (complete or uploaded).
    pub fn complete(&self) -> u32 {
        self.complete
    }

    pub fn uploaded(&self) -> u32 {
        self.uploaded
    }

    /// Whether per-chunk memory is in use (tests, accounting).
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset_counts_and_stays_compact_when_uniform() {
        let mut s = BitSet::empty(130);
        assert!(s.words.is_none());
        assert!(s.insert(0));
        assert!(!s.insert(0));
        assert!(s.insert(129));
        assert!(!s.insert(130), "out of range");
        assert_eq!(s.count(), 2);
        assert!(s.contains(129) && !s.contains(128));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 129]);
        for i in 0..130 {
            s.insert(i);
        }
        assert!(s.is_full());
        assert!(s.words.is_none(), "a full set holds no words");
        assert!(s.remove(64));
        assert_eq!(s.count(), 129);
        assert!(!s.contains(64) && s.contains(63) && s.contains(65));
        assert_eq!(BitSet::from_bools(&s.to_bools()), s);
        let f = BitSet::full(3);
        assert!(f.contains(2) && !f.contains(3));
        assert_eq!(BitSet::full(0).count(), 0);
    }

    #[test]
    fn chunk_states_pack_two_bits_and_count() {
        let mut c = ChunkStates::uniform(9, ChunkState::Partial);
        assert!(!c.is_packed());
        assert_eq!(c.set(3, ChunkState::Complete), Some(ChunkState::Partial));
        assert!(c.is_packed());
        c.set(8, ChunkState::Uploaded);
        assert_eq!(c.get(3), Some(ChunkState::Complete));
        assert_eq!(c.get(8), Some(ChunkState::Uploaded));
        assert_eq!(c.get(4), Some(ChunkState::Partial));
        assert_eq!(c.get(9), None);
        assert_eq!(c.set(9, ChunkState::Uploaded), None);
        assert_eq!((c.complete(), c.uploaded()), (2, 1));
        for i in 0..9 {
            c.set(i, ChunkState::Uploaded);
        }
        assert!(!c.is_packed(), "all uploaded is uniform again");
        assert_eq!((c.complete(), c.uploaded()), (9, 9));
        c.set(0, ChunkState::Partial);
        assert_eq!(c.get(0), Some(ChunkState::Partial));
        assert_eq!(c.get(1), Some(ChunkState::Uploaded));
        assert_eq!((c.complete(), c.uploaded()), (8, 8));
    }
}
