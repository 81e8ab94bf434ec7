//! A real S3-protocol server for tests: runs `examples/s3_server` (s3s + s3s-fs) on
//! 127.0.0.1 over a directory, so objects are plain files tests can alter. The process
//! is killed by PID on Drop, also when a test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use bae::remote::s3::{S3Config, S3Credentials};

pub const ACCESS_KEY: &str = "bae-test-access-key";
pub const SECRET_KEY: &str = "bae-test-secret-key";
pub const BUCKET: &str = "bae-test";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) test S3 server.
pub struct S3Server {
    root: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Path of example `name`'s binary, built on first use if `cargo test` did not build it.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let target_dir = profile_dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--example", name, "--target-dir"])
            .arg(target_dir)
            .current_dir(super::swarm::repo_dir());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build --example");
        assert!(status.success(), "building the {name} example failed");
    }
    assert!(path.exists(), "missing {}", path.display());
    built.push((name.to_owned(), path.clone()));
    path
}

fn server_binary() -> PathBuf {
    example_binary("s3_server")
}

impl S3Server {
    /// Starts a server over `root` on a free port, with the bucket [`BUCKET`] created.
    pub fn start(root: &Path) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let mut server = S3Server {
            root: root.to_path_buf(),
            port: 0,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut child = Command::new(server_binary())
            .arg(&self.root)
            .arg(self.port.to_string())
            .args([ACCESS_KEY, SECRET_KEY])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn s3_server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        // Guard the child before waiting, so a failed start still kills it.
        self.child = Some(child);
        let line = rx
            .recv_timeout(READY_TIMEOUT)
            .expect("s3_server did not report READY");
        let url = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected s3_server output: {line}"));
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(self.port == 0 || self.port == port, "server moved ports");
        self.port = port;
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A config for [`BUCKET`] under `prefix` with the server's credentials.
    pub fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            bucket: BUCKET.to_string(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".to_string()),
            path_style: None,
            credentials: Some(S3Credentials {
                access_key_id: ACCESS_KEY.to_string(),
                secret_access_key: SECRET_KEY.to_string(),
            }),
        }
    }

    /// The file that holds object `full_key` (prefix included) of `bucket`.
    pub fn object_path(&self, bucket: &str, full_key: &str) -> PathBuf {
        self.root.join(bucket).join(full_key)
    }

    /// Kills the server; the port stays reserved for [`S3Server::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port over the same directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
