//! Path normalisation (`crates/core/src/path.rs`) on arbitrary strings: no panic,
//! and what it accepts comes out canonical — an absolute path with no dot segment, no empty
//! segment, no backslash or control byte, no escape of `/` or of a character that needs none
//! (unreserved, `:` `@` `!` `$` `&` `'` `(` `)` `*` `,` `=`), no raw character that needs one
//! (`"` `{` `}` `|` `^` `[` `]`, space, `<` `>` `` ` `` `?` `#`, bytes outside ASCII), and a
//! fixed point (normalising it again changes nothing). With encoded slashes kept
//! (`server.encoded_slash: keep`), the same holds but for `%2F`, and the path an upstream gets
//! by decoding the kept `%2F`s still has no dot segment and no empty one; what it accepts
//! without `%2F` it accepts the same way with them refused. By default no `;` (nor `%3B`)
//! comes out; with semicolons kept (`server.path_semicolons: keep`), no dot segment with a
//! parameter does, whether the upstream decodes `%3B` or not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_pipeline::normalize::{
    EncodedSlash, PathRules, Semicolons, normalize_path, normalize_path_with,
};

/// Both kept: the loosest policy.
const KEEP: PathRules = PathRules {
    encoded_slash: EncodedSlash::Keep,
    semicolons: Semicolons::Keep,
};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    keep(path);
    let Ok(out) = normalize_path(path) else {
        return;
    };
    let out = out.as_deref().unwrap_or(path);
    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    assert!(!out.contains("//"), "{path:?} -> {out:?}");
    assert!(
        !out.split('/').any(|s| s == "." || s == ".."),
        "{path:?} -> {out:?}"
    );
    assert!(
        !out.bytes().any(|b| b == b'\\' || b == b';' || b < 0x20 || b == 0x7f),
        "{path:?} -> {out:?}"
    );
    assert!(
        !out.bytes()
            .any(|b| !b.is_ascii() || b"\"{}|^[] <>`?#".contains(&b)),
        "{path:?} -> {out:?} holds a raw character that needs an escape"
    );
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).expect("a whole escape");
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).expect("hex");
        assert!(
            !(v.is_ascii_alphanumeric() || b"-._~:@!$&'()*,=/\\;".contains(&v)),
            "{path:?} -> {out:?} keeps %{v:02X}"
        );
        assert!(
            hex.iter().all(|b| !b.is_ascii_lowercase()),
            "{path:?} -> {out:?}: escapes are upper-cased"
        );
    }
    assert_eq!(normalize_path(out), Ok(None), "{path:?} -> {out:?} is not a fixed point");
    assert_eq!(
        normalize_path_with(path, KEEP),
        normalize_path(path),
        "{path:?}: keeping encoded slashes and semicolons changed a path without them"
    );
});

fn keep(path: &str) {
    let Ok(out) = normalize_path_with(path, KEEP) else {
        return;
    };
    let out = out.as_deref().unwrap_or(path);
    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    assert_eq!(
        normalize_path_with(out, KEEP),
        Ok(None),
        "{path:?} -> {out:?} is not a fixed point"
    );
    // As an upstream that decodes `%2F` and `%3B` reads it.
    let decoded = out.replace("%2F", "/").replace("%3B", ";");
    assert!(!decoded.contains("//"), "{path:?} -> {out:?}");
    assert!(
        !decoded
            .split('/')
            .any(|s| s == "." || s == ".." || s.starts_with("..;") || s.starts_with(".;")),
        "{path:?} -> {out:?}"
    );
    assert!(!out.contains("%2f"), "{path:?} -> {out:?}");
}
