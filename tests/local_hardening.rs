//! The local edges, through the real binary: `$BAE_HOME` is kept 0700, a key file other
//! users can read is refused, and the control socket answers only its owner and root
//! (mode 0600 and a peer-credential check, shown with a second uid via `setpriv`),
//! and only requests of a bounded size.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use common::bae::Bae;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_library_home_is_kept_private() {
    let bae = Bae::new();
    assert_eq!(mode(&bae.home), 0o700);
    assert_eq!(mode(&bae.home.join("key")), 0o600);
    chmod(&bae.home, 0o755);
    let out = bae.run(&["status"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accessible to other users"), "{err}");
    assert_eq!(mode(&bae.home), 0o700);
    // Quiet once it is private.
    let out = bae.run(&["status"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_key_file_others_can_read_is_an_error() {
    let bae = Bae::new();
    let key = bae.home.join("key");
    for m in [0o644, 0o640] {
        chmod(&key, m);
        let err = bae.fails(&["status"]);
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains(&key.display().to_string()), "{err}");
    }
    chmod(&key, 0o600);
    bae.ok(&["status"]);

    // A key given to `init` is held to the same rule, and nothing is created.
    let dir = tempfile::tempdir().unwrap();
    let given = dir.path().join("given.key");
    std::fs::write(&given, "ab".repeat(32)).unwrap();
    chmod(&given, 0o644);
    let home = dir.path().join("home");
    let out = Command::new(env!("CARGO_BIN_EXE_bae"))
        .env("BAE_HOME", &home)
        .args(["init", "--key", given.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    assert!(!home.join("config.toml").exists());
}

/// Connects to `socket` as uid/gid 65534 (nobody) and sends a ping. Returns what the
/// client saw: `CONNECT <errno name>` or `ANSWER <first line>`.
fn ping_as_nobody(socket: &Path) -> String {
    const CLIENT: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("CONNECT", errno.errorcode.get(e.errno, e.errno)); sys.exit(0)
try:
    s.sendall(b'{"op":"ping"}\n')
except BrokenPipeError:
    pass  # a refusing daemon may hang up first; its answer is still there to read
print("ANSWER", s.makefile().readline().strip())
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            CLIENT,
        ])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_control_socket_answers_only_its_owner_and_root() {
    let bae = Bae::new();
    bae.mount();
    let socket = bae.home.join("control.sock");
    assert_eq!(mode(&socket), 0o600);
    let parent = bae.home.parent().unwrap().to_owned();
    let parent_mode = mode(&parent);

    // Let nobody reach the socket file: the directories are traversable.
    chmod(&parent, 0o711);
    chmod(&bae.home, 0o711);
    // The socket's mode stops another user...
    let seen = ping_as_nobody(&socket);
    assert_eq!(seen, "CONNECT EACCES");
    // ...and with the mode loosened too, the peer-credential check does.
    chmod(&socket, 0o666);
    let seen = ping_as_nobody(&socket);
    assert!(seen.starts_with("ANSWER "), "{seen}");
    assert!(seen.contains("refused"), "{seen}");
    assert!(seen.contains("uid 65534"), "{seen}");
    assert!(!seen.contains("pong"), "{seen}");
    assert!(bae.log().contains("refused a connection from uid 65534"));

    chmod(&socket, 0o600);
    chmod(&bae.home, 0o700);
    chmod(&parent, parent_mode);
    // The owner (root here) is still served.
    assert_eq!(bae.status_json()["daemon_running"], true);
    bae.umount();
}

#[test]
fn oversized_control_requests_are_refused() {
    let bae = Bae::new();
    bae.mount();
    let socket = bae.home.join("control.sock");
    let stream = UnixStream::connect(&socket).unwrap();
    let mut writer = stream.try_clone().unwrap();
    // The daemon stops reading at the limit, so the rest of the write may fail.
    let sender = std::thread::spawn(move || {
        let big = vec![b'a'; (2 << 20) + 1];
        let _ = writer.write_all(&big);
    });
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    sender.join().unwrap();
    assert!(line.contains("request too large"), "{line}");
    assert!(line.contains(&(1u64 << 20).to_string()), "{line}");
    // A malformed small request gets a clear error too; the daemon goes on serving.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(b"{\"op\":\"no-such-op\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains("bad request"), "{line}");
    assert_eq!(bae.status_json()["daemon_running"], true);
    bae.umount();
}
