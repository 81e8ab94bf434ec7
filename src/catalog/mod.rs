//! The catalog: every durable fact about the library, in SQLite.
//!
//! Torrents (identity, metainfo, geometry, flags), their files, their chunks (state,
//! plaintext hash, opaque object id) and their verified pieces. The catalog is the
//! source of truth after a crash: callers make data durable *before* they record a
//! claim about it here (a chunk is `Complete` only after its bytes were fsynced; it is
//! `Uploaded` only after the remote acknowledged the PUT).
//!
//! One connection behind a mutex is the single writer; WAL mode keeps readers of the
//! file (e.g. `sqlite3` during debugging) out of its way. Nothing here sits on the
//! per-block hot path: the store keeps its own in-memory view.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::model::{ChunkKey, ChunkState, FileSpan, Geometry, GeometryError, TorrentId};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database at {path} could not be opened: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database schema version {found} is newer than this bae understands ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("torrent {0} is already in the library")]
    Duplicate(String),
    #[error("no torrent matches {0:?}")]
    NoMatch(String),
    #[error("{query:?} matches several torrents: {names}")]
    Ambiguous { query: String, names: String },
    #[error("unknown torrent {0}")]
    UnknownTorrent(TorrentId),
    #[error("torrent {0} has a layout already, and it differs")]
    LayoutMismatch(TorrentId),
    #[error("invalid layout: {0}")]
    Geometry(#[from] GeometryError),
    #[error("corrupt catalog row: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, CatalogError>;

/// What `add_torrent` needs; the layout may come later (magnet links).
#[derive(Clone, Debug, Default)]
pub struct NewTorrent {
    pub info_hash_v1: Option<[u8; 20]>,
    pub info_hash_v2: Option<[u8; 32]>,
    pub name: String,
    pub magnet: Option<String>,
    pub metainfo: Option<Vec<u8>>,
    pub paused: bool,
    /// Peers to connect to directly (`bae add --peer`), as "ip:port".
    pub peers: Vec<String>,
    /// The torrent's identity when it is restored from the remote (else a fresh one).
    pub uid: Option<[u8; 16]>,
    /// When it was added (restore keeps the original time; else now).
    pub added_at: Option<i64>,
    /// Seed without pinning its chunks in the cache (`bae add --no-pin`).
    pub no_pin: bool,
}

/// One file of a torrent as recorded (path components are raw and untrusted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub path: Vec<String>,
    pub stream_offset: u64,
    pub len: u64,
    pub pad: bool,
    pub mtime: i64,
}

/// The geometry of a torrent's content: enough to rebuild any piece from chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub piece_len: u64,
    pub total_len: u64,
    pub files: Vec<FileRecord>,
}

impl Layout {
    /// Checks piece length and that the files tile the stream exactly.
    pub fn validate(&self) -> std::result::Result<Geometry, GeometryError> {
        self.geometry_and_files().map(|(g, _)| g)
    }

    /// The model's view of this layout: piece geometry and file spans, both checked.
    pub fn geometry_and_files(
        &self,
    ) -> std::result::Result<(Geometry, crate::model::FileLayout), GeometryError> {
        let g = Geometry::new(self.total_len, self.piece_len)?;
        let spans = self
            .files
            .iter()
            .map(|f| FileSpan {
                offset: f.stream_offset,
                len: f.len,
                pad: f.pad,
            })
            .collect();
        Ok((g, crate::model::FileLayout::new(spans, self.total_len)?))
    }
}

/// A torrent whose remote metadata must be written: `version` of the whole, and the
/// body's version when the body object itself is out of date (else only the flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleMeta {
    pub id: TorrentId,
    pub version: i64,
    pub body_version: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct TorrentRecord {
    pub id: TorrentId,
    pub uid: [u8; 16],
    pub info_hash_v1: Option<[u8; 20]>,
    pub info_hash_v2: Option<[u8; 32]>,
    pub name: String,
    pub magnet: Option<String>,
    /// Whether the bencoded .torrent is known ([`Catalog::metainfo`] reads it: it can be
    /// megabytes, so records never carry it).
    pub has_metainfo: bool,
    /// Known once metadata is known.
    pub geometry: Option<Geometry>,
    pub paused: bool,
    pub seeding: bool,
    /// Seeding keeps the torrent's chunks pinned in the cache.
    pub pin: bool,
    pub added_at: i64,
    pub peers: Vec<String>,
    /// Verified pieces, complete (or uploaded) chunks and uploaded chunks, as recorded.
    pub n_verified: u32,
    pub n_complete: u32,
    pub n_uploaded: u32,
}

impl TorrentRecord {
    /// Every piece verified and every chunk uploaded: nothing about this torrent changes
    /// any more but its flags, so nothing per chunk need be read to use it.
    pub fn settled(&self) -> bool {
        self.geometry
            .is_some_and(|g| self.n_verified == g.num_pieces() && self.n_uploaded == g.num_chunks())
    }

    /// Nothing verified, nothing complete.
    pub fn untouched(&self) -> bool {
        self.n_verified == 0 && self.n_complete == 0
    }

    /// Hex of the v1 info hash, else of the v2 one (truncated to 40 chars as clients show).
    pub fn info_hash_hex(&self) -> String {
        match (&self.info_hash_v1, &self.info_hash_v2) {
            (Some(h), _) => hex::encode(h),
            (None, Some(h)) => hex::encode(h),
            (None, None) => String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub index: u32,
    pub len: u64,
    pub state: ChunkState,
    pub hash: Option<[u8; 32]>,
    pub object_id: Option<String>,
}

/// A chunk that just became complete: its hash and remote name.
#[derive(Clone, Debug)]
pub struct Completed {
    pub index: u32,
    pub len: u64,
    pub hash: [u8; 32],
    pub object_id: String,
}

pub struct Catalog {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

const TORRENT_COLS: &str = "id, uid, info_hash_v1, info_hash_v2, name, magnet, \
                            EXISTS (SELECT 1 FROM torrent_metainfo m WHERE m.torrent_id = torrents.id), piece_len, total_len, paused, seeding, pin, \
                            added_at, peers, n_verified, n_complete, n_uploaded";

/// SQLite's page cache per connection, in KiB.
const CACHE_KIB: i64 = 256;

/// How long opening the catalog waits for another process that holds it.
const OPEN_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `op` again while SQLite answers "database is locked" without waiting: two
/// connections switching a new file to WAL at once each hold a read lock the other's
/// write lock needs, and SQLite fails one at once rather than deadlock (its busy
/// handler is not called). Tried again, it finds the other's switch done.
fn retry_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let until = std::time::Instant::now() + OPEN_BUSY_WAIT;
    loop {
        match op() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// A write transaction that takes the write lock at BEGIN: a deferred one that reads
/// first and writes later fails at once (SQLITE_BUSY_SNAPSHOT, "database is locked")
/// when another process wrote in between, whatever the busy timeout.
fn write_tx(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

impl Catalog {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Catalog> {
        let mut conn = Connection::open(path).map_err(|source| CatalogError::Open {
            path: path.to_owned(),
            source,
        })?;
        // First: switching to WAL needs the lock too, and must wait for another process
        // (several `bae add` at once) rather than fail with "database is locked".
        conn.busy_timeout(OPEN_BUSY_WAIT)?;
        // WAL + NORMAL: a commit survives a process kill; fsync on checkpoint.
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // SQLite keeps up to 2 MB of pages per connection by default, and a start-up
        // that lists every torrent fills it: resident memory that grows with the
        // library up to that size. The file's pages stay in the kernel's page cache,
        // so a page read again costs a copy, not a disk read.
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        schema::migrate(&mut conn)?;
        let cat = Catalog {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        };
        cat.library_uid()?;
        Ok(cat)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions
        // roll back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The library's random identity, created with the database.
    pub fn library_uid(&self) -> Result<[u8; 16]> {
        let conn = self.conn();
        let read = |conn: &Connection| {
            conn.query_row(
                "SELECT value FROM meta WHERE key = 'library_uid'",
                [],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
        };
        if read(&conn)?.is_none() {
            // Insert-if-absent, then read: two processes opening a new library at once
            // agree on one uid.
            let uid: [u8; 16] = rand::random();
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('library_uid', ?1)",
                params![uid.to_vec()],
            )?;
        }
        read(&conn)?
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| CatalogError::Corrupt("library_uid".into()))
    }

    pub fn add_torrent(&self, t: &NewTorrent) -> Result<TorrentId> {
        let mut conn = self.conn();
        // The duplicate check and the insert in one write transaction: parallel adds of
        // the same torrent cannot both pass it.
        let tx = write_tx(&mut conn)?;
        let dup: Option<String> = tx
            .query_row(
                "SELECT name FROM torrents WHERE info_hash_v1 = ?1 OR info_hash_v2 = ?2",
                params![
                    t.info_hash_v1.map(|h| h.to_vec()),
                    t.info_hash_v2.map(|h| h.to_vec())
                ],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(name) = dup {
            return Err(CatalogError::Duplicate(name));
        }
        tx.execute(
            "INSERT INTO torrents (uid, info_hash_v1, info_hash_v2, name, magnet, paused, added_at, peers, needs_full_journal, pin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)",
            params![
                t.uid.unwrap_or_else(rand::random).to_vec(),
                t.info_hash_v1.map(|h| h.to_vec()),
                t.info_hash_v2.map(|h| h.to_vec()),
                t.name,
                t.magnet,
                t.paused,
                t.added_at.unwrap_or_else(unix_now),
                serde_json::to_string(&t.peers).unwrap_or_else(|_| "[]".into()),
                !t.no_pin,
            ],
        )?;
        let id = tx.last_insert_rowid();
        if let Some(m) = &t.metainfo {
            tx.execute(
                "INSERT INTO torrent_metainfo (torrent_id, bytes) VALUES (?1, ?2)",
                params![id, m],
            )?;
        }
        tx.commit()?;
        Ok(TorrentId(id))
    }

    /// Records a torrent's layout (its files) once its metadata is known.
    /// Idempotent: recording the same layout again is a no-op; a different one is an
    /// error (the content of a torrent never changes).
    pub fn set_layout(
        &self,
        id: TorrentId,
        layout: &Layout,
        name: Option<&str>,
        metainfo: Option<&[u8]>,
    ) -> Result<Geometry> {
        let g = layout.validate()?;
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        let existing: Option<(Option<i64>, Option<i64>)> = tx
            .query_row(
                "SELECT piece_len, total_len FROM torrents WHERE id = ?1",
                [id.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match existing {
            None => return Err(CatalogError::UnknownTorrent(id)),
            Some((Some(pl), Some(tl))) => {
                if pl as u64 != layout.piece_len || tl as u64 != layout.total_len {
                    return Err(CatalogError::LayoutMismatch(id));
                }
                return Ok(g);
            }
            Some(_) => {}
        }
        tx.execute(
            "UPDATE torrents SET piece_len = ?2, total_len = ?3, name = COALESCE(?4, name)
             WHERE id = ?1",
            params![id.0, layout.piece_len as i64, layout.total_len as i64, name],
        )?;
        if let Some(m) = metainfo {
            tx.execute(
                "INSERT OR REPLACE INTO torrent_metainfo (torrent_id, bytes) VALUES (?1, ?2)",
                params![id.0, m],
            )?;
        }
        {
            let mut ins = tx.prepare(
                "INSERT INTO files (torrent_id, idx, path, stream_offset, len, pad, mtime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (i, f) in layout.files.iter().enumerate() {
                let path = serde_json::to_string(&f.path)
                    .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
                ins.execute(params![
                    id.0,
                    i as i64,
                    path,
                    f.stream_offset as i64,
                    f.len as i64,
                    f.pad,
                    f.mtime
                ])?;
            }
            // No chunk rows: a chunk gets one when it is complete (library scale).
        }
        tx.commit()?;
        Ok(g)
    }

    /// The torrent's bencoded .torrent, once known.
    pub fn metainfo(&self, id: TorrentId) -> Result<Option<Vec<u8>>> {
        self.conn()
            .query_row(
                "SELECT m.bytes FROM torrents t
                     LEFT JOIN torrent_metainfo m ON m.torrent_id = t.id WHERE t.id = ?1",
                [id.0],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(CatalogError::UnknownTorrent(id))
    }

    pub fn torrent(&self, id: TorrentId) -> Result<TorrentRecord> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {TORRENT_COLS} FROM torrents WHERE id = ?1"),
            [id.0],
            torrent_row,
        )
        .optional()?
        .ok_or(CatalogError::UnknownTorrent(id))
    }

    pub fn torrents(&self) -> Result<Vec<TorrentRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {TORRENT_COLS} FROM torrents ORDER BY id"))?;
        let rows = st.query_map([], torrent_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Finds a torrent by exact name, else by a unique prefix of its name or info hash.
    pub fn find(&self, query: &str) -> Result<TorrentRecord> {
        let all = self.torrents()?;
        if let Some(t) = all.iter().find(|t| t.name == query) {
            return Ok(t.clone());
        }
        let q = query.to_ascii_lowercase();
        let hits: Vec<&TorrentRecord> = all
            .iter()
            .filter(|t| {
                !query.is_empty()
                    && (t.name.starts_with(query)
                        || t.info_hash_v1
                            .is_some_and(|h| hex::encode(h).starts_with(&q))
                        || t.info_hash_v2
                            .is_some_and(|h| hex::encode(h).starts_with(&q)))
            })
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(CatalogError::NoMatch(query.to_owned())),
            many => Err(CatalogError::Ambiguous {
                query: query.to_owned(),
                names: many
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    pub fn files(&self, id: TorrentId) -> Result<Vec<FileRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT path, stream_offset, len, pad, mtime FROM files
             WHERE torrent_id = ?1 ORDER BY idx",
        )?;
        let rows = st.query_map([id.0], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (path, off, len, pad, mtime) = row?;
            let path: Vec<String> = serde_json::from_str(&path)
                .map_err(|e| CatalogError::Corrupt(format!("file path: {e}")))?;
            out.push(FileRecord {
                path,
                stream_offset: off as u64,
                len: len as u64,
                pad,
                mtime,
            });
        }
        Ok(out)
    }

    pub fn layout(&self, id: TorrentId) -> Result<Option<Layout>> {
        let t = self.torrent(id)?;
        let Some(g) = t.geometry else {
            return Ok(None);
        };
        Ok(Some(Layout {
            piece_len: g.piece_len(),
            total_len: g.total_len(),
            files: self.files(id)?,
        }))
    }

    pub fn chunks(&self, id: TorrentId) -> Result<Vec<ChunkRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT idx, len, state, hash, object_id FROM chunks
             WHERE torrent_id = ?1 ORDER BY idx",
        )?;
        let rows = st.query_map([id.0], chunk_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    pub fn chunk(&self, key: ChunkKey) -> Result<Option<ChunkRecord>> {
        let conn = self.conn();
        let r = conn
            .query_row(
                "SELECT idx, len, state, hash, object_id FROM chunks
                 WHERE torrent_id = ?1 AND idx = ?2",
                params![key.torrent.0, key.index.0],
                chunk_row,
            )
            .optional()?;
        r.transpose()
    }

    pub fn verified_pieces(&self, id: TorrentId) -> Result<Vec<u32>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT idx FROM pieces WHERE torrent_id = ?1 ORDER BY idx")?;
        let rows = st.query_map([id.0], |r| r.get::<_, u32>(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Records verified pieces and the chunks they completed, in one transaction.
    /// The caller has made the bytes durable first.
    pub fn commit_verified(
        &self,
        id: TorrentId,
        pieces: &[u32],
        completed: &[Completed],
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        {
            let mut ins =
                tx.prepare("INSERT OR IGNORE INTO pieces (torrent_id, idx) VALUES (?1, ?2)")?;
            for p in pieces {
                ins.execute(params![id.0, p])?;
            }
            // A row exists only for a chunk complete already: never overwritten here.
            let mut ins = tx.prepare(
                "INSERT OR IGNORE INTO chunks (torrent_id, idx, len, state, hash, object_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for c in completed {
                ins.execute(params![
                    id.0,
                    c.index,
                    c.len as i64,
                    ChunkState::Complete.as_i64(),
                    c.hash.to_vec(),
                    c.object_id,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets pieces whose bytes were lost (and reverts their chunks to partial), so
    /// they are downloaded again. Used by recovery; never touches uploaded chunks.
    pub fn unverify(&self, id: TorrentId, pieces: &[u32], chunks: &[u32]) -> Result<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        {
            let mut del = tx.prepare("DELETE FROM pieces WHERE torrent_id = ?1 AND idx = ?2")?;
            for p in pieces {
                del.execute(params![id.0, p])?;
            }
            // Partial chunks have no row.
            let mut del = tx
                .prepare("DELETE FROM chunks WHERE torrent_id = ?1 AND idx = ?2 AND state != ?3")?;
            for c in chunks {
                del.execute(params![id.0, c, ChunkState::Uploaded.as_i64()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks a chunk uploaded; only after the remote acknowledged its PUT (and the
    /// chunk's record is in the remote's metadata). Only the chunk version that owns
    /// `object_id` is marked: returns false when the chunk was revoked or removed.
    pub fn mark_uploaded(&self, key: ChunkKey, object_id: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE chunks SET state = ?3
             WHERE torrent_id = ?1 AND idx = ?2 AND state = ?4 AND object_id = ?5",
            params![
                key.torrent.0,
                key.index.0,
                ChunkState::Uploaded.as_i64(),
                ChunkState::Complete.as_i64(),
                object_id
            ],
        )?;
        Ok(n == 1)
    }

    /// An uploaded chunk goes back to complete under a new object name (its object was
    /// found bad; the local copy is good). False when it was not uploaded.
    pub fn reupload_chunk(&self, key: ChunkKey, object_id: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE chunks SET state = ?3, object_id = ?4
             WHERE torrent_id = ?1 AND idx = ?2 AND state = ?5",
            params![
                key.torrent.0,
                key.index.0,
                ChunkState::Complete.as_i64(),
                object_id,
                ChunkState::Uploaded.as_i64()
            ],
        )?;
        Ok(n == 1)
    }

    /// An uploaded chunk whose object is lost and with no local copy is complete no
    /// more: the store then revokes its pieces ([`Catalog::unverify`]).
    pub fn forget_uploaded_chunk(&self, key: ChunkKey) -> Result<()> {
        self.conn().execute(
            "UPDATE chunks SET state = ?3 WHERE torrent_id = ?1 AND idx = ?2 AND state = ?4",
            params![
                key.torrent.0,
                key.index.0,
                ChunkState::Complete.as_i64(),
                ChunkState::Uploaded.as_i64()
            ],
        )?;
        Ok(())
    }

    /// Keeps a magnet's metadata once it arrived (and its real name), so the torrent is
    /// re-added from it after a restart.
    pub fn set_metainfo(&self, id: TorrentId, metainfo: &[u8], name: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        let n = tx.execute(
            "UPDATE torrents SET name = COALESCE(?2, name),
                 meta_version = meta_version + 1, body_version = body_version + 1
                 WHERE id = ?1",
            params![id.0, name],
        )?;
        if n == 0 {
            return Err(CatalogError::UnknownTorrent(id));
        }
        tx.execute(
            "INSERT OR REPLACE INTO torrent_metainfo (torrent_id, bytes) VALUES (?1, ?2)",
            params![id.0, metainfo],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_paused(&self, id: TorrentId, paused: bool) -> Result<()> {
        self.update_torrent(id, "paused", paused)
    }

    pub fn set_seeding(&self, id: TorrentId, seeding: bool, pin: bool) -> Result<()> {
        self.update_torrent(id, "seeding", seeding)?;
        self.update_torrent(id, "pin", pin)
    }

    fn update_torrent(&self, id: TorrentId, col: &str, v: bool) -> Result<()> {
        let n = self.conn().execute(
            &format!(
                "UPDATE torrents SET {col} = ?2, meta_version = meta_version + 1 WHERE id = ?1"
            ),
            params![id.0, v],
        )?;
        if n == 0 {
            return Err(CatalogError::UnknownTorrent(id));
        }
        Ok(())
    }

    /// Deletes a torrent and everything about it; returns the object ids it had in the
    /// remote (for `--purge`). In the same transaction, the remote clean-up it needs is
    /// recorded (its metadata objects, and with `purge` its chunk objects), so an
    /// interruption leaks nothing: [`Catalog::remote_cleanups`] lists what is left to do.
    pub fn remove_torrent_with_cleanup(&self, id: TorrentId, purge: bool) -> Result<Vec<String>> {
        self.remove_inner(id, Some(purge))
    }

    /// Deletes a torrent locally only (tests; a torrent that never reached the remote).
    pub fn remove_torrent(&self, id: TorrentId) -> Result<Vec<String>> {
        self.remove_inner(id, None)
    }

    fn remove_inner(&self, id: TorrentId, cleanup: Option<bool>) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        let ids = {
            let mut st = tx.prepare(
                "SELECT object_id FROM chunks WHERE torrent_id = ?1 AND object_id IS NOT NULL",
            )?;
            let rows = st.query_map([id.0], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let uid: Option<Vec<u8>> = tx
            .query_row("SELECT uid FROM torrents WHERE id = ?1", [id.0], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(uid) = uid else {
            return Err(CatalogError::UnknownTorrent(id));
        };
        if let Some(purge) = cleanup {
            let objects = if purge { ids.clone() } else { Vec::new() };
            tx.execute(
                "INSERT OR REPLACE INTO remote_cleanup (uid, objects) VALUES (?1, ?2)",
                params![
                    uid,
                    serde_json::to_string(&objects)
                        .map_err(|e| CatalogError::Corrupt(e.to_string()))?
                ],
            )?;
        }
        tx.execute("DELETE FROM torrents WHERE id = ?1", [id.0])?;
        tx.commit()?;
        Ok(ids)
    }

    /// Remote clean-ups still to do: (torrent uid, chunk object ids to delete).
    pub fn remote_cleanups(&self) -> Result<Vec<([u8; 16], Vec<String>)>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT uid, objects FROM remote_cleanup")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (uid, objects) = row?;
            let uid: [u8; 16] = uid
                .try_into()
                .map_err(|_| CatalogError::Corrupt("cleanup uid".into()))?;
            let objects: Vec<String> = serde_json::from_str(&objects)
                .map_err(|e| CatalogError::Corrupt(format!("cleanup objects: {e}")))?;
            out.push((uid, objects));
        }
        Ok(out)
    }

    pub fn cleanup_done(&self, uid: &[u8; 16]) -> Result<()> {
        self.conn()
            .execute("DELETE FROM remote_cleanup WHERE uid = ?1", [uid.to_vec()])?;
        Ok(())
    }

    /// Torrents whose remote metadata is older than their catalog row (an index keeps
    /// this from reading the library).
    pub fn stale_remote_meta(&self) -> Result<Vec<StaleMeta>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, meta_version, body_version, body_written FROM torrents
                 WHERE meta_written < meta_version",
        )?;
        let rows = st.query_map([], |r| {
            let (body, written): (i64, i64) = (r.get(2)?, r.get(3)?);
            Ok(StaleMeta {
                id: TorrentId(r.get(0)?),
                version: r.get(1)?,
                body_version: (written < body).then_some(body),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The torrent's metadata versions now: (all of it, its body).
    pub fn meta_versions(&self, id: TorrentId) -> Result<(i64, i64)> {
        self.conn()
            .query_row(
                "SELECT meta_version, body_version FROM torrents WHERE id = ?1",
                [id.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or(CatalogError::UnknownTorrent(id))
    }

    pub fn set_meta_written(&self, id: TorrentId, version: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE torrents SET meta_written = MAX(meta_written, ?2) WHERE id = ?1",
            params![id.0, version],
        )?;
        Ok(())
    }

    /// The torrent's body object (metainfo, name) is in the remote at `body_version`.
    pub fn set_body_written(&self, id: TorrentId, body_version: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE torrents SET body_written = MAX(body_written, ?2) WHERE id = ?1",
            params![id.0, body_version],
        )?;
        Ok(())
    }

    /// Whether the torrent's remote body object was written at least once.
    pub fn remote_meta_exists(&self, id: TorrentId) -> Result<bool> {
        let v: Option<i64> = self
            .conn()
            .query_row(
                "SELECT body_written FROM torrents WHERE id = ?1",
                [id.0],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.is_some_and(|v| v > 0))
    }

    /// Reserves the next journal object number of a torrent (durably, before the object
    /// is written: a number is never reused for other content).
    pub fn next_journal_seq(&self, id: TorrentId) -> Result<u64> {
        let conn = self.conn();
        let seq: Option<i64> = conn
            .query_row(
                "UPDATE torrents SET journal_seq = journal_seq + 1 WHERE id = ?1
                 RETURNING journal_seq - 1",
                [id.0],
                |r| r.get(0),
            )
            .optional()?;
        seq.map(|s| s as u64)
            .ok_or(CatalogError::UnknownTorrent(id))
    }

    /// Torrents whose every chunk is uploaded but whose journal is not compacted yet.
    pub fn compactable(&self) -> Result<Vec<TorrentId>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT t.id FROM torrents t
             WHERE t.compacted = 0 AND t.total_len IS NOT NULL AND t.needs_full_journal = 0
               AND t.n_uploaded = (t.total_len + ?1 - 1) / ?1",
        )?;
        let rows = st.query_map([crate::model::CHUNK_LEN as i64], |r| {
            Ok(TorrentId(r.get(0)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn set_compacted(&self, id: TorrentId, journal_seq: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE torrents SET compacted = 1, journal_seq = MAX(journal_seq, ?2) WHERE id = ?1",
            params![id.0, journal_seq as i64],
        )?;
        Ok(())
    }

    /// Torrents from before the remote journal whose uploaded chunks must be written out.
    pub fn needing_full_journal(&self) -> Result<Vec<TorrentId>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT id FROM torrents WHERE needs_full_journal = 1")?;
        let rows = st.query_map([], |r| Ok(TorrentId(r.get(0)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn set_full_journal_done(&self, id: TorrentId) -> Result<()> {
        self.conn().execute(
            "UPDATE torrents SET needs_full_journal = 0 WHERE id = ?1",
            [id.0],
        )?;
        Ok(())
    }

    /// Records chunks restored from the remote as uploaded, with the pieces they make
    /// verified, in one transaction (`bae init --restore`).
    pub fn restore_chunks(
        &self,
        id: TorrentId,
        chunks: &[(u32, [u8; 32], String)],
        pieces: &[u32],
        compacted: bool,
        journal_seq: u64,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        {
            let total: Option<i64> = tx.query_row(
                "SELECT total_len FROM torrents WHERE id = ?1",
                [id.0],
                |r| r.get(0),
            )?;
            let g = Geometry::new(
                total.ok_or(CatalogError::UnknownTorrent(id))? as u64,
                crate::model::CHUNK_LEN,
            )?;
            let mut up = tx.prepare(
                "INSERT OR REPLACE INTO chunks (torrent_id, idx, len, state, hash, object_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (idx, hash, oid) in chunks {
                if *idx >= g.num_chunks() {
                    return Err(CatalogError::Corrupt(format!(
                        "restored chunk {idx} out of range"
                    )));
                }
                up.execute(params![
                    id.0,
                    idx,
                    g.chunk_len(crate::model::ChunkIndex(*idx)) as i64,
                    ChunkState::Uploaded.as_i64(),
                    hash.to_vec(),
                    oid
                ])?;
            }
            let mut ins =
                tx.prepare("INSERT OR IGNORE INTO pieces (torrent_id, idx) VALUES (?1, ?2)")?;
            for p in pieces {
                ins.execute(params![id.0, p])?;
            }
        }
        tx.execute(
            "UPDATE torrents SET meta_written = meta_version, body_written = body_version,
                 compacted = ?2, journal_seq = ?3, needs_full_journal = 0 WHERE id = ?1",
            params![id.0, compacted, journal_seq as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Adopts the library identity found in the remote (restore).
    pub fn set_library_uid(&self, uid: &[u8; 16]) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('library_uid', ?1)",
            params![uid.to_vec()],
        )?;
        Ok(())
    }

    /// `PRAGMA integrity_check`: "ok" when the database file is sound.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// Writes a consistent copy of the whole database to `dest` (for the snapshot).
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        let conn = self.conn();
        let _ = std::fs::remove_file(dest);
        conn.execute("VACUUM INTO ?1", [dest.to_string_lossy()])?;
        Ok(())
    }
}

fn torrent_row(r: &Row<'_>) -> rusqlite::Result<TorrentRecord> {
    let uid: Vec<u8> = r.get(1)?;
    let v1: Option<Vec<u8>> = r.get(2)?;
    let v2: Option<Vec<u8>> = r.get(3)?;
    let piece_len: Option<i64> = r.get(7)?;
    let total_len: Option<i64> = r.get(8)?;
    let bad = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            format!("bad {what}").into(),
        )
    };
    let geometry = match (piece_len, total_len) {
        (Some(p), Some(t)) => Some(Geometry::new(t as u64, p as u64).map_err(|_| bad("geometry"))?),
        _ => None,
    };
    Ok(TorrentRecord {
        id: TorrentId(r.get(0)?),
        uid: uid.try_into().map_err(|_| bad("uid"))?,
        info_hash_v1: v1
            .map(|v| v.try_into().map_err(|_| bad("info hash")))
            .transpose()?,
        info_hash_v2: v2
            .map(|v| v.try_into().map_err(|_| bad("info hash")))
            .transpose()?,
        name: r.get(4)?,
        magnet: r.get(5)?,
        has_metainfo: r.get(6)?,
        geometry,
        paused: r.get(9)?,
        seeding: r.get(10)?,
        pin: r.get(11)?,
        added_at: r.get(12)?,
        peers: serde_json::from_str(&r.get::<_, String>(13)?).map_err(|_| bad("peers"))?,
        n_verified: r.get(14)?,
        n_complete: r.get(15)?,
        n_uploaded: r.get(16)?,
    })
}

fn chunk_row(r: &Row<'_>) -> rusqlite::Result<Result<ChunkRecord>> {
    let state: i64 = r.get(2)?;
    let hash: Option<Vec<u8>> = r.get(3)?;
    let Some(state) = ChunkState::from_i64(state) else {
        return Ok(Err(CatalogError::Corrupt(format!("chunk state {state}"))));
    };
    let hash = match hash.map(<[u8; 32]>::try_from).transpose() {
        Ok(h) => h,
        Err(_) => return Ok(Err(CatalogError::Corrupt("chunk hash".into()))),
    };
    Ok(Ok(ChunkRecord {
        index: r.get(0)?,
        len: r.get::<_, i64>(1)? as u64,
        state,
        hash,
        object_id: r.get(4)?,
    }))
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
