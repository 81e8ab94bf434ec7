//! bae fitting the system around it, through the real binary: settings from the
//! environment, the metrics endpoint during a real download, readable status, the
//! watch folder with a real peer, shell completions and the man page.

mod common;

use std::process::Output;

use common::bae::Bae;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn environment_overrides_config_keys_for_commands_and_the_daemon() {
    let bae = Bae::new();
    // An offline command sees the override...
    let out = bae
        .cmd(&["status", "--json"])
        .env("BAE_CACHE_SIZE", "123MiB")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["cache_limit_bytes"], 123u64 << 20);
    // ...the file does not keep it...
    assert_eq!(bae.status_json()["cache_limit_bytes"], 1u64 << 30);
    // ...`bae config` shows it and says where it came from...
    let out = bae
        .cmd(&["config"])
        .env("BAE_NETWORK_UTP", "yes")
        .env("BAE_READAHEAD_CHUNKS", "3")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("readahead_chunks = 3"), "{text}");
    assert!(text.contains("utp = true"), "{text}");
    assert!(text.contains("network.utp: from BAE_NETWORK_UTP"), "{text}");
    // ...a bad value is one clear error naming the variable...
    let out = bae
        .cmd(&["status"])
        .env("BAE_NETWORK_LISTEN_PORT", "eighty")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("BAE_NETWORK_LISTEN_PORT=\"eighty\""),
        "{}",
        stderr(&out)
    );
    // ...and the background daemon gets it too.
    let port = free_port();
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    let out = bae
        .cmd(&["mount", &mp])
        .env("BAE_NETWORK_LISTEN_PORT", port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), bae.log());
    assert_eq!(bae.status_json()["listen_port"], port);
    bae.umount();
}
