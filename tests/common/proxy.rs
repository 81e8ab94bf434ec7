//! The fault-injecting proxy (`examples/fault_proxy`) for tests: put it between bae and
//! the test S3 server, then switch faults on and off while the test runs. Each command
//! returns once the proxy has acknowledged it, so a fault is in force when `set`
//! returns. The process is killed by PID on Drop, also when a test fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use super::s3::{example_binary, ACCESS_KEY, SECRET_KEY};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct FaultProxy {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    port: u16,
}

impl FaultProxy {
    /// Starts a proxy on a free port in front of `upstream` (http://127.0.0.1:PORT).
    pub fn start(upstream: &str) -> FaultProxy {
        let mut child = Command::new(example_binary("fault_proxy"))
            .args([upstream, "0", ACCESS_KEY, SECRET_KEY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fault_proxy");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proxy = FaultProxy {
            child,
            stdin,
            lines,
            port: 0,
        };
        let line = proxy.next_line();
        let url = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected fault_proxy output: {line}"));
        proxy.port = url.rsplit(':').next().unwrap().parse().unwrap();
        proxy
    }

    fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(ANSWER_TIMEOUT)
            .expect("fault_proxy did not answer")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends one command (see examples/fault_proxy.rs) and waits for its answer.
    pub fn send(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let answer = self.next_line();
        assert!(
            !answer.starts_with("ERR"),
            "fault_proxy: {command}: {answer}"
        );
        answer
    }

    /// Switches faults on: each entry is one command.
    pub fn set(&mut self, commands: &[&str]) {
        for c in commands {
            self.send(c);
        }
    }

    /// Every fault off, connections accepted.
    pub fn clear(&mut self) {
        self.send("clear");
    }

    /// The proxy's counters (requests, forwarded, errors, resets, truncated_puts, …).
    pub fn stats(&mut self) -> HashMap<String, u64> {
        let line = self.send("stats");
        line.strip_prefix("STATS ")
            .unwrap_or_else(|| panic!("unexpected stats line: {line}"))
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(0)))
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
