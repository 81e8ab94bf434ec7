//! Test tool: a process that fills a chunk store with one synthetic torrent and
//! uploads it to an S3 server, so tests can `kill -9` it mid-upload and restart it.
//!
//! Usage: store_worker HOME ENDPOINT BUCKET CHUNKS PUT_LATENCY_MS
//! Credentials come from the standard AWS environment variables. Prints
//! `STORED` once the content is durable and `DONE <n>` when every chunk is uploaded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bae::catalog::{Catalog, FileRecord, Layout, NewTorrent};
use bae::model::{PieceIndex, CHUNK_LEN};
use bae::remote::crypto::Key;
use bae::remote::{FaultyStore, ObjectStore, Remote, RemoteOptions, S3Config, S3Store};
use bae::store::Store;
use bae::tiering::{Journal, Uploader};

/// Deterministic content so a test can check the bytes that come back.
pub fn content_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 6,
        "usage: store_worker HOME ENDPOINT BUCKET CHUNKS PUT_LATENCY_MS"
    );
    let home = PathBuf::from(&args[1]);
    let chunks: u64 = args[4].parse()?;
    let latency_ms: u64 = args[5].parse()?;
    std::fs::create_dir_all(&home)?;

    let key_path = home.join("key");
    let key = if key_path.exists() {
        Key::load(&key_path)?
    } else {
        Key::write_new(&key_path)?
    };
    let catalog = Arc::new(Catalog::open(&home.join("bae.db"))?);
    let id = match catalog.torrents()?.first() {
        Some(t) => t.id,
        None => {
            let id = catalog.add_torrent(&NewTorrent {
                info_hash_v1: Some([9; 20]),
                name: "worker".into(),
                ..Default::default()
            })?;
            let total = chunks * CHUNK_LEN - 777;
            catalog.set_layout(
                id,
                &Layout {
                    piece_len: 512 * 1024,
                    total_len: total,
                    files: vec![FileRecord {
                        path: vec!["data".into()],
                        stream_offset: 0,
                        len: total,
                        pad: false,
                        mtime: 0,
                    }],
                },
                None,
                None,
            )?;
            catalog.set_seeding(id, false, false)?;
            id
        }
    };
    let store = Store::open(
        &home.join("cache"),
        catalog.clone(),
        1 << 40,
        tokio::runtime::Handle::current(),
    )?;
    let g = store.register_torrent(id)?;
    if store.torrent_stats(id).map(|s| s.pieces_verified) == Some(0) {
        let data: Vec<u8> = (0..g.total_len()).map(content_byte).collect();
        for off in (0..g.total_len()).step_by(16384) {
            let end = (off + 16384).min(g.total_len());
            store.write(id, off, &data[off as usize..end as usize])?;
        }
        let pieces: Vec<PieceIndex> = (0..g.num_pieces()).map(PieceIndex).collect();
        store.pieces_verified(id, &pieces);
        store.flush()?;
    }
    println!("STORED");

    let mut cfg = S3Config::new(args[3].clone());
    cfg.endpoint = Some(args[2].clone());
    cfg.region = Some("us-east-1".into());
    let s3: Arc<dyn ObjectStore> = Arc::new(S3Store::new(cfg).await?);
    let faulty = Arc::new(FaultyStore::new(s3));
    faulty.set_latency_ms(latency_ms);
    let remote = Remote::new(faulty, RemoteOptions::default());
    let key = Arc::new(key);
    let journal = Journal::started(remote.clone(), key.clone(), store.catalog().clone())?;
    let uploader = Uploader::start(store.clone(), remote, key, journal, 2);
    while !uploader.wait_idle(Duration::from_secs(600)).await {}
    println!("DONE {}", uploader.status().uploaded_chunks);
    store.shutdown()?;
    Ok(())
}
