//! Compiles the C++ half of the libtorrent bridge (`cpp/`) together with the code cxx
//! generates for `src/torrent/bridge.rs`, then links libtorrent-rasterbar.
//!
//! libtorrent's `-D` defines are ABI-relevant (e.g. `TORRENT_USE_LIBCRYPTO` changes the
//! hasher's layout) and nothing warns when they are missing, so they come from
//! pkg-config, never from a hand-written list.

use std::process::Command;

const BRIDGE: &str = "src/torrent/bridge.rs";
const CPP_SOURCES: [&str; 2] = ["cpp/bae_disk.cpp", "cpp/bae_session.cpp"];
const CPP_HEADERS: [&str; 2] = ["cpp/bae_disk.hpp", "cpp/bae_session.hpp"];

fn pkg_config(arg: &str) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args([arg, "libtorrent-rasterbar"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run pkg-config (install pkg-config): {e}"));
    if !out.status.success() {
        panic!(
            "pkg-config {arg} libtorrent-rasterbar failed (install libtorrent-rasterbar-dev): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn main() {
    let mut build = cxx_build::bridge(BRIDGE);
    build.files(CPP_SOURCES).std("c++17").warnings(false);
    for flag in pkg_config("--cflags") {
        if let Some(define) = flag.strip_prefix("-D") {
            match define.split_once('=') {
                Some((name, value)) => build.define(name, value),
                None => build.define(define, None),
            };
        } else if let Some(dir) = flag.strip_prefix("-I") {
            build.include(dir);
        } else {
            build.flag(&flag);
        }
    }
    build.compile("bae_torrent");

    // Link lines come after the C++ library so the linker resolves its symbols.
    for flag in pkg_config("--libs") {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        }
    }

    println!("cargo:rerun-if-changed={BRIDGE}");
    for file in CPP_SOURCES.iter().chain(CPP_HEADERS.iter()) {
        println!("cargo:rerun-if-changed={file}");
    }
}
