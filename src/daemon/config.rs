//! `config.toml`: the library's settings, written by `bae init`, read by every command.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid bae config: {message}")]
    Parse { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid size {0:?} (examples: 500MiB, 20G, 1073741824)")]
    Size(String),
    #[error("invalid remote {0:?}: expected s3://BUCKET[/PREFIX]")]
    RemoteUrl(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RemoteConfig {
    /// The embedded default: a directory inside the library (`remote/`).
    Local,
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_style: Option<bool>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkConfig {
    /// Port to listen on for peers (0: any free port).
    pub listen_port: u16,
    /// Interface address to listen on.
    pub listen_address: String,
    pub dht: bool,
    pub lsd: bool,
    pub upnp: bool,
    pub natpmp: bool,
    /// uTP crawls over loopback with libtorrent 2.0.8; TCP only is the safe default
    /// for local swarms and tests.
    pub utp: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen_port: 6881,
            listen_address: "0.0.0.0".into(),
            dht: true,
            lsd: true,
            upnp: true,
            natpmp: true,
            utp: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Cache limit, e.g. "20GiB".
    pub cache_size: String,
    pub remote: RemoteConfig,
    pub network: NetworkConfig,
    /// How long a read may wait for pieces or the remote before failing with EIO.
    pub read_timeout_secs: u64,
    pub upload_concurrency: usize,
    /// Requests in flight to the remote at once (uploads and fetches together).
    pub remote_concurrency: usize,
    /// Chunks read ahead of a sequential reader.
    pub readahead_chunks: u32,
    /// Free space kept on the cache's filesystem: a size ("2GiB") or a share of the
    /// filesystem ("5%"). Unset: the smaller of 2 GiB and 5 %.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_free_reserve: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cache_size: "10GiB".into(),
            remote: RemoteConfig::Local,
            network: NetworkConfig::default(),
            read_timeout_secs: 60,
            upload_concurrency: 8,
            remote_concurrency: 32,
            readahead_chunks: 8,
            cache_free_reserve: None,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        parse_size(&cfg.cache_size).map_err(|_| ConfigError::Parse {
            path: path.display().to_string(),
            message: format!("cache_size {:?} is not a size", cfg.cache_size),
        })?;
        Ok(cfg)
    }

    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        };
        let text = toml::to_string_pretty(self).map_err(|e| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.to_string(),
            ))
        })?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    pub fn cache_size_bytes(&self) -> u64 {
        parse_size(&self.cache_size).unwrap_or(10 << 30)
    }
}

/// Parses "1073741824", "500M", "500MiB", "1.5GB", "20 G" (binary units throughout:
/// a cache size is about disk blocks, not marketing).
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| ConfigError::Size(text.into()))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(ConfigError::Size(text.into())),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(ConfigError::Size(text.into()));
    }
    Ok(bytes as u64)
}

/// Parses `s3://BUCKET[/PREFIX]`.
pub fn parse_remote_url(url: &str) -> Result<(String, String), ConfigError> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| ConfigError::RemoteUrl(url.into()))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty()
        || !bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(ConfigError::RemoteUrl(url.into()));
    }
    Ok((bucket.into(), prefix.trim_matches('/').into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size(" 20 gb ").unwrap(), 20 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn remote_urls() {
        assert_eq!(
            parse_remote_url("s3://music").unwrap(),
            ("music".into(), "".into())
        );
        assert_eq!(
            parse_remote_url("s3://music/bae/lib/").unwrap(),
            ("music".into(), "bae/lib".into())
        );
        assert!(parse_remote_url("http://x").is_err());
        assert!(parse_remote_url("s3:///x").is_err());
        assert!(parse_remote_url("s3://Bad_Bucket").is_err());
    }

    #[test]
    fn round_trips_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        let mut c = Config {
            remote: RemoteConfig::S3 {
                bucket: "b".into(),
                prefix: "p".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: None,
                path_style: None,
            },
            ..Config::default()
        };
        c.network.dht = false;
        c.save(&p).unwrap();
        assert_eq!(Config::load(&p).unwrap(), c);
        std::fs::write(&p, "cache_size = 12").unwrap();
        assert!(Config::load(&p).is_err());
    }
}
