//! Placeholder: filled in by the fs work.
