//! Path normalisation (`crates/core/src/path.rs`) on arbitrary strings: no panic,
//! and what it accepts comes out canonical — an absolute path with no dot segment, no empty
//! segment, no backslash or control byte, no escape of an unreserved character or of `/`,
//! and a fixed point (normalising it again changes nothing).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_pipeline::normalize::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
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
        !out.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f),
        "{path:?} -> {out:?}"
    );
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).expect("a whole escape");
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).expect("hex");
        assert!(
            !(v.is_ascii_alphanumeric() || b"-._~/\\".contains(&v)),
            "{path:?} -> {out:?} keeps %{v:02X}"
        );
        assert!(
            hex.iter().all(|b| !b.is_ascii_lowercase()),
            "{path:?} -> {out:?}: escapes are upper-cased"
        );
    }
    assert_eq!(normalize_path(out), Ok(None), "{path:?} -> {out:?} is not a fixed point");
});
