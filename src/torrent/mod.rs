//! Placeholder: filled in by the torrent work.
