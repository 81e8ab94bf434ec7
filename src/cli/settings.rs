//! Settings from flags and the environment, and `bae config`.
//!
//! Flags that set a `config.toml` key for one run (`bae mount --metrics ADDR`…) are
//! turned into the key's `BAE_…` variable in this process before the library is opened,
//! so the one place that applies overrides (`Config::load`) sees them, and a daemon
//! started in the background inherits them with the rest of the environment.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::daemon::config;

/// Daemon settings `bae mount` takes as flags (each also a `config.toml` key).
#[derive(Clone, Debug, Default, Args)]
pub struct MountSettings {
    /// Serve Prometheus/OpenMetrics text at http://ADDR/metrics (loopback unless
    /// --metrics-allow-remote). Key `metrics_addr`, env BAE_METRICS_ADDR.
    #[arg(long, value_name = "ADDR", help_heading = "Daemon settings")]
    pub metrics: Option<String>,
    /// Allow --metrics on a non-loopback address.
    #[arg(long, help_heading = "Daemon settings")]
    pub metrics_allow_remote: bool,
    /// Add the .torrent and .magnet files dropped in DIR. Key `watch_dir`.
    #[arg(long, value_name = "DIR", help_heading = "Daemon settings")]
    pub watch_dir: Option<PathBuf>,
    /// Seconds a read may wait for data before it fails with EIO. Key `read_timeout_secs`.
    #[arg(long, value_name = "SECS", help_heading = "Daemon settings")]
    pub read_timeout: Option<u64>,
}

impl MountSettings {
    /// Exports the flags given as their `BAE_…` variables (see the module comment).
    pub fn export(&self) {
        let set = |key: &str, value: String| {
            // Called before this process starts any thread that reads the environment.
            std::env::set_var(config::env_name(key), value);
        };
        if let Some(a) = &self.metrics {
            set("metrics_addr", a.clone());
        }
        if self.metrics_allow_remote {
            set("metrics_allow_remote", "true".into());
        }
        if let Some(d) = &self.watch_dir {
            // The background daemon runs from `/`: it needs an absolute path.
            let abs = std::path::absolute(d).unwrap_or_else(|_| d.clone());
            set("watch_dir", abs.display().to_string());
        }
        if let Some(s) = self.read_timeout {
            set("read_timeout_secs", s.to_string());
        }
    }
}

/// `bae config`: the settings in effect (file + environment), and where they came from.
pub fn show(home: &Path, table: bool) -> anyhow::Result<()> {
    if table {
        print!("{}", config::markdown_table());
        return Ok(());
    }
    let lib = super::open_library(home)?;
    let text = toml::to_string_pretty(&lib.config)?;
    println!(
        "# {}",
        crate::daemon::library::config_path(&lib.home).display()
    );
    let overrides = config::overrides_in(&|v| std::env::var(v).ok());
    for (var, key) in &overrides {
        println!("# {key}: from {var}");
    }
    print!("{text}");
    Ok(())
}
