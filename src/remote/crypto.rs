//! Sealing of remote objects: AES-256-GCM with a fresh random nonce per object, bound to
//! the object's identity through the associated data.
//!
//! Why: the remote is untrusted storage. An object that was altered, truncated, swapped
//! with another object, or sealed under another key must fail to open instead of
//! yielding wrong music or a wrong catalog.
//!
//! Invariants:
//! - Object layout (version 1): `b"BAE"` ‖ version byte `1` ‖ 12-byte nonce ‖ ciphertext ‖
//!   16-byte GCM tag. The header is not in the associated data because the version byte
//!   selects the algorithm; a changed header either fails to parse or fails the tag.
//! - Every object's associated data starts with a domain tag that names its kind, so an
//!   identity of one kind can never equal an identity of another kind.
//! - Nonces come from the thread-local CSPRNG (reseeded from the OS); with 96-bit random
//!   nonces the collision risk stays negligible far beyond any library's object count.
//! - Key bytes never appear in `Debug` output or logs, and are wiped on drop.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Length of a key in bytes (AES-256).
pub const KEY_LEN_BYTES: usize = 32;
/// `b"BAE"` followed by the format version.
const MAGIC: &[u8; 3] = b"BAE";
/// The only object format version this build writes and reads.
pub const OBJECT_VERSION: u8 = 1;
const NONCE_LEN_BYTES: usize = 12;
const TAG_LEN_BYTES: usize = 16;
/// Bytes before the ciphertext: magic, version, nonce.
pub const HEADER_LEN_BYTES: usize = MAGIC.len() + 1 + NONCE_LEN_BYTES;
/// Bytes a sealed object adds to its plaintext.
pub const OVERHEAD_BYTES: usize = HEADER_LEN_BYTES + TAG_LEN_BYTES;

/// Why an object could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Too short to hold a header and a tag, or not starting with the magic bytes.
    #[error("object is truncated or not a bae object ({len_bytes} bytes)")]
    BadHeader { len_bytes: usize },
    /// Written by a newer (or unknown) format version.
    #[error("object format version {0} is not supported by this build")]
    UnsupportedVersion(u8),
    /// Wrong key, altered bytes, or an object that belongs to another identity.
    #[error("object failed authentication (wrong key, corrupted, or swapped object)")]
    Authentication,
}

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} already exists; refusing to overwrite it")]
    AlreadyExists { path: PathBuf },
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not a bae key: {reason} (expected 64 hex characters)")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "key file {path} can be read by other users (mode {mode:o}); \
         run `chmod 600 {path}` (and consider the key exposed)"
    )]
    Exposed { path: PathBuf, mode: u32 },
}

/// A 256-bit object key with its expanded cipher state (ring's AES-GCM: the stitched
/// AES-NI + carry-less multiply code opens a 1 MiB chunk ~4× faster than the portable
/// crates, and the objects are the same standard AES-256-GCM).
#[derive(Clone)]
pub struct Key {
    bytes: [u8; KEY_LEN_BYTES],
    cipher: LessSafeKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(redacted)")
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        for byte in self.bytes.iter_mut() {
            // SAFETY: `byte` is a valid, aligned, exclusive reference into `self.bytes`.
            // Volatile so the wipe is not optimised away as a dead store.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

impl Key {
    /// A fresh random key from the OS-seeded CSPRNG.
    pub fn generate() -> Key {
        let mut bytes = [0u8; KEY_LEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Key::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN_BYTES]) -> Key {
        // A 32-byte key is always a valid AES-256 key.
        let cipher = match UnboundKey::new(&AES_256_GCM, &bytes) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => unreachable!("AES-256-GCM refused a {KEY_LEN_BYTES}-byte key"),
        };
        Key { bytes, cipher }
    }

    /// The key as 64 lowercase hex characters, the key file format. Handle with care.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// Parses 64 hex characters (surrounding whitespace such as a final newline allowed).
    pub fn from_hex(text: &str) -> Result<Key, String> {
        let text = text.trim();
        if text.len() != 2 * KEY_LEN_BYTES {
            return Err(format!("found {} characters", text.chars().count()));
        }
        let mut bytes = [0u8; KEY_LEN_BYTES];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| "not hexadecimal".to_string())?;
        Ok(Key::from_bytes(bytes))
    }

    /// Generates a key and writes it to `path` (mode 0600). Refuses to overwrite an
    /// existing file. The file appears complete or not at all: the key is written to a
    /// temporary file that is then hard-linked into place (which fails if `path` exists).
    pub fn write_new(path: &Path) -> Result<Key, KeyError> {
        let key = Key::generate();
        key.write_to(path)?;
        Ok(key)
    }

    /// Writes this key to a new file at `path` (mode 0600), as [`Key::write_new`] does.
    pub fn write_to(&self, path: &Path) -> Result<(), KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            return Err(KeyError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(".key.tmp-{:016x}", rand::rng().next_u64()));
        let contents = format!("{}\n", self.to_hex());
        let write_file = |target: &Path| -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(target)?;
            file.write_all(contents.as_bytes())?;
            file.sync_all()
        };
        let result = write_file(&tmp).and_then(|()| fs::hard_link(&tmp, path));
        // The temporary name is removed whether or not the link succeeded.
        let _ = fs::remove_file(&tmp);
        let result = match result {
            // File systems without hard links: create the file in place (still
            // exclusive and 0600, only not all-or-nothing on a crash).
            Err(e)
                if e.kind() == std::io::ErrorKind::Unsupported
                    || e.raw_os_error() == Some(libc::EPERM)
                    || e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                write_file(path)
            }
            other => other,
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(KeyError::AlreadyExists {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err(e)),
        }
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        Ok(())
    }

    /// Reads a key file: 64 hex characters and an optional newline. A file that group
    /// or others may access is refused: whoever can read it can read the library.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::metadata(path).map_err(io_err)?;
        if meta.len() > 256 {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                reason: format!("file is {} bytes long", meta.len()),
            });
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let raw = fs::read(path).map_err(io_err)?;
        let text = std::str::from_utf8(&raw).map_err(|_| KeyError::Malformed {
            path: path.to_path_buf(),
            reason: "not text".to_string(),
        })?;
        let body = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        if body.len() != 2 * KEY_LEN_BYTES || body.trim() != body {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                reason: format!("found {} characters", body.chars().count()),
            });
        }
        Key::from_hex(body).map_err(|reason| KeyError::Malformed {
            path: path.to_path_buf(),
            reason,
        })
    }
}

/// The identity a chunk object is bound to: a torrent-unique id chosen by the catalog,
/// the chunk index, and the plaintext length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkIdentity {
    pub torrent_uid: [u8; 16],
    pub index: u32,
    pub len_bytes: u32,
}

impl ChunkIdentity {
    /// Associated data for this chunk: `b"bae-chunk-v1\0"` ‖ uid ‖ index (BE) ‖ len (BE).
    pub fn aad(&self) -> Vec<u8> {
        ObjectIdentity::Chunk(*self).aad()
    }
}

/// What any remote object claims to be; sealed into its associated data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectIdentity {
    /// One chunk of one torrent's content.
    Chunk(ChunkIdentity),
    /// The encrypted catalog snapshot of one library (libraries made before the
    /// remote journal; read by restore only).
    Snapshot { library_uid: [u8; 16] },
    /// One metadata object of a library, bound to its object name so that moving an
    /// object to another name (another torrent's, an older journal's) fails.
    Meta { library_uid: [u8; 16], name: String },
}

impl ObjectIdentity {
    /// Domain-separated associated data. Each kind has its own tag and a fixed layout,
    /// so distinct identities always give distinct bytes.
    pub fn aad(&self) -> Vec<u8> {
        match self {
            ObjectIdentity::Chunk(c) => {
                let mut aad = Vec::with_capacity(13 + 16 + 8);
                aad.extend_from_slice(b"bae-chunk-v1\0");
                aad.extend_from_slice(&c.torrent_uid);
                aad.extend_from_slice(&c.index.to_be_bytes());
                aad.extend_from_slice(&c.len_bytes.to_be_bytes());
                aad
            }
            ObjectIdentity::Snapshot { library_uid } => {
                let mut aad = Vec::with_capacity(16 + 16);
                aad.extend_from_slice(b"bae-snapshot-v1\0");
                aad.extend_from_slice(library_uid);
                aad
            }
            ObjectIdentity::Meta { library_uid, name } => {
                let mut aad = Vec::with_capacity(12 + 16 + name.len());
                aad.extend_from_slice(b"bae-meta-v1\0");
                aad.extend_from_slice(library_uid);
                aad.extend_from_slice(name.as_bytes());
                aad
            }
        }
    }
}

/// Seals `plaintext` into a version-1 object bound to `aad`. One allocation: the
/// plaintext is copied once into the output buffer and encrypted there.
pub fn seal(key: &Key, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD_BYTES);
    out.extend_from_slice(MAGIC);
    out.push(OBJECT_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    // AES-GCM only fails for plaintexts beyond ~64 GiB, which callers never pass
    // (chunks are 1 MiB, snapshots far below that limit).
    let tag = match key.cipher.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut out[HEADER_LEN_BYTES..],
    ) {
        Ok(tag) => tag,
        Err(_) => panic!("AES-GCM plaintext of {} bytes too long", plaintext.len()),
    };
    out.extend_from_slice(tag.as_ref());
    out
}

/// Seals an object bound to `identity`.
pub fn seal_object(key: &Key, identity: &ObjectIdentity, plaintext: &[u8]) -> Vec<u8> {
    seal(key, &identity.aad(), plaintext)
}

/// Checks that `object` is long enough and carries a supported header.
fn parse(object: &[u8]) -> Result<(), CryptoError> {
    if object.len() < OVERHEAD_BYTES || &object[..MAGIC.len()] != MAGIC {
        return Err(CryptoError::BadHeader {
            len_bytes: object.len(),
        });
    }
    let version = object[MAGIC.len()];
    if version != OBJECT_VERSION {
        return Err(CryptoError::UnsupportedVersion(version));
    }
    Ok(())
}

/// Opens a sealed object, checking it against `aad`.
pub fn open(key: &Key, aad: &[u8], object: &[u8]) -> Result<Vec<u8>, CryptoError> {
    parse(object)?;
    let mut plain = object[HEADER_LEN_BYTES..].to_vec();
    let len = decrypt(key, aad, object_nonce(object), &mut plain)?;
    plain.truncate(len);
    Ok(plain)
}

/// Opens a sealed object in its own buffer, avoiding a copy of the plaintext.
pub fn open_in_place(key: &Key, aad: &[u8], mut object: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
    let plain = open_within(key, aad, &mut object)?;
    object.truncate(plain.end);
    object.drain(..plain.start);
    Ok(object)
}

/// Decrypts `object` where it lies and returns where the plaintext is in it (for a
/// caller that slices it out instead of moving it).
pub fn open_within(
    key: &Key,
    aad: &[u8],
    object: &mut [u8],
) -> Result<std::ops::Range<usize>, CryptoError> {
    parse(object)?;
    let nonce = object_nonce(object);
    let len = decrypt(key, aad, nonce, &mut object[HEADER_LEN_BYTES..])?;
    Ok(HEADER_LEN_BYTES..HEADER_LEN_BYTES + len)
}

/// Opens an object bound to `identity`.
pub fn open_object(
    key: &Key,
    identity: &ObjectIdentity,
    object: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    open(key, &identity.aad(), object)
}

/// The nonce of an object whose header was parsed.
fn object_nonce(object: &[u8]) -> [u8; NONCE_LEN_BYTES] {
    let mut nonce = [0u8; NONCE_LEN_BYTES];
    nonce.copy_from_slice(&object[MAGIC.len() + 1..HEADER_LEN_BYTES]);
    nonce
}

/// Decrypts `body` (ciphertext ‖ tag) where it lies; the plaintext's length on success.
fn decrypt(
    key: &Key,
    aad: &[u8],
    nonce: [u8; NONCE_LEN_BYTES],
    body: &mut [u8],
) -> Result<usize, CryptoError> {
    key.cipher
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
        .map(|plain| plain.len())
        .map_err(|_| CryptoError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn chunk(index: u32) -> ObjectIdentity {
        ObjectIdentity::Chunk(ChunkIdentity {
            torrent_uid: [7; 16],
            index,
            len_bytes: 100,
        })
    }

    fn sample() -> Vec<u8> {
        (0..100u32).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The objects are standard AES-256-GCM: test case 16 of the GCM specification
    /// (McGrew & Viega), laid out as a bae object, opens to its plaintext, and sealing
    /// with its nonce gives its ciphertext and tag. So objects written by any conforming
    /// implementation (the `aes-gcm` crate before) open with this one.
    #[test]
    fn objects_are_standard_aes_256_gcm() {
        let h = |s: &str| hex::decode(s).unwrap();
        let key = Key::from_bytes(
            h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
                .try_into()
                .unwrap(),
        );
        let plain = h(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let nonce = h("cafebabefacedbaddecaf888");
        let cipher = h(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                        8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        );
        let tag = h("76fc6ece0f4e1768cddf8853bb2d551b");
        let mut object = b"BAE\x01".to_vec();
        object.extend_from_slice(&nonce);
        object.extend_from_slice(&cipher);
        object.extend_from_slice(&tag);
        assert_eq!(open(&key, &aad, &object).unwrap(), plain);
        let mut body = plain.clone();
        let t = key
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce.try_into().unwrap()),
                Aad::from(&aad),
                &mut body,
            )
            .unwrap();
        assert_eq!(body, cipher);
        assert_eq!(t.as_ref(), &tag[..]);
        // One bit of the tag off: refused.
        *object.last_mut().unwrap() ^= 1;
        assert_eq!(open(&key, &aad, &object), Err(CryptoError::Authentication));
    }

    #[test]
    fn round_trip() {
        let key = Key::generate();
        let plain = sample();
        let sealed = seal_object(&key, &chunk(3), &plain);
        assert_eq!(sealed.len(), plain.len() + OVERHEAD_BYTES);
        assert_eq!(&sealed[..4], b"BAE\x01");
        assert_eq!(open_object(&key, &chunk(3), &sealed).unwrap(), plain);
        let mut within = sealed.clone();
        let r = open_within(&key, &chunk(3).aad(), &mut within).unwrap();
        assert_eq!(&within[r], &plain[..]);
        assert_eq!(open_in_place(&key, &chunk(3).aad(), sealed).unwrap(), plain);
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let key = Key::generate();
        let sealed = seal(&key, b"x", &[]);
        assert_eq!(open(&key, b"x", &sealed).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn ciphertext_hides_plaintext() {
        let key = Key::generate();
        let plain = vec![0u8; 64];
        let sealed = seal(&key, b"", &plain);
        assert_ne!(&sealed[HEADER_LEN_BYTES..HEADER_LEN_BYTES + 64], &plain[..]);
    }

    #[test]
    fn any_altered_byte_is_detected() {
        let key = Key::generate();
        let sealed = seal_object(&key, &chunk(1), &sample());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = open_object(&key, &chunk(1), &bad).unwrap_err();
            match i {
                0..=2 => assert!(matches!(err, CryptoError::BadHeader { .. }), "byte {i}"),
                3 => assert_eq!(err, CryptoError::UnsupportedVersion(0)),
                _ => assert_eq!(err, CryptoError::Authentication, "byte {i}"),
            }
            assert!(open_in_place(&key, &chunk(1).aad(), bad).is_err());
        }
    }

    #[test]
    fn truncation_is_detected() {
        let key = Key::generate();
        let sealed = seal_object(&key, &chunk(1), &sample());
        for len in 0..sealed.len() {
            let err = open_object(&key, &chunk(1), &sealed[..len]).unwrap_err();
            if len < OVERHEAD_BYTES {
                assert!(matches!(err, CryptoError::BadHeader { len_bytes } if len_bytes == len));
            } else {
                assert_eq!(err, CryptoError::Authentication);
            }
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(
            open_object(&key, &chunk(1), &longer).unwrap_err(),
            CryptoError::Authentication
        );
    }

    #[test]
    fn wrong_key_is_detected() {
        let sealed = seal_object(&Key::generate(), &chunk(1), &sample());
        assert_eq!(
            open_object(&Key::generate(), &chunk(1), &sealed).unwrap_err(),
            CryptoError::Authentication
        );
    }

    #[test]
    fn swapped_object_is_detected() {
        let key = Key::generate();
        let sealed = seal_object(&key, &chunk(1), &sample());
        let others = [
            chunk(2),
            ObjectIdentity::Chunk(ChunkIdentity {
                torrent_uid: [8; 16],
                index: 1,
                len_bytes: 100,
            }),
            ObjectIdentity::Chunk(ChunkIdentity {
                torrent_uid: [7; 16],
                index: 1,
                len_bytes: 99,
            }),
            ObjectIdentity::Snapshot {
                library_uid: [7; 16],
            },
        ];
        for other in others {
            assert_eq!(
                open_object(&key, &other, &sealed).unwrap_err(),
                CryptoError::Authentication,
                "{other:?}"
            );
        }
    }

    #[test]
    fn identities_have_distinct_aad() {
        let mut seen = HashSet::new();
        for uid in [[0u8; 16], [1u8; 16]] {
            for index in [0, 1, 256] {
                for len_bytes in [0, 1, 1 << 20] {
                    let id = ChunkIdentity {
                        torrent_uid: uid,
                        index,
                        len_bytes,
                    };
                    assert!(seen.insert(id.aad()));
                }
            }
            assert!(seen.insert(ObjectIdentity::Snapshot { library_uid: uid }.aad()));
        }
    }

    #[test]
    fn nonces_are_unique() {
        let key = Key::generate();
        let mut nonces = HashSet::new();
        for _ in 0..10_000 {
            let sealed = seal(&key, b"", b"same plaintext");
            assert!(nonces.insert(sealed[4..HEADER_LEN_BYTES].to_vec()));
        }
    }

    #[test]
    fn debug_hides_key() {
        let key = Key::generate();
        let shown = format!("{key:?}");
        assert_eq!(shown, "Key(redacted)");
        assert!(!shown.contains(&key.to_hex()[..8]));
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = Key::write_new(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Key::load(&path).unwrap();
        assert_eq!(loaded.to_hex(), key.to_hex());
        // Only the key file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn key_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let first = Key::write_new(&path).unwrap();
        let err = Key::write_new(&path).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err}");
        assert_eq!(Key::load(&path).unwrap().to_hex(), first.to_hex());
    }

    #[test]
    fn key_file_formats() {
        let dir = tempfile::tempdir().unwrap();
        let hex64 = "0123456789abcdef".repeat(4);
        let cases: [(&str, bool); 8] = [
            (&hex64, true),
            (&format!("{hex64}\n"), true),
            (&format!("{hex64}\r\n"), true),
            (&hex64.to_uppercase(), true),
            (&hex64[..62], false),
            (&format!("{hex64}00"), false),
            (&format!("{}zz", &hex64[..62]), false),
            (&format!(" {hex64}\n"), false),
        ];
        for (i, (text, ok)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("k{i}"));
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let result = Key::load(&path);
            assert_eq!(result.is_ok(), *ok, "case {i}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("not a bae key"), "{e}");
            }
        }
        let missing = Key::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, KeyError::Io { .. }));
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = Key::write_new(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Key::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Exposed { .. }), "{mode:o}: {err}");
            let msg = err.to_string();
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(msg.contains(&format!("{mode:o}")), "{msg}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(Key::load(&path).unwrap().to_hex(), key.to_hex());
    }

    #[test]
    fn unsupported_version_is_reported() {
        let key = Key::generate();
        let mut sealed = seal(&key, b"", b"abc");
        sealed[3] = 2;
        assert_eq!(
            open(&key, b"", &sealed).unwrap_err(),
            CryptoError::UnsupportedVersion(2)
        );
    }
}
