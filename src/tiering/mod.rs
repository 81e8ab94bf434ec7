//! Placeholder: filled in by the tiering work.
