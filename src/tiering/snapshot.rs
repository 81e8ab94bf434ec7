//! The catalog snapshot: the whole SQLite database, sealed like a chunk and stored in
//! the remote under `catalog/<library uid>`, so that `bae init --restore` on a new
//! machine can rebuild the library (torrents, files, chunk map) from the bucket and the
//! key alone. The object name holds only the random library uid.

use std::path::Path;

use bytes::Bytes;

use crate::catalog::{Catalog, CatalogError};
use crate::remote::crypto::{self, Key, ObjectIdentity};
use crate::remote::{ObjectStore, Remote, RemoteError};

pub const SNAPSHOT_PREFIX: &str = "catalog/";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the remote holds no library snapshot")]
    Missing,
    #[error("the remote holds several libraries ({0}); keep one per bucket/prefix")]
    Several(String),
    #[error(
        "the library snapshot cannot be decrypted with this key (wrong key, or corrupted): {0}"
    )]
    Crypto(#[from] crypto::CryptoError),
}

fn object_name(uid: &[u8; 16]) -> String {
    format!("{SNAPSHOT_PREFIX}{}", hex::encode(uid))
}

/// Seals a consistent copy of the catalog and stores it in the remote.
pub async fn upload(
    catalog: &Catalog,
    remote: &Remote,
    key: &Key,
    scratch: &Path,
) -> Result<(), SnapshotError> {
    let uid = catalog.library_uid()?;
    let path = scratch.join("snapshot.db");
    catalog.backup_to(&path)?;
    let plain = std::fs::read(&path)?;
    let _ = std::fs::remove_file(&path);
    let object = crypto::seal(
        key,
        &ObjectIdentity::Snapshot { library_uid: uid }.aad(),
        &plain,
    );
    remote.put(&object_name(&uid), Bytes::from(object)).await?;
    Ok(())
}

/// Fetches the one library snapshot in the remote and writes the database to `dest`.
pub async fn restore(remote: &Remote, key: &Key, dest: &Path) -> Result<(), SnapshotError> {
    let names = remote.list(SNAPSHOT_PREFIX).await?;
    let uids: Vec<[u8; 16]> = names
        .iter()
        .filter_map(|n| n.strip_prefix(SNAPSHOT_PREFIX))
        .filter_map(|h| hex::decode(h).ok())
        .filter_map(|v| v.try_into().ok())
        .collect();
    let uid = match uids.as_slice() {
        [] => return Err(SnapshotError::Missing),
        [one] => *one,
        many => {
            return Err(SnapshotError::Several(
                many.iter().map(hex::encode).collect::<Vec<_>>().join(", "),
            ))
        }
    };
    let object = remote.get(&object_name(&uid)).await?;
    let plain = crypto::open_in_place(
        key,
        &ObjectIdentity::Snapshot { library_uid: uid }.aad(),
        object.to_vec(),
    )?;
    let tmp = dest.with_extension("restore.tmp");
    std::fs::write(&tmp, plain)?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}
