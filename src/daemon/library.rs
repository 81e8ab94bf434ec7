//! The library on disk: `$BAE_HOME` (default `~/.local/share/bae`) holding
//! `config.toml`, `key` (0600), `bae.db`, `cache/`, and — for the embedded default
//! remote — `remote/`. Every command opens it through here; a command run before
//! `bae init` creates the default library.
//!
//! Invariant: `$BAE_HOME` is mode 0700 whenever bae uses it (the cache holds plaintext
//! chunks, the control socket lives there). It is created 0700; an existing one that
//! group or others may enter is tightened to 0700 with a warning (refusing would leave
//! the files exposed until the user acts), and one bae cannot tighten is an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::NewTorrent;
use crate::catalog::{Catalog, CatalogError};
use crate::model::{ChunkState, PieceIndex};
use crate::remote::crypto::{Key, KeyError};
use crate::remote::{
    LocalDirStore, ObjectStore, Remote, RemoteError, RemoteOptions, S3Config, S3Store,
};
use crate::tiering::journal::{self, JournalError, RestoredTorrent};
use crate::tiering::snapshot::{self, SnapshotError};

use super::config::{parse_remote_url, parse_size, Config, ConfigError, RemoteConfig};

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("torrent {name} in the remote cannot be restored: {reason}")]
    Restore { name: String, reason: String },
    #[error("a library already exists in {0}; remove it first or choose another BAE_HOME")]
    Exists(PathBuf),
    #[error("cannot create the library in {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is accessible to other users (mode {mode:o}) and could not be made private: {source}; run `chmod 700 {path}`")]
    Exposed {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error("--restore needs --key FILE (the key of the library to restore)")]
    RestoreNeedsKey,
    #[error("--endpoint and --region only make sense with --remote s3://…")]
    EndpointWithoutRemote,
}

/// What `bae init` was asked for.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub remote: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub cache_size: Option<String>,
    pub key_file: Option<PathBuf>,
    pub restore: bool,
}

pub struct Library {
    pub home: PathBuf,
    pub config: Config,
    pub key: Arc<Key>,
    pub catalog: Arc<Catalog>,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library").field("home", &self.home).finish()
    }
}

/// `$BAE_HOME`, else `$XDG_DATA_HOME/bae`, else `~/.local/share/bae`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("BAE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("bae");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/bae")
}

pub fn config_path(home: &Path) -> PathBuf {
    home.join("config.toml")
}

impl Library {
    pub fn db_path(&self) -> PathBuf {
        self.home.join("bae.db")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.home.join("cache")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.home.join("control.sock")
    }
    pub fn log_path(&self) -> PathBuf {
        self.home.join("daemon.log")
    }
    pub fn local_remote_dir(&self) -> PathBuf {
        self.home.join("remote")
    }

    /// Opens the library in `home`, creating the default one if there is none.
    pub async fn open_or_create(home: &Path) -> Result<Library, LibraryError> {
        if !config_path(home).exists() {
            return Library::init(home, &InitOptions::default()).await;
        }
        Library::open(home)
    }

    pub fn open(home: &Path) -> Result<Library, LibraryError> {
        make_private(home)?;
        let config = Config::load(&config_path(home))?;
        let key = Key::load(&home.join("key"))?;
        let catalog = Catalog::open(&home.join("bae.db"))?;
        Ok(Library {
            home: home.to_owned(),
            config,
            key: Arc::new(key),
            catalog: Arc::new(catalog),
        })
    }

    /// Creates a library. Everything is validated (sizes, remote URL, key, bucket
    /// access) before anything is written, so a failed init leaves nothing behind.
    pub async fn init(home: &Path, opts: &InitOptions) -> Result<Library, LibraryError> {
        Library::init_with_progress(home, opts, &|_, _| {}).await
    }

    /// [`Library::init`]; a restore calls `progress(done, total)` as torrents are read
    /// back from the remote.
    pub async fn init_with_progress(
        home: &Path,
        opts: &InitOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Library, LibraryError> {
        if config_path(home).exists() {
            return Err(LibraryError::Exists(home.to_owned()));
        }
        let mut config = Config::default();
        if let Some(s) = &opts.cache_size {
            parse_size(s)?;
            config.cache_size = s.clone();
        }
        match &opts.remote {
            Some(url) => {
                let (bucket, prefix) = parse_remote_url(url)?;
                config.remote = RemoteConfig::S3 {
                    bucket,
                    prefix,
                    endpoint: opts.endpoint.clone(),
                    region: opts.region.clone(),
                    path_style: None,
                };
            }
            None if opts.endpoint.is_some() || opts.region.is_some() => {
                return Err(LibraryError::EndpointWithoutRemote)
            }
            None => {}
        }
        if opts.restore && opts.key_file.is_none() {
            return Err(LibraryError::RestoreNeedsKey);
        }
        let key = match &opts.key_file {
            Some(f) => Key::load(f)?,
            None => Key::generate(),
        };
        let s3 = match config.remote {
            RemoteConfig::S3 { .. } => {
                // Bad credentials or a missing bucket are reported now, not at first upload.
                let remote = build_remote(&config, home).await?;
                check_remote(&remote).await?;
                Some(remote)
            }
            RemoteConfig::Local => None,
        };

        let created_dir = !home.exists();
        let result = async {
            create_private_dir(home)?;
            let remote = match s3 {
                Some(r) => r,
                None => build_remote(&config, home).await?,
            };
            key.write_to(&home.join("key"))?;
            if opts.restore {
                restore(&remote, &key, &home.join("bae.db"), progress).await?;
            }
            Catalog::open(&home.join("bae.db"))?;
            config.save(&config_path(home))?;
            Library::open(home)
        }
        .await;
        if result.is_err() {
            // Leave nothing half-made behind.
            for f in ["key", "bae.db", "bae.db-wal", "bae.db-shm", "config.toml"] {
                let _ = std::fs::remove_file(home.join(f));
            }
            if created_dir {
                let _ = std::fs::remove_dir_all(home);
            }
        }
        result
    }

    pub async fn remote(&self) -> Result<Remote, LibraryError> {
        build_remote(&self.config, &self.home).await
    }
}

/// Rebuilds the catalog at `db` from the remote's metadata (or, for a library from
/// before it, from its snapshot), calling `progress(done, total)` as torrents arrive.
async fn restore(
    remote: &Remote,
    key: &Key,
    db: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), LibraryError> {
    let progress = |done: usize, total: usize| progress(done as u64, total as u64);
    let found = journal::read_library(remote, key, &progress).await?;
    let Some((library_uid, torrents)) = found else {
        snapshot::restore(remote, key, db).await?;
        return Ok(());
    };
    let catalog = Catalog::open(db)?;
    catalog.set_library_uid(&library_uid)?;
    for t in torrents {
        restore_torrent(&catalog, t)?;
    }
    Ok(())
}

fn restore_torrent(catalog: &Catalog, t: RestoredTorrent) -> Result<(), LibraryError> {
    let bad = |reason: String| LibraryError::Restore {
        name: t.meta.name.clone(),
        reason,
    };
    let hash = |h: &Option<String>| h.as_ref().and_then(|h| hex::decode(h).ok());
    let metainfo = t.meta.metainfo_bytes();
    let parsed = metainfo
        .as_deref()
        .map(crate::torrent::parse_metainfo)
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let id = catalog.add_torrent(&NewTorrent {
        info_hash_v1: hash(&t.meta.info_hash_v1).and_then(|v| v.try_into().ok()),
        info_hash_v2: hash(&t.meta.info_hash_v2).and_then(|v| v.try_into().ok()),
        name: t.meta.name.clone(),
        magnet: t.meta.magnet.clone(),
        metainfo: metainfo.clone(),
        paused: t.meta.paused,
        peers: t.meta.peers.clone(),
        uid: Some(t.uid),
        added_at: Some(t.meta.added_at),
        no_pin: !t.meta.pin,
    })?;
    catalog.set_seeding(id, t.meta.seeding, t.meta.pin)?;
    let Some(meta) = parsed else {
        // A magnet whose metadata never arrived: nothing was downloaded.
        catalog.restore_chunks(id, &[], &[], false, t.next_seq)?;
        return Ok(());
    };
    let layout = super::storage::layout_of(&meta.layout);
    let g = catalog.set_layout(id, &layout, None, None)?;
    let uploaded: std::collections::HashSet<u32> = t.chunks.iter().map(|c| c.0).collect();
    let chunks: Vec<_> = t
        .chunks
        .iter()
        .filter(|c| c.0 < g.num_chunks())
        .cloned()
        .collect();
    // A piece is verified when every chunk holding it is safe in the remote.
    let pieces: Vec<u32> = (0..g.num_pieces())
        .filter(|&p| {
            g.chunks_of_piece(PieceIndex(p))
                .all(|c| uploaded.contains(&c))
        })
        .collect();
    catalog.restore_chunks(id, &chunks, &pieces, t.compacted, t.next_seq)?;
    debug_assert!(catalog
        .chunks(id)
        .map(|c| c.iter().filter(|c| c.state == ChunkState::Uploaded).count() == chunks.len())
        .unwrap_or(true));
    Ok(())
}

async fn check_remote(remote: &Remote) -> Result<(), LibraryError> {
    // A list is cheap and fails on bad credentials or a missing bucket.
    remote.list("catalog/").await?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), LibraryError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| LibraryError::Create {
            path: dir.to_owned(),
            source,
        })?;
    // An existing directory keeps its mode through `create`.
    make_private(dir)
}

/// Makes `home` mode 0700 if group or others have any access to it (with a warning).
fn make_private(home: &Path) -> Result<(), LibraryError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(home).map_err(|source| LibraryError::Create {
        path: home.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        LibraryError::Exposed {
            path: home.to_owned(),
            mode,
            source,
        }
    })?;
    tracing::warn!(
        home = %home.display(),
        "the library was accessible to other users (mode {mode:o}); it is now 0700"
    );
    Ok(())
}

/// The remote a config names, wrapped with bounded concurrency and retries.
pub async fn build_remote(config: &Config, home: &Path) -> Result<Remote, LibraryError> {
    let store: Arc<dyn ObjectStore> = match &config.remote {
        RemoteConfig::Local => Arc::new(LocalDirStore::new(home.join("remote"))?),
        RemoteConfig::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
        } => {
            let mut c = S3Config::new(bucket.clone());
            c.prefix = prefix.clone();
            c.endpoint = endpoint.clone();
            c.region = region.clone();
            c.path_style = *path_style;
            Arc::new(S3Store::new(c).await?)
        }
    };
    Ok(Remote::new(
        store,
        RemoteOptions {
            max_concurrent_requests: config.remote_concurrency,
            ..RemoteOptions::default()
        },
    ))
}
