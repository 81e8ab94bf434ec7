//! Placeholder: filled in by the daemon work.
