//! Versioned schema migrations, applied in order inside one transaction each.
//!
//! `PRAGMA user_version` holds the number of migrations applied. A migration is never
//! edited once released: new changes get a new entry at the end of `MIGRATIONS`.

use rusqlite::Connection;

use super::CatalogError;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE torrents (
        id           INTEGER PRIMARY KEY,
        uid          BLOB NOT NULL UNIQUE,      -- 16 random bytes: the chunks' identity
        info_hash_v1 BLOB UNIQUE,
        info_hash_v2 BLOB UNIQUE,
        name         TEXT NOT NULL,
        magnet       TEXT,                      -- source when added by magnet link
        peers        TEXT NOT NULL DEFAULT '[]',-- JSON list of peer addresses to dial
        metainfo     BLOB,                      -- bencoded .torrent, once known
        piece_len    INTEGER,                   -- NULL until metadata is known
        total_len    INTEGER,
        paused       INTEGER NOT NULL DEFAULT 0,
        seeding      INTEGER NOT NULL DEFAULT 1,
        pin          INTEGER NOT NULL DEFAULT 1,
        added_at     INTEGER NOT NULL
    );
    CREATE TABLE files (
        torrent_id    INTEGER NOT NULL REFERENCES torrents(id) ON DELETE CASCADE,
        idx           INTEGER NOT NULL,
        path          TEXT NOT NULL,            -- JSON array of raw path components
        stream_offset INTEGER NOT NULL,
        len           INTEGER NOT NULL,
        pad           INTEGER NOT NULL,
        mtime         INTEGER NOT NULL,
        PRIMARY KEY (torrent_id, idx)
    ) WITHOUT ROWID;
    CREATE TABLE chunks (
        torrent_id INTEGER NOT NULL REFERENCES torrents(id) ON DELETE CASCADE,
        idx        INTEGER NOT NULL,
        len        INTEGER NOT NULL,
        state      INTEGER NOT NULL,            -- model::ChunkState
        hash       BLOB,                        -- blake3 of the plaintext, once complete
        object_id  TEXT,                        -- opaque remote name, once complete
        PRIMARY KEY (torrent_id, idx)
    ) WITHOUT ROWID;
    CREATE INDEX chunks_by_state ON chunks(state);
    CREATE TABLE pieces (
        torrent_id INTEGER NOT NULL REFERENCES torrents(id) ON DELETE CASCADE,
        idx        INTEGER NOT NULL,
        PRIMARY KEY (torrent_id, idx)
    ) WITHOUT ROWID;
    "#,
    // 2: the remote's own metadata (per-torrent objects and upload journals) replaces the
    // whole-database snapshot; see tiering::journal.
    r#"
    ALTER TABLE torrents ADD COLUMN meta_version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE torrents ADD COLUMN meta_written INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE torrents ADD COLUMN journal_seq  INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE torrents ADD COLUMN compacted    INTEGER NOT NULL DEFAULT 0;
    -- Libraries from before this migration: their uploaded chunks are in no journal yet.
    ALTER TABLE torrents ADD COLUMN needs_full_journal INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE remote_cleanup (
        uid     BLOB PRIMARY KEY,               -- a removed torrent's uid
        objects TEXT NOT NULL                   -- JSON list of chunk object ids to delete (--purge)
    );
    "#,
    // 3: library scale. A chunk has a row only once it is complete (its hash and object
    // name are what need keeping); per-torrent counts, kept by triggers, let a start-up
    // load a settled torrent (all verified, all uploaded) or an untouched one without
    // reading a row per chunk.
    r#"
    DELETE FROM chunks WHERE state = 0;
    DROP INDEX IF EXISTS chunks_by_state;
    ALTER TABLE torrents ADD COLUMN n_verified INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE torrents ADD COLUMN n_complete INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE torrents ADD COLUMN n_uploaded INTEGER NOT NULL DEFAULT 0;
    UPDATE torrents SET
        n_verified = (SELECT count(*) FROM pieces p WHERE p.torrent_id = torrents.id),
        n_complete = (SELECT count(*) FROM chunks c WHERE c.torrent_id = torrents.id),
        n_uploaded = (SELECT count(*) FROM chunks c WHERE c.torrent_id = torrents.id AND c.state = 2);
    CREATE TRIGGER pieces_ins AFTER INSERT ON pieces BEGIN
        UPDATE torrents SET n_verified = n_verified + 1 WHERE id = NEW.torrent_id;
    END;
    CREATE TRIGGER pieces_del AFTER DELETE ON pieces BEGIN
        UPDATE torrents SET n_verified = n_verified - 1 WHERE id = OLD.torrent_id;
    END;
    CREATE TRIGGER chunks_ins AFTER INSERT ON chunks BEGIN
        UPDATE torrents SET n_complete = n_complete + 1,
            n_uploaded = n_uploaded + (NEW.state = 2) WHERE id = NEW.torrent_id;
    END;
    CREATE TRIGGER chunks_del AFTER DELETE ON chunks BEGIN
        UPDATE torrents SET n_complete = n_complete - 1,
            n_uploaded = n_uploaded - (OLD.state = 2) WHERE id = OLD.torrent_id;
    END;
    CREATE TRIGGER chunks_upd AFTER UPDATE OF state ON chunks BEGIN
        UPDATE torrents SET n_uploaded = n_uploaded + (NEW.state = 2) - (OLD.state = 2)
            WHERE id = NEW.torrent_id;
    END;
    "#,
    // 4: a torrent's remote metadata in two objects: its body (metainfo, name: written
    // once, again only when a magnet's metadata arrives) and its flags (small, rewritten
    // on every pause/seed/pin change). Torrents already written in full keep their body.
    r#"
    ALTER TABLE torrents ADD COLUMN body_version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE torrents ADD COLUMN body_written INTEGER NOT NULL DEFAULT 0;
    UPDATE torrents SET body_written = body_version
        WHERE meta_written > 0 AND meta_written >= meta_version;
    CREATE INDEX torrents_meta_stale ON torrents(id) WHERE meta_written < meta_version;
    "#,
    // 5: metainfo blobs in their own table. In the torrents row a blob sat before the
    // columns added later, so reading any of those walked the blob's overflow pages:
    // every scan of the torrents cost the whole library's metainfo.
    r#"
    CREATE TABLE torrent_metainfo (
        torrent_id INTEGER PRIMARY KEY REFERENCES torrents(id) ON DELETE CASCADE,
        bytes      BLOB NOT NULL
    );
    INSERT INTO torrent_metainfo (torrent_id, bytes)
        SELECT id, metainfo FROM torrents WHERE metainfo IS NOT NULL;
    UPDATE torrents SET metainfo = NULL;
    "#,
];

pub(super) fn migrate(conn: &mut Connection) -> Result<(), CatalogError> {
    let known = MIGRATIONS.len() as i64;
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if applied == known {
        // Up to date: no write lock for a plain open (`bae status` while the daemon runs).
        return Ok(());
    }
    loop {
        // The version is read inside the write transaction: another process may be
        // migrating the same database (two `bae` commands on a fresh library).
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let applied: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if applied > known {
            return Err(CatalogError::TooNew {
                found: applied,
                known,
            });
        }
        let Some(sql) = MIGRATIONS.get(applied as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", applied + 1)?;
        tx.commit()?;
    }
}
