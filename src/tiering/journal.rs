//! The library's metadata in the remote: enough to rebuild the library on a new machine
//! from the bucket and the key alone, written in proportion to what changed.
//!
//! Layout (every object sealed like a chunk, bound to the library and its own name):
//! - `meta/library` — the library's identity. Checked at every mount: a key that cannot
//!   open it is the wrong key for this remote, and nothing is written.
//! - `meta/t/<torrent uid>/torrent` — one torrent: metainfo (or magnet), name, and its
//!   flags when written. Written once before any chunk of the torrent counts as
//!   uploaded, again only if a magnet's metadata arrives later.
//! - `meta/t/<torrent uid>/flags` — paused / seeding / pin / peers: a small object
//!   rewritten on each change of those. Both carry the catalog's metadata version; a
//!   restore takes the flags of the newer one.
//! - `meta/t/<torrent uid>/j/<seq>` — upload journal: (chunk index, plaintext hash,
//!   object id) of chunks whose PUT succeeded, a batch per object. A chunk is marked
//!   uploaded in the catalog only after its journal object is stored, so a restore after
//!   a `kill -9` at any moment finds every chunk the catalog calls uploaded.
//! - `meta/t/<torrent uid>/chunks` — the same records for the whole torrent once every
//!   chunk is uploaded; the torrent's journal objects are then deleted. A complete
//!   album's metadata is thus written once, and nothing grows with the library.
//!
//! Object names hold only random uids. Restore lists `meta/t/` and reads each torrent's
//! objects in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::catalog::{Catalog, CatalogError, TorrentRecord};
use crate::model::{ChunkState, TorrentId};
use crate::remote::crypto::{self, Key, ObjectIdentity};
use crate::remote::{object_key_for, ObjectStore, Remote, RemoteError};
use crate::store::RemoteChunk;

pub const META_PREFIX: &str = "meta/";
const LIBRARY_OBJECT: &str = "meta/library";
const TORRENTS_PREFIX: &str = "meta/t/";
/// One journal record: chunk index (4, big endian), blake3 (32), object id (16).
const RECORD_LEN: usize = 4 + 32 + 16;
/// How long the writer waits after a first record for others to share its object.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Parallel requests of a restore, a clean-up or a round of torrent objects.
const PARALLEL: usize = 16;
/// Torrent objects written per round of the metadata writer (records go between).
const META_PER_ROUND: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(
        "the remote's metadata cannot be opened with this library's key: this is the wrong \
         key for this remote (or its metadata was damaged); nothing was written to it"
    )]
    WrongKey,
    #[error(
        "the remote (bucket/prefix) already holds another library ({0}); use one bucket or \
         prefix per library"
    )]
    OtherLibrary(String),
    #[error("remote metadata object {name} is malformed: {reason}")]
    Malformed { name: String, reason: String },
}

/// What `meta/library` holds.
#[derive(Serialize, Deserialize)]
struct LibraryMeta {
    format: u32,
    library_uid: String,
}

/// What `meta/t/<uid>/torrent` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TorrentMeta {
    pub uid: String,
    pub info_hash_v1: Option<String>,
    pub info_hash_v2: Option<String>,
    pub name: String,
    pub magnet: Option<String>,
    /// The bencoded .torrent, base64.
    pub metainfo: Option<String>,
    pub paused: bool,
    pub seeding: bool,
    pub pin: bool,
    pub added_at: i64,
    pub peers: Vec<String>,
    /// The catalog's metadata version it was written at (0: written before versions).
    #[serde(default)]
    pub version: i64,
}

/// What `meta/t/<uid>/flags` holds: what changes after a torrent is added.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TorrentFlags {
    version: i64,
    paused: bool,
    seeding: bool,
    pin: bool,
    peers: Vec<String>,
}

impl TorrentFlags {
    fn of(t: &TorrentRecord, version: i64) -> TorrentFlags {
        TorrentFlags {
            version,
            paused: t.paused,
            seeding: t.seeding,
            pin: t.pin,
            peers: t.peers.clone(),
        }
    }

    /// Applies these flags to `meta` when they are newer than the ones it carries.
    fn apply_if_newer(self, meta: &mut TorrentMeta) {
        if self.version > meta.version {
            meta.paused = self.paused;
            meta.seeding = self.seeding;
            meta.pin = self.pin;
            meta.peers = self.peers;
            meta.version = self.version;
        }
    }
}

impl TorrentMeta {
    fn of(t: &TorrentRecord, metainfo: Option<&[u8]>, version: i64) -> TorrentMeta {
        use base64::Engine as _;
        TorrentMeta {
            uid: hex::encode(t.uid),
            info_hash_v1: t.info_hash_v1.map(hex::encode),
            info_hash_v2: t.info_hash_v2.map(hex::encode),
            name: t.name.clone(),
            magnet: t.magnet.clone(),
            metainfo: metainfo.map(|m| base64::engine::general_purpose::STANDARD.encode(m)),
            paused: t.paused,
            seeding: t.seeding,
            pin: t.pin,
            added_at: t.added_at,
            peers: t.peers.clone(),
            version,
        }
    }

    pub fn metainfo_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        self.metainfo
            .as_ref()
            .and_then(|m| base64::engine::general_purpose::STANDARD.decode(m).ok())
    }
}

/// A chunk as the remote's metadata records it: index, plaintext hash, object id.
pub type ChunkRecordRemote = (u32, [u8; 32], String);

/// One torrent read back from the remote.
#[derive(Debug)]
pub struct RestoredTorrent {
    pub meta: TorrentMeta,
    pub uid: [u8; 16],
    pub chunks: Vec<ChunkRecordRemote>,
    pub compacted: bool,
    /// The next free journal number.
    pub next_seq: u64,
}

fn torrent_prefix(uid: &[u8; 16]) -> String {
    format!("{TORRENTS_PREFIX}{}/", hex::encode(uid))
}

fn torrent_object(uid: &[u8; 16]) -> String {
    format!("{}torrent", torrent_prefix(uid))
}

fn flags_object(uid: &[u8; 16]) -> String {
    format!("{}flags", torrent_prefix(uid))
}

fn chunks_object(uid: &[u8; 16]) -> String {
    format!("{}chunks", torrent_prefix(uid))
}

fn journal_object(uid: &[u8; 16], seq: u64) -> String {
    format!("{}j/{seq:016x}", torrent_prefix(uid))
}

fn identity(library_uid: &[u8; 16], name: &str) -> Vec<u8> {
    ObjectIdentity::Meta {
        library_uid: *library_uid,
        name: name.to_owned(),
    }
    .aad()
}

fn encode_records(records: &[ChunkRecordRemote]) -> Result<Vec<u8>, JournalError> {
    let mut out = Vec::with_capacity(records.len() * RECORD_LEN);
    for (idx, hash, oid) in records {
        let mut id = [0u8; 16];
        hex::decode_to_slice(oid, &mut id).map_err(|_| JournalError::Malformed {
            name: "(local)".into(),
            reason: format!("object id {oid:?} is not 32 hex digits"),
        })?;
        out.extend_from_slice(&idx.to_be_bytes());
        out.extend_from_slice(hash);
        out.extend_from_slice(&id);
    }
    Ok(out)
}

fn decode_records(name: &str, bytes: &[u8]) -> Result<Vec<ChunkRecordRemote>, JournalError> {
    if bytes.len() % RECORD_LEN != 0 {
        return Err(JournalError::Malformed {
            name: name.to_owned(),
            reason: format!("{} bytes is not a whole number of records", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(RECORD_LEN)
        .map(|r| {
            let idx = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&r[4..36]);
            (idx, hash, hex::encode(&r[36..52]))
        })
        .collect())
}

async fn put_sealed(
    remote: &Remote,
    key: &Key,
    library_uid: &[u8; 16],
    name: &str,
    plain: &[u8],
) -> Result<(), RemoteError> {
    let object = crypto::seal(key, &identity(library_uid, name), plain);
    remote.put(name, Bytes::from(object)).await
}

async fn get_sealed(
    remote: &Remote,
    key: &Key,
    library_uid: &[u8; 16],
    name: &str,
) -> Result<Vec<u8>, JournalError> {
    let object = remote.get(name).await?;
    crypto::open_in_place(key, &identity(library_uid, name), object.to_vec())
        .map_err(|_| JournalError::WrongKey)
}

/// Checks that this key and library own the remote, writing `meta/library` on first
/// use. Nothing else may be written to a remote that fails this check.
pub async fn ensure_library(
    remote: &Remote,
    key: &Key,
    library_uid: &[u8; 16],
) -> Result<(), JournalError> {
    match remote.get(LIBRARY_OBJECT).await {
        Ok(object) => {
            let plain =
                crypto::open_in_place(key, &identity(&[0; 16], LIBRARY_OBJECT), object.to_vec())
                    .map_err(|_| JournalError::WrongKey)?;
            let meta: LibraryMeta =
                serde_json::from_slice(&plain).map_err(|e| JournalError::Malformed {
                    name: LIBRARY_OBJECT.into(),
                    reason: e.to_string(),
                })?;
            if meta.library_uid != hex::encode(library_uid) {
                return Err(JournalError::OtherLibrary(meta.library_uid));
            }
            Ok(())
        }
        Err(RemoteError::NotFound(_)) => {
            // A library from before this metadata kept a sealed snapshot: it tells a
            // wrong key just as well.
            let legacy = format!(
                "{}{}",
                super::snapshot::SNAPSHOT_PREFIX,
                hex::encode(library_uid)
            );
            match remote.get(&legacy).await {
                Ok(object) => {
                    crypto::open_in_place(
                        key,
                        &ObjectIdentity::Snapshot {
                            library_uid: *library_uid,
                        }
                        .aad(),
                        object.to_vec(),
                    )
                    .map_err(|_| JournalError::WrongKey)?;
                }
                Err(RemoteError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let meta = LibraryMeta {
                format: 1,
                library_uid: hex::encode(library_uid),
            };
            let plain = serde_json::to_vec(&meta).map_err(|e| JournalError::Malformed {
                name: LIBRARY_OBJECT.into(),
                reason: e.to_string(),
            })?;
            put_sealed(remote, key, &[0; 16], LIBRARY_OBJECT, &plain).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the whole library back from the remote. `None` when the remote holds no
/// library metadata (empty, or a library from before it: see `snapshot`).
/// `progress(done, total)` is called as torrents arrive.
pub async fn read_library(
    remote: &Remote,
    key: &Key,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Option<([u8; 16], Vec<RestoredTorrent>)>, JournalError> {
    let plain = match get_sealed(remote, key, &[0; 16], LIBRARY_OBJECT).await {
        Ok(p) => p,
        Err(JournalError::Remote(RemoteError::NotFound(_))) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta: LibraryMeta =
        serde_json::from_slice(&plain).map_err(|e| JournalError::Malformed {
            name: LIBRARY_OBJECT.into(),
            reason: e.to_string(),
        })?;
    let library_uid: [u8; 16] = hex::decode(&meta.library_uid)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| JournalError::Malformed {
            name: LIBRARY_OBJECT.into(),
            reason: "bad library uid".into(),
        })?;
    let names = remote.list(TORRENTS_PREFIX).await?;
    let mut by_torrent: HashMap<[u8; 16], Vec<String>> = HashMap::new();
    for name in names {
        let Some(rest) = name.strip_prefix(TORRENTS_PREFIX) else {
            continue;
        };
        let Some(uid) = rest
            .split('/')
            .next()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
        else {
            continue;
        };
        by_torrent.entry(uid).or_default().push(name);
    }
    let total = by_torrent.len();
    progress(0, total);
    let mut done = 0;
    let mut out = Vec::with_capacity(total);
    let mut reads = futures::stream::iter(by_torrent)
        .map(|(uid, names)| read_torrent(remote, key, library_uid, uid, names))
        .buffer_unordered(PARALLEL);
    while let Some(r) = reads.next().await {
        done += 1;
        progress(done, total);
        if let Some(t) = r? {
            out.push(t);
        }
    }
    Ok(Some((library_uid, out)))
}

async fn read_torrent(
    remote: &Remote,
    key: &Key,
    library_uid: [u8; 16],
    uid: [u8; 16],
    names: Vec<String>,
) -> Result<Option<RestoredTorrent>, JournalError> {
    let tname = torrent_object(&uid);
    if !names.contains(&tname) {
        // Leftovers of a removal, or journal objects of a torrent whose own object never
        // made it: not restorable, and not referenced.
        return Ok(None);
    }
    let plain = get_sealed(remote, key, &library_uid, &tname).await?;
    let mut meta: TorrentMeta =
        serde_json::from_slice(&plain).map_err(|e| JournalError::Malformed {
            name: tname.clone(),
            reason: e.to_string(),
        })?;
    let fname = flags_object(&uid);
    if names.contains(&fname) {
        let plain = get_sealed(remote, key, &library_uid, &fname).await?;
        let flags: TorrentFlags =
            serde_json::from_slice(&plain).map_err(|e| JournalError::Malformed {
                name: fname.clone(),
                reason: e.to_string(),
            })?;
        flags.apply_if_newer(&mut meta);
    }
    let mut records: HashMap<u32, ([u8; 32], String, u64)> = HashMap::new();
    let mut compacted = false;
    let mut next_seq = 0u64;
    let cname = chunks_object(&uid);
    let jprefix = format!("{}j/", torrent_prefix(&uid));
    let mut journal: Vec<(u64, String)> = names
        .iter()
        .filter_map(|n| {
            let seq = u64::from_str_radix(n.strip_prefix(&jprefix)?, 16).ok()?;
            Some((seq, n.clone()))
        })
        .collect();
    journal.sort();
    if names.contains(&cname) {
        compacted = true;
        let plain = get_sealed(remote, key, &library_uid, &cname).await?;
        for (idx, hash, oid) in decode_records(&cname, &plain)? {
            records.insert(idx, (hash, oid, 0));
        }
    }
    for (seq, name) in &journal {
        next_seq = next_seq.max(seq + 1);
        let plain = get_sealed(remote, key, &library_uid, name).await?;
        for (idx, hash, oid) in decode_records(name, &plain)? {
            // A later record of the same chunk is a newer upload of it.
            let newer = records.get(&idx).is_none_or(|(_, _, s)| *s <= seq + 1);
            if newer {
                records.insert(idx, (hash, oid, seq + 1));
            }
        }
    }
    let mut chunks: Vec<ChunkRecordRemote> = records
        .into_iter()
        .map(|(idx, (hash, oid, _))| (idx, hash, oid))
        .collect();
    chunks.sort_by_key(|c| c.0);
    Ok(Some(RestoredTorrent {
        meta,
        uid,
        chunks,
        compacted,
        next_seq,
    }))
}

struct Record {
    chunk: RemoteChunk,
    reply: oneshot::Sender<Result<bool, RemoteError>>,
}

/// Writes the library's metadata into the remote: torrent objects when the catalog
/// changes, journal batches for uploaded chunks, compaction of finished torrents and
/// the remote side of removals.
pub struct Journal {
    remote: Remote,
    key: Arc<Key>,
    catalog: Arc<Catalog>,
    library_uid: [u8; 16],
    /// The remote was checked to belong to this library and key.
    owned: AtomicBool,
    records: mpsc::UnboundedSender<Record>,
    records_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Record>>>,
    wake: Notify,
    /// Signalled after each round of metadata writes.
    round: tokio::sync::watch::Sender<u64>,
}

impl Journal {
    pub fn new(
        remote: Remote,
        key: Arc<Key>,
        catalog: Arc<Catalog>,
    ) -> Result<Arc<Journal>, JournalError> {
        let library_uid = catalog.library_uid()?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Journal {
            remote,
            key,
            catalog,
            library_uid,
            owned: AtomicBool::new(false),
            records: tx,
            records_rx: std::sync::Mutex::new(Some(rx)),
            wake: Notify::new(),
            round: tokio::sync::watch::channel(0).0,
        }))
    }

    /// A journal whose writer runs on the current runtime (tools and tests).
    pub fn started(
        remote: Remote,
        key: Arc<Key>,
        catalog: Arc<Catalog>,
    ) -> Result<Arc<Journal>, JournalError> {
        let j = Journal::new(remote, key, catalog)?;
        j.start();
        Ok(j)
    }

    /// Checks ownership of the remote now (mount does this before serving).
    pub async fn check_remote(&self) -> Result<(), JournalError> {
        ensure_library(&self.remote, &self.key, &self.library_uid).await?;
        self.owned.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Starts the writer on the current runtime: one task for chunk records (uploads wait
    /// on them), one for the rest, so that a library-sized backlog of torrent objects or
    /// compactions never holds up an upload's record.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let rx = self
            .records_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let Some(rx) = rx else { return };
            let records = me.clone().run_records(rx);
            let meta = me.run_meta();
            // The records task ends when the journal is dropped; the meta task never.
            tokio::select! {
                _ = records => {}
                _ = meta => {}
            }
        })
    }

    /// The catalog changed (torrent added, flags, removal): write what is stale soon.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Waits (bounded) until the writer has done a round after this call: torrent
    /// objects for what the catalog holds now are then in the remote. Returns whether
    /// every torrent's metadata is written.
    pub async fn flush_meta(&self, timeout: Duration) -> bool {
        let mut rx = self.round.subscribe();
        let start = *rx.borrow_and_update();
        self.wake.notify_one();
        let waited = tokio::time::timeout(timeout, async {
            while *rx.borrow_and_update() == start {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        waited.is_ok()
            && self
                .catalog
                .stale_remote_meta()
                .map(|v| v.is_empty())
                .unwrap_or(false)
    }

    /// Records an uploaded chunk in the remote's metadata. `Ok(true)` once it is durable
    /// there; `Ok(false)` when its torrent is gone (the object is garbage).
    pub async fn record(&self, chunk: &RemoteChunk) -> Result<bool, RemoteError> {
        let (reply, rx) = oneshot::channel();
        self.records
            .send(Record {
                chunk: chunk.clone(),
                reply,
            })
            .map_err(|_| RemoteError::Transient("the metadata writer stopped".into()))?;
        rx.await
            .map_err(|_| RemoteError::Transient("the metadata writer stopped".into()))?
    }

    /// Checks (once) that the remote is this library's; logs why not.
    async fn ensure_owned(&self) -> Result<(), String> {
        if self.owned.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.check_remote().await.map_err(|e| {
            tracing::warn!(error = %e, "remote metadata not written");
            e.to_string()
        })
    }

    async fn run_records(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Record>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            tokio::time::sleep(BATCH_WINDOW).await;
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
            if let Err(msg) = self.ensure_owned().await {
                for r in batch {
                    let _ = r.reply.send(Err(RemoteError::Transient(msg.clone())));
                }
                continue;
            }
            self.write_batch(batch).await;
        }
    }

    async fn run_meta(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = 0u64;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            if self.ensure_owned().await.is_ok() {
                // A bounded share per round: `more` brings the next round at once.
                match self.sync_meta().await {
                    Ok(true) => self.wake.notify_one(),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "writing remote metadata; will retry"),
                }
            }
            round += 1;
            self.round.send_replace(round);
        }
    }

    /// Writes the torrent's body object (with its flags as of `version`).
    async fn write_torrent_meta(&self, id: TorrentId, version: i64) -> Result<(), JournalError> {
        let rec = self.catalog.torrent(id)?;
        let metainfo = self.catalog.metainfo(id)?;
        let meta = TorrentMeta::of(&rec, metainfo.as_deref(), version);
        self.put_json(&torrent_object(&rec.uid), &meta).await
    }

    /// Writes only the torrent's flags object: what a pause, seed or pin change costs.
    async fn write_torrent_flags(&self, id: TorrentId, version: i64) -> Result<(), JournalError> {
        let rec = self.catalog.torrent(id)?;
        self.put_json(&flags_object(&rec.uid), &TorrentFlags::of(&rec, version))
            .await
    }

    async fn put_json(&self, name: &str, value: &impl Serialize) -> Result<(), JournalError> {
        let plain = serde_json::to_vec(value).map_err(|e| JournalError::Malformed {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        put_sealed(&self.remote, &self.key, &self.library_uid, name, &plain).await?;
        Ok(())
    }

    async fn write_journal(
        &self,
        id: TorrentId,
        uid: &[u8; 16],
        records: &[ChunkRecordRemote],
    ) -> Result<(), JournalError> {
        let body = encode_records(records)?;
        let seq = self.catalog.next_journal_seq(id)?;
        put_sealed(
            &self.remote,
            &self.key,
            &self.library_uid,
            &journal_object(uid, seq),
            &body,
        )
        .await?;
        Ok(())
    }

    /// Everything but chunk records: stale torrent objects, removals, old libraries'
    /// chunks, compaction of finished torrents. At most [`META_PER_ROUND`] torrent
    /// objects per call, written in parallel; returns whether more are waiting.
    async fn sync_meta(&self) -> Result<bool, JournalError> {
        let mut stale = self.catalog.stale_remote_meta()?;
        let more = stale.len() > META_PER_ROUND;
        stale.truncate(META_PER_ROUND);
        let mut writes = futures::stream::iter(stale)
            .map(|stale| async move {
                let (id, version) = (stale.id, stale.version);
                let written = match stale.body_version {
                    Some(body) => self
                        .write_torrent_meta(id, version)
                        .await
                        .and_then(|()| Ok(self.catalog.set_body_written(id, body)?)),
                    None => self.write_torrent_flags(id, version).await,
                };
                (id, version, written)
            })
            .buffer_unordered(PARALLEL);
        let mut first_error = None;
        while let Some((id, version, written)) = writes.next().await {
            match written {
                Ok(()) => self.catalog.set_meta_written(id, version)?,
                Err(JournalError::Catalog(CatalogError::UnknownTorrent(_))) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        drop(writes);
        if let Some(e) = first_error {
            return Err(e);
        }
        // Each kind of work is bounded per round too (a compaction is a few requests).
        let mut more = more;
        let cleanups = self.catalog.remote_cleanups()?;
        more |= cleanups.len() > META_PER_ROUND;
        for (uid, objects) in cleanups.into_iter().take(META_PER_ROUND) {
            cleanup(&self.remote, &uid, &objects).await?;
            self.catalog.cleanup_done(&uid)?;
        }
        let full = self.catalog.needing_full_journal()?;
        more |= full.len() > META_PER_ROUND;
        for id in full.into_iter().take(META_PER_ROUND) {
            let rec = self.catalog.torrent(id)?;
            let uploaded: Vec<ChunkRecordRemote> = self
                .catalog
                .chunks(id)?
                .into_iter()
                .filter(|c| c.state == ChunkState::Uploaded)
                .filter_map(|c| Some((c.index, c.hash?, c.object_id?)))
                .collect();
            if !uploaded.is_empty() {
                self.write_journal(id, &rec.uid, &uploaded).await?;
            }
            self.catalog.set_full_journal_done(id)?;
        }
        let compactable = self.catalog.compactable()?;
        more |= compactable.len() > META_PER_ROUND / 4;
        for id in compactable.into_iter().take(META_PER_ROUND / 4) {
            let rec = self.catalog.torrent(id)?;
            let all: Vec<ChunkRecordRemote> = self
                .catalog
                .chunks(id)?
                .into_iter()
                .filter_map(|c| Some((c.index, c.hash?, c.object_id?)))
                .collect();
            let body = encode_records(&all)?;
            put_sealed(
                &self.remote,
                &self.key,
                &self.library_uid,
                &chunks_object(&rec.uid),
                &body,
            )
            .await?;
            let seq = self.catalog.next_journal_seq(id)?;
            self.catalog.set_compacted(id, seq)?;
            // By name, not by listing: a LIST per finished album is a library-sized cost
            // on many servers, and a journal written after this point (a chunk uploaded
            // again) must stay.
            let journals = (0..seq).map(|s| journal_object(&rec.uid, s)).collect();
            delete_all(&self.remote, journals, &|_, _| {}).await?;
        }
        Ok(more)
    }

    /// One journal object per torrent in the batch, written in parallel.
    async fn write_batch(&self, batch: Vec<Record>) {
        let mut by_torrent: HashMap<TorrentId, Vec<Record>> = HashMap::new();
        for r in batch {
            by_torrent.entry(r.chunk.key.torrent).or_default().push(r);
        }
        let mut writes = futures::stream::iter(by_torrent)
            .map(|(id, records)| async move {
                let result = self.write_torrent_records(id, &records).await;
                for r in records {
                    let _ = r.reply.send(match &result {
                        Ok(known) => Ok(*known),
                        Err(JournalError::Remote(e)) => Err(e.clone()),
                        Err(e) => Err(RemoteError::Transient(e.to_string())),
                    });
                }
            })
            .buffer_unordered(PARALLEL);
        while writes.next().await.is_some() {}
    }

    async fn write_torrent_records(
        &self,
        id: TorrentId,
        records: &[Record],
    ) -> Result<bool, JournalError> {
        let rec = match self.catalog.torrent(id) {
            Ok(r) => r,
            Err(CatalogError::UnknownTorrent(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if records.iter().any(|r| r.chunk.torrent_uid != rec.uid) {
            return Ok(false);
        }
        // The torrent's own object comes first: journal records of a torrent restore
        // cannot name would be lost.
        if !self.catalog.remote_meta_exists(id)? {
            let (version, body) = self.catalog.meta_versions(id)?;
            self.write_torrent_meta(id, version).await?;
            self.catalog.set_body_written(id, body)?;
            self.catalog.set_meta_written(id, version)?;
        }
        let entries: Vec<ChunkRecordRemote> = records
            .iter()
            .map(|r| (r.chunk.key.index.0, r.chunk.hash, r.chunk.object_id.clone()))
            .collect();
        self.write_journal(id, &rec.uid, &entries).await?;
        Ok(true)
    }
}

/// Deletes a removed torrent's objects from the remote: its chunk objects (those given:
/// `--purge`), then its metadata. Idempotent, so an interrupted clean-up is simply run
/// again.
pub async fn cleanup(
    remote: &Remote,
    uid: &[u8; 16],
    objects: &[String],
) -> Result<(), RemoteError> {
    cleanup_with_progress(remote, uid, objects, &|_, _| {}).await
}

/// [`cleanup`], calling `progress(done, total)` as the chunk objects are deleted.
pub async fn cleanup_with_progress(
    remote: &Remote,
    uid: &[u8; 16],
    objects: &[String],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), RemoteError> {
    let chunk_keys: Vec<String> = objects.iter().map(|o| object_key_for(o)).collect();
    delete_all(remote, chunk_keys, progress).await?;
    let names = remote.list(&torrent_prefix(uid)).await?;
    // The torrent object last: while it exists, a restore would still find the rest.
    let tname = torrent_object(uid);
    let meta = names.into_iter().filter(|n| *n != tname).collect();
    delete_all(remote, meta, &|_, _| {}).await?;
    remote.delete(&tname).await
}

async fn delete_all(
    remote: &Remote,
    keys: Vec<String>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), RemoteError> {
    let total = keys.len() as u64;
    let mut deletes = futures::stream::iter(keys)
        .map(|k| {
            let r = remote.clone();
            async move { r.delete(&k).await }
        })
        .buffer_unordered(PARALLEL);
    let mut done = 0;
    while let Some(r) = deletes.next().await {
        r?;
        done += 1;
        progress(done, total);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let recs = vec![
            (0u32, [1u8; 32], crate::remote::new_object_id()),
            (77, [2u8; 32], crate::remote::new_object_id()),
        ];
        let bytes = encode_records(&recs).unwrap();
        assert_eq!(bytes.len(), 2 * RECORD_LEN);
        assert_eq!(decode_records("x", &bytes).unwrap(), recs);
        assert!(decode_records("x", &bytes[..RECORD_LEN + 3]).is_err());
        assert!(encode_records(&[(1, [0; 32], "not hex".into())]).is_err());
    }

    #[test]
    fn object_names_reveal_only_uids() {
        let uid = [0xab; 16];
        assert_eq!(
            journal_object(&uid, 10),
            format!("meta/t/{}/j/000000000000000a", hex::encode(uid))
        );
        for n in [
            torrent_object(&uid),
            chunks_object(&uid),
            journal_object(&uid, 0),
        ] {
            assert!(crate::remote::validate_key(&n).is_ok(), "{n}");
        }
    }
}
