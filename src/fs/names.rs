//! Turning untrusted names from .torrent files into safe directory entries.
//!
//! Invariants of every name this module returns: non-empty, not `.` or `..`, no `/`,
//! no NUL, at most [`NAME_MAX_BYTES`] bytes of valid UTF-8. A path is a list of such
//! names, so joining it under a torrent's directory can never leave that directory.
//! Pure functions only; the tree decides what to do about duplicates.

/// Longest name Linux accepts in one path component.
pub const NAME_MAX_BYTES: usize = 255;

/// An extension longer than this is treated as part of the stem when shortening.
const EXT_MAX_BYTES: usize = 32;

/// The safe form of one raw path component, or `None` when nothing usable remains
/// (empty, `.`, `..`): such components are dropped from paths.
pub fn sanitize_component(raw: &str) -> Option<String> {
    let replaced: String = raw
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if replaced.is_empty() || replaced == "." || replaced == ".." {
        return None;
    }
    let (stem, ext) = split_ext(&replaced);
    Some(fit(stem, ext))
}

/// The safe form of a raw path: unusable components dropped, the rest sanitised.
/// May be empty; the caller chooses a fallback name.
pub fn sanitize_path(raw: &[String]) -> Vec<String> {
    raw.iter().filter_map(|c| sanitize_component(c)).collect()
}

/// `name` (already safe) with a ` (n)` disambiguator. With `keep_ext` the suffix goes
/// before the extension (`track (2).flac`); directory names take it at the end
/// (`Album.2010 (2)`). The result still fits in [`NAME_MAX_BYTES`].
pub fn with_suffix(name: &str, n: u32, keep_ext: bool) -> String {
    let (stem, ext) = if keep_ext {
        split_ext(name)
    } else {
        (name, "")
    };
    fit(stem, &format!(" ({n}){ext}"))
}

/// Splits `name` into stem and extension (with its dot), when it has a plausible one.
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= EXT_MAX_BYTES => name.split_at(dot),
        _ => (name, ""),
    }
}

/// `stem` + `tail`, the stem shortened at a char boundary so that the whole fits in
/// [`NAME_MAX_BYTES`]. `tail` is always short (an extension and/or a suffix).
fn fit(stem: &str, tail: &str) -> String {
    let budget = NAME_MAX_BYTES.saturating_sub(tail.len());
    let mut cut = stem.len().min(budget);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &stem[..cut], tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn dot_dot_empty_and_dot_are_dropped() {
        assert_eq!(
            sanitize_path(&s(&["..", "", ".", "a", "..", "b"])),
            s(&["a", "b"])
        );
        assert_eq!(sanitize_path(&s(&["..", ".."])), Vec::<String>::new());
    }

    #[test]
    fn slash_and_nul_inside_a_component_are_replaced() {
        assert_eq!(sanitize_component("AC/DC").as_deref(), Some("AC_DC"));
        assert_eq!(
            sanitize_component("/etc/passwd").as_deref(),
            Some("_etc_passwd")
        );
        assert_eq!(sanitize_component("a\0b").as_deref(), Some("a_b"));
        assert_eq!(sanitize_component("../..").as_deref(), Some(".._.."));
        assert_eq!(sanitize_component("...").as_deref(), Some("..."));
    }

    #[test]
    fn long_names_are_shortened_keeping_the_extension() {
        let long = format!("{}.flac", "é".repeat(300));
        let out = sanitize_component(&long).unwrap();
        assert!(out.len() <= NAME_MAX_BYTES);
        assert!(out.ends_with(".flac"));
        let suffixed = with_suffix(&out, 12, true);
        assert!(suffixed.len() <= NAME_MAX_BYTES);
        assert!(suffixed.ends_with(" (12).flac"), "{suffixed}");
    }

    #[test]
    fn suffix_goes_before_the_extension_only_for_files() {
        assert_eq!(with_suffix("01 Intro.flac", 2, true), "01 Intro (2).flac");
        assert_eq!(with_suffix("Album.2010", 3, false), "Album.2010 (3)");
        assert_eq!(with_suffix(".hidden", 2, true), ".hidden (2)");
        assert_eq!(with_suffix("noext", 2, true), "noext (2)");
    }

    proptest::proptest! {
        #[test]
        fn every_sanitised_name_is_safe(raw in proptest::collection::vec(".{0,300}", 0..6)) {
            for name in sanitize_path(&raw) {
                proptest::prop_assert!(!name.is_empty() && name != "." && name != "..");
                proptest::prop_assert!(!name.contains('/') && !name.contains('\0'));
                proptest::prop_assert!(name.len() <= NAME_MAX_BYTES);
                let suffixed = with_suffix(&name, 999, true);
                proptest::prop_assert!(suffixed.len() <= NAME_MAX_BYTES && !suffixed.contains('/'));
            }
        }
    }
}
