//! Fuzzes what `bae add` does with untrusted bytes before anything is stored: parse a
//! .torrent (libtorrent's parser through the bridge) and turn its layout into the
//! catalog's geometry, or parse a magnet link. Any panic or crash is a bug: bad input
//! must come back as an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the entry point, so one corpus covers both.
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(meta) = bae::torrent::parse_metainfo(rest) {
            let layout = bae::daemon::storage::layout_of(&meta.layout);
            if let Ok(g) = layout.validate() {
                // Geometry arithmetic on untrusted sizes must not overflow or panic.
                let _ = (g.num_pieces(), g.num_chunks());
            }
        }
    } else {
        let uri = String::from_utf8_lossy(rest);
        let _ = bae::torrent::parse_magnet(&uri);
    }
});
