//! A small bencode reader for the parts of a .torrent that bae checks itself (piece
//! hashes, the raw info dictionary). libtorrent stays the parser that decides whether a
//! torrent is acceptable; this one only has to be safe on anything it is handed.
//!
//! Invariants: never panics and never recurses deeper than [`MAX_DEPTH`]; every value
//! borrows from the input (no copies of piece hashes); integers must fit an `i64` and
//! follow BEP 3 (no leading zeros, no `-0`); a byte string's length can never run past
//! the end of the input. Memory is proportional to the input's length.

/// Nesting deeper than this is refused (libtorrent's own limit is 100 as well).
pub const MAX_DEPTH: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    #[error("bencode ends early at byte {0}")]
    Truncated(usize),
    #[error("bencode: unexpected byte {byte:#04x} at {at}")]
    Unexpected { byte: u8, at: usize },
    #[error("bencode: bad integer at byte {0}")]
    BadInt(usize),
    #[error("bencode: bad string length at byte {0}")]
    BadLength(usize),
    #[error("bencode: dictionary key at byte {0} is not a string")]
    BadKey(usize),
    #[error("bencode: nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// One decoded value, borrowing from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    Dict(Dict<'a>),
}

/// A dictionary in input order, with the raw bytes it was decoded from (the info hash
/// is the hash of exactly those bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dict<'a> {
    pub entries: Vec<(&'a [u8], Value<'a>)>,
    pub raw: &'a [u8],
}

impl<'a> Dict<'a> {
    /// The first value under `key` (duplicate keys are malformed; the first one wins).
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn bytes(&self, key: &[u8]) -> Option<&'a [u8]> {
        match self.get(key) {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    pub fn int(&self, key: &[u8]) -> Option<i64> {
        match self.get(key) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn dict(&self, key: &[u8]) -> Option<&Dict<'a>> {
        match self.get(key) {
            Some(Value::Dict(d)) => Some(d),
            _ => None,
        }
    }
}

/// Decodes the value at the start of `input`; whatever follows it is ignored (as
/// libtorrent does). Returns the value and the number of bytes it took.
pub fn decode_prefix(input: &[u8]) -> Result<(Value<'_>, usize), BencodeError> {
    let mut p = Parser { input, pos: 0 };
    let v = p.value(0)?;
    Ok((v, p.pos))
}

/// Decodes exactly one value that spans all of `input`.
pub fn decode(input: &[u8]) -> Result<Value<'_>, BencodeError> {
    let (v, used) = decode_prefix(input)?;
    match input.get(used) {
        None => Ok(v),
        Some(&byte) => Err(BencodeError::Unexpected { byte, at: used }),
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::Truncated(self.pos))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, BencodeError> {
        if depth >= MAX_DEPTH {
            return Err(BencodeError::TooDeep);
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.int_until(b'e')?;
                Ok(Value::Int(n))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                let start = self.pos;
                self.pos += 1;
                let mut entries = Vec::new();
                while self.peek()? != b'e' {
                    let at = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(BencodeError::BadKey(at));
                    }
                    let k = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    entries.push((k, v));
                }
                self.pos += 1;
                Ok(Value::Dict(Dict {
                    entries,
                    raw: &self.input[start..self.pos],
                }))
            }
            byte => Err(BencodeError::Unexpected { byte, at: self.pos }),
        }
    }

    /// `<len>:<bytes>`.
    fn bytes(&mut self) -> Result<&'a [u8], BencodeError> {
        let at = self.pos;
        let len = self
            .int_until(b':')
            .map_err(|_| BencodeError::BadLength(at))?;
        let len = usize::try_from(len).map_err(|_| BencodeError::BadLength(at))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.input.len())
            .ok_or(BencodeError::Truncated(self.input.len()))?;
        let b = &self.input[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    /// A decimal integer terminated by `end` (consumed).
    fn int_until(&mut self, end: u8) -> Result<i64, BencodeError> {
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest
            .iter()
            .position(|&b| b == end)
            .ok_or(BencodeError::Truncated(self.input.len()))?;
        let digits = &rest[..len];
        let (neg, body) = match digits.split_first() {
            Some((b'-', body)) => (true, body),
            _ => (false, digits),
        };
        let well_formed = !body.is_empty()
            && body.iter().all(u8::is_ascii_digit)
            && (body == b"0" || body[0] != b'0')
            && !(neg && body == b"0");
        if !well_formed {
            return Err(BencodeError::BadInt(start));
        }
        let mut n: i64 = 0;
        for &d in body {
            let d = i64::from(d - b'0');
            n = n
                .checked_mul(10)
                .and_then(|n| {
                    if neg {
                        n.checked_sub(d)
                    } else {
                        n.checked_add(d)
                    }
                })
                .ok_or(BencodeError::BadInt(start))?;
        }
        self.pos = start + len + 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_the_four_kinds() {
        let v = decode(b"d3:agei-42e4:listl1:ai0ee4:name4:spame").unwrap();
        let Value::Dict(d) = v else { panic!() };
        assert_eq!(d.int(b"age"), Some(-42));
        assert_eq!(d.bytes(b"name"), Some(&b"spam"[..]));
        assert_eq!(
            d.get(b"list"),
            Some(&Value::List(vec![Value::Bytes(b"a"), Value::Int(0)]))
        );
        assert_eq!(d.raw.len(), 38);
        assert_eq!(decode(b"0:").unwrap(), Value::Bytes(b""));
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap(),
            Value::Int(i64::MIN)
        );
    }

    #[test]
    fn raw_dict_bytes_are_exact() {
        let input = b"d4:infod6:lengthi5eee";
        let Value::Dict(top) = decode(input).unwrap() else {
            panic!()
        };
        assert_eq!(top.dict(b"info").unwrap().raw, b"d6:lengthi5ee");
    }

    #[test]
    fn malformed_input_is_an_error() {
        let bad: &[&[u8]] = &[
            b"",
            b"i",
            b"ie",
            b"i-e",
            b"i-0e",
            b"i01e",
            b"i1x2e",
            b"i9223372036854775808e",
            b"i-9223372036854775809e",
            b"i99999999999999999999999e",
            b"5:abc",
            b"99999999999999999999:a",
            b"-1:a",
            b"01:a",
            b"l",
            b"li1e",
            b"d",
            b"d1:a",
            b"di1ei2ee",
            b"dle",
            b"x",
            b"3:abcextra",
        ];
        for input in bad {
            assert!(
                decode(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut deep = vec![b'l'; 1_000_000];
        deep.extend(std::iter::repeat_n(b'e', 1_000_000));
        assert_eq!(decode(&deep), Err(BencodeError::TooDeep));
        let mut ok = vec![b'l'; MAX_DEPTH - 1];
        ok.extend(std::iter::repeat_n(b'e', MAX_DEPTH - 1));
        assert!(decode(&ok).is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&input);
        }

        #[test]
        fn mutated_torrents_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let mut t = b"d8:announce9:http://x/4:infod6:lengthi70000e4:name3:abc12:piece lengthi65536e6:pieces40:0123456789012345678901234567890123456789ee".to_vec();
            let p = pos % t.len();
            t[p] = byte;
            t.truncate(cut.max(1).min(t.len()));
            let _ = decode_prefix(&t);
        }
    }
}
