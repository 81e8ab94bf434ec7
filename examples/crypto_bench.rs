//! Throughput of object sealing and opening for 1 MiB chunks, the unit bae moves.
//! Run with `cargo run --release --example crypto_bench [TOTAL_MIB]`.

use std::hint::black_box;
use std::time::Instant;

use bae::remote::crypto::{self, ChunkIdentity, Key, ObjectIdentity};

const CHUNK_LEN_BYTES: usize = 1 << 20;

fn mib_per_s(total_bytes: usize, secs: f64) -> f64 {
    total_bytes as f64 / (1024.0 * 1024.0) / secs
}

fn main() {
    let total_mib: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let key = Key::generate();
    let ident = ObjectIdentity::Chunk(ChunkIdentity {
        torrent_uid: [1; 16],
        index: 0,
        len_bytes: CHUNK_LEN_BYTES as u32,
    });
    let aad = ident.aad();
    let chunk: Vec<u8> = (0..CHUNK_LEN_BYTES).map(|i| (i % 251) as u8).collect();

    // Warm up caches and CPU frequency.
    for _ in 0..16 {
        black_box(crypto::seal(&key, &aad, &chunk));
    }

    let start = Instant::now();
    let mut sealed = Vec::new();
    for _ in 0..total_mib {
        sealed = black_box(crypto::seal(&key, &aad, black_box(&chunk)));
    }
    let seal_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for _ in 0..total_mib {
        black_box(crypto::open(&key, &aad, black_box(&sealed)).ok());
    }
    let open_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for _ in 0..total_mib {
        black_box(crypto::open_in_place(&key, &aad, black_box(sealed.clone())).ok());
    }
    let open_in_place_secs = start.elapsed().as_secs_f64();

    let total_bytes = total_mib * CHUNK_LEN_BYTES;
    println!("chunks: {total_mib} x 1 MiB");
    println!(
        "seal:          {:8.1} MiB/s",
        mib_per_s(total_bytes, seal_secs)
    );
    println!(
        "open:          {:8.1} MiB/s",
        mib_per_s(total_bytes, open_secs)
    );
    println!(
        "open_in_place: {:8.1} MiB/s (includes one copy of the object)",
        mib_per_s(total_bytes, open_in_place_secs)
    );
}
