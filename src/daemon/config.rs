//! `config.toml`: the library's settings, written by `bae init`, read by every command.
//!
//! Every key can be overridden for one run by an environment variable (rclone's
//! convention): `BAE_` + the key's path with dots as underscores, upper case
//! (`network.listen_port` → `BAE_NETWORK_LISTEN_PORT`). [`KEYS`] is the one list of keys;
//! the README's table is generated from it (a unit test keeps them equal). Overrides are
//! applied when the file is loaded and are never written back to it. Precedence: a
//! command's flag, then the environment, then the file, then the default. Flags that set
//! daemon settings travel to the background daemon as these same variables.

use std::path::{Path, PathBuf};

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
    #[error("{var}={value:?}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
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
    /// libtorrent's queue (torrents are auto-managed): how many download at once,
    /// seed at once, and are active in all. A library seeds thousands of albums; the
    /// queue rotates them.
    pub active_downloads: u32,
    pub active_seeds: u32,
    pub active_limit: u32,
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
            active_downloads: 8,
            active_seeds: 200,
            active_limit: 1000,
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
    /// Serve Prometheus/OpenMetrics text on this address (`127.0.0.1:9100`); off if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// Allow `metrics_addr` to be a non-loopback address.
    pub metrics_allow_remote: bool,
    /// A folder whose dropped `.torrent` / `.magnet` files are added; off if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_dir: Option<PathBuf>,
    /// How often the watch folder is looked at.
    pub watch_interval_secs: u64,
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
            readahead_chunks: 16,
            metrics_addr: None,
            metrics_allow_remote: false,
            watch_dir: None,
            watch_interval_secs: 2,
            cache_free_reserve: None,
        }
    }
}

/// What kind of value a key holds, for parsing its environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// A size text such as `20GiB` (checked when set from the environment).
    Size,
    Number,
    Bool,
    /// Text; an empty variable unsets it.
    OptionalText,
}

/// One `config.toml` key and where else it can be set.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// Dotted path in `config.toml`.
    pub key: &'static str,
    pub kind: Kind,
    /// The command-line flag(s) that set it, for the README table.
    pub flag: &'static str,
    pub help: &'static str,
}

/// Every key of `config.toml`.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "cache_size",
        kind: Kind::Size,
        flag: "`init --cache-size`, `mount --cache-size`",
        help: "local cache limit",
    },
    KeySpec {
        key: "read_timeout_secs",
        kind: Kind::Number,
        flag: "`mount --read-timeout`",
        help: "how long a read waits for data before EIO",
    },
    KeySpec {
        key: "upload_concurrency",
        kind: Kind::Number,
        flag: "",
        help: "chunks uploaded at once",
    },
    KeySpec {
        key: "remote_concurrency",
        kind: Kind::Number,
        flag: "",
        help: "requests in flight to the remote",
    },
    KeySpec {
        key: "readahead_chunks",
        kind: Kind::Number,
        flag: "",
        help: "chunks read ahead of a sequential reader (on into the next file of the torrent); local ones are held in memory until read",
    },
    KeySpec {
        key: "metrics_addr",
        kind: Kind::OptionalText,
        flag: "`mount --metrics`",
        help: "serve Prometheus metrics here (off if unset)",
    },
    KeySpec {
        key: "metrics_allow_remote",
        kind: Kind::Bool,
        flag: "`mount --metrics-allow-remote`",
        help: "allow a non-loopback metrics address",
    },
    KeySpec {
        key: "watch_dir",
        kind: Kind::OptionalText,
        flag: "`mount --watch-dir`",
        help: "add .torrent/.magnet files dropped here (off if unset)",
    },
    KeySpec {
        key: "watch_interval_secs",
        kind: Kind::Number,
        flag: "",
        help: "how often the watch folder is looked at",
    },
    KeySpec {
        key: "cache_free_reserve",
        kind: Kind::OptionalText,
        flag: "",
        help: "free space kept on the cache's filesystem (`2GiB` or `5%`; default the smaller)",
    },
    KeySpec {
        key: "remote.kind",
        kind: Kind::Text,
        flag: "`init --remote`",
        help: "`local` or `s3`",
    },
    KeySpec {
        key: "remote.bucket",
        kind: Kind::Text,
        flag: "`init --remote`",
        help: "S3 bucket (setting it implies `kind = s3`)",
    },
    KeySpec {
        key: "remote.prefix",
        kind: Kind::Text,
        flag: "`init --remote`",
        help: "key prefix inside the bucket",
    },
    KeySpec {
        key: "remote.endpoint",
        kind: Kind::OptionalText,
        flag: "`init --endpoint`",
        help: "S3 endpoint URL (S3-compatible services)",
    },
    KeySpec {
        key: "remote.region",
        kind: Kind::OptionalText,
        flag: "`init --region`",
        help: "S3 region",
    },
    KeySpec {
        key: "remote.path_style",
        kind: Kind::Bool,
        flag: "",
        help: "path-style addressing (default: on with an endpoint)",
    },
    KeySpec {
        key: "network.listen_port",
        kind: Kind::Number,
        flag: "`mount --listen`",
        help: "port for peers (0: any free port)",
    },
    KeySpec {
        key: "network.listen_address",
        kind: Kind::Text,
        flag: "",
        help: "address to listen on for peers",
    },
    KeySpec {
        key: "network.dht",
        kind: Kind::Bool,
        flag: "",
        help: "DHT",
    },
    KeySpec {
        key: "network.lsd",
        kind: Kind::Bool,
        flag: "",
        help: "local service discovery",
    },
    KeySpec {
        key: "network.upnp",
        kind: Kind::Bool,
        flag: "",
        help: "UPnP port mapping",
    },
    KeySpec {
        key: "network.natpmp",
        kind: Kind::Bool,
        flag: "",
        help: "NAT-PMP port mapping",
    },
    KeySpec {
        key: "network.utp",
        kind: Kind::Bool,
        flag: "",
        help: "uTP besides TCP",
    },
    KeySpec {
        key: "network.active_downloads",
        kind: Kind::Number,
        flag: "",
        help: "torrents downloading at once (the rest queue)",
    },
    KeySpec {
        key: "network.active_seeds",
        kind: Kind::Number,
        flag: "",
        help: "torrents seeding at once",
    },
    KeySpec {
        key: "network.active_limit",
        kind: Kind::Number,
        flag: "",
        help: "torrents active at once in all",
    },
];

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!("BAE_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Parses an environment value for a key of `kind`. `None`: unset the key.
fn env_value(spec: &KeySpec, var: &str, value: &str) -> Result<Option<toml::Value>, ConfigError> {
    let bad = |message: &str| ConfigError::Env {
        var: var.into(),
        value: value.into(),
        message: message.into(),
    };
    let v = value.trim();
    Ok(Some(match spec.kind {
        Kind::Text => toml::Value::String(v.into()),
        Kind::OptionalText if v.is_empty() => return Ok(None),
        Kind::OptionalText => toml::Value::String(v.into()),
        Kind::Size => {
            parse_size(v).map_err(|_| bad("not a size (examples: 500MiB, 20G)"))?;
            toml::Value::String(v.into())
        }
        Kind::Number => toml::Value::Integer(
            v.parse::<u32>()
                .map_err(|_| bad("not a whole number"))?
                .into(),
        ),
        Kind::Bool => toml::Value::Boolean(match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(bad("not a boolean (true/false, 1/0, yes/no, on/off)")),
        }),
    }))
}

/// Sets (or removes, with `None`) the dotted `key` in `table`, creating tables on the way.
fn set_path(table: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let Some(next) = entry.as_table_mut() else {
            return;
        };
        t = next;
    }
    match value {
        Some(v) => {
            t.insert(last.to_string(), v);
        }
        None => {
            t.remove(last);
        }
    }
}

fn get_path<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    parts.try_fold(table.get(first)?, |v, p| v.as_table()?.get(p))
}

/// The environment overrides present, as `(variable, key)` pairs, in [`KEYS`] order.
pub fn overrides_in(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, &'static str)> {
    KEYS.iter()
        .filter_map(|k| {
            let var = env_name(k.key);
            env(&var).map(|_| (var, k.key))
        })
        .collect()
}

/// The README table of keys: key, environment variable, flag, default, meaning.
pub fn markdown_table() -> String {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut s =
        String::from("| key | environment | flag | default | meaning |\n|---|---|---|---|---|\n");
    for k in KEYS {
        let default = match get_path(&defaults, k.key) {
            Some(toml::Value::String(v)) => format!("`{v}`"),
            Some(v) => format!("`{v}`"),
            None => "unset".into(),
        };
        s += &format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            k.key,
            env_name(k.key),
            if k.flag.is_empty() { "" } else { k.flag },
            default,
            k.help
        );
    }
    s
}

impl Config {
    /// Loads `path` with the process environment's `BAE_…` overrides applied.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, &|var| std::env::var(var).ok())
    }

    /// Loads `path` with the overrides `env` gives (a lookup by variable name).
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let parse_err = |e: &dyn std::fmt::Display| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| parse_err(&e))?;
        let overrides = overrides_in(env);
        for (var, key) in &overrides {
            let Some(spec) = KEYS.iter().find(|k| k.key == *key) else {
                continue;
            };
            let raw = env(var).unwrap_or_default();
            set_path(&mut table, key, env_value(spec, var, &raw)?);
        }
        // A bucket from the environment means an S3 remote, unless the kind is given too.
        let kind_given = overrides.iter().any(|(_, k)| *k == "remote.kind");
        if !kind_given && overrides.iter().any(|(_, k)| *k == "remote.bucket") {
            set_path(
                &mut table,
                "remote.kind",
                Some(toml::Value::String("s3".into())),
            );
        }
        let cfg: Config = table.try_into().map_err(|e| {
            if overrides.is_empty() {
                parse_err(&e)
            } else {
                let vars: Vec<&str> = overrides.iter().map(|(v, _)| v.as_str()).collect();
                parse_err(&format!("{e} (with {} set)", vars.join(", ")))
            }
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
        assert!(Config::load_with_env(&p, &|_| None).is_err());
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |var: &str| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    }

    #[test]
    fn environment_overrides_every_kind_of_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        Config::default().save(&p).unwrap();
        let env = env_of(&[
            ("BAE_CACHE_SIZE", "3GiB"),
            ("BAE_NETWORK_LISTEN_PORT", "7001"),
            ("BAE_NETWORK_DHT", "off"),
            ("BAE_METRICS_ADDR", "127.0.0.1:9100"),
            ("BAE_REMOTE_BUCKET", "music"),
            ("BAE_REMOTE_ENDPOINT", "http://127.0.0.1:9000"),
        ]);
        let c = Config::load_with_env(&p, &env).unwrap();
        assert_eq!(c.cache_size_bytes(), 3 << 30);
        assert_eq!(c.network.listen_port, 7001);
        assert!(!c.network.dht);
        assert_eq!(c.metrics_addr.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(
            c.remote,
            RemoteConfig::S3 {
                bucket: "music".into(),
                prefix: "".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: None,
                path_style: None,
            }
        );
        // Never written back.
        assert_eq!(
            Config::load_with_env(&p, &|_| None).unwrap(),
            Config::default()
        );
        // An empty optional variable unsets the key.
        let with_metrics = Config {
            metrics_addr: Some("127.0.0.1:1".into()),
            ..Config::default()
        };
        with_metrics.save(&p).unwrap();
        let c = Config::load_with_env(&p, &env_of(&[("BAE_METRICS_ADDR", "")])).unwrap();
        assert_eq!(c.metrics_addr, None);
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        Config::default().save(&p).unwrap();
        for (var, value) in [
            ("BAE_NETWORK_LISTEN_PORT", "http"),
            ("BAE_NETWORK_UTP", "maybe"),
            ("BAE_CACHE_SIZE", "lots"),
        ] {
            let e = Config::load_with_env(&p, &env_of(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(var), "{e}");
        }
        // In range for u32 but not for a port: the error says which variable was set.
        let e = Config::load_with_env(&p, &env_of(&[("BAE_NETWORK_LISTEN_PORT", "70000")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("BAE_NETWORK_LISTEN_PORT"), "{e}");
    }

    #[test]
    fn every_key_is_in_the_default_config_and_the_readme() {
        // Each key names a real field: setting it from the environment changes the config.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for k in KEYS {
            let top = k.key.split('.').next().unwrap();
            assert!(
                defaults.contains_key(top) || k.kind == Kind::OptionalText,
                "{}",
                k.key
            );
        }
        let repo = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let readme = std::fs::read_to_string(Path::new(&repo).join("README.md")).unwrap();
        assert!(
            readme.contains(&markdown_table()),
            "README.md's configuration table is out of date; it should read:\n{}",
            markdown_table()
        );
    }
}
