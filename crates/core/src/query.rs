//! Query parameter names as upstream frameworks read them.

/// A query parameter's name as the frameworks an upstream may be written with read it: cut at
/// the first NUL (PHP's names are C strings), leading spaces dropped (PHP), then a leading run
/// of `[` and `]` dropped (Rack 2 reads `[role]`, `]role` and `[[role` as `role`, qs `[role]`),
/// the name ending where its first index does — at a `[` with a `]` after it (PHP, Rack and
/// others make `name[]` and `name[k]` the parameter `name`) or at a `]` (Rack 2 reads `role]`
/// as `role`, and `role]x` as the object `role`) —, `.`, space and an unclosed `[` as `_`
/// (PHP), ASCII letters in lower case (frameworks that ignore case). Two names that fold alike
/// may be the same parameter to the upstream. `name` is percent-decoded. Linear in `name`.
pub fn fold_name(name: &str) -> String {
    let name = name.split('\0').next().unwrap_or_default();
    let name = name.trim_start_matches(' ');
    let name = name.trim_start_matches(['[', ']']);
    // Where the name ends: at its first `]`, or at a `[` before it (which that `]` closes).
    let base = match (name.find('['), name.find(']')) {
        (Some(open), Some(close)) => &name[..open.min(close)],
        (None, Some(close)) => &name[..close],
        _ => name,
    };
    base.chars()
        .map(|c| match c {
            '.' | ' ' | '[' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether the raw (still encoded) form or query parameter name `raw` reads as `_method` to
/// the frameworks that take it as a method override (Rack, Symfony, Laravel; Express's
/// `method-override` reading a body parsed by qs): percent-decoded once (`+` a space), in any
/// case, leading spaces dropped, and
///
/// * with PHP's mangling of names: ` `, `.` read as `_` (`.method` is `_method` to Laravel
///   and Symfony), the name ending at a NUL or at an array index (`_method[]`);
/// * with Rack 2's and qs's brackets: a leading run of `[` and `]` dropped and a trailing run
///   of `]` ignored (`[_method]`, `]_method`, `_method]` are `_method` to Rack 2, `[_method]`
///   to qs).
///
/// PHP drops a name that starts with `[`, and Rack 2 reads it without its brackets: so
/// `[_method]` reads as `_method` and `[method` (`method` to Rack 2) does not. No allocation;
/// linear in `raw`.
pub fn is_method_name(raw: &[u8]) -> bool {
    // The shortest spelling is seven bytes, and decoding only shortens.
    if raw.len() < 7 {
        return false;
    }
    let mut decoded = Decoded { raw, at: 0 }
        .skip_while(|b| *b == b' ')
        .skip_while(|b| matches!(b, b'[' | b']'))
        .peekable();
    for want in b"_method" {
        let folded = match decoded.next() {
            Some(b' ' | b'.') => b'_',
            Some(b) => b.to_ascii_lowercase(),
            None => return false,
        };
        if folded != *want {
            return false;
        }
    }
    while decoded.next_if_eq(&b']').is_some() {}
    matches!(decoded.next(), None | Some(b'[' | 0))
}

/// The bytes of a URL-encoded name, percent-decoded once, `+` as a space (an escape that is
/// not one stays as sent).
struct Decoded<'a> {
    raw: &'a [u8],
    at: usize,
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.raw.get(self.at)?;
        self.at += 1;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                let hex = |i: usize| {
                    self.raw
                        .get(i)
                        .and_then(|h| char::from(*h).to_digit(16))
                        .and_then(|d| u8::try_from(d).ok())
                };
                match (hex(self.at), hex(self.at + 1)) {
                    (Some(h), Some(l)) => {
                        self.at += 2;
                        Some((h << 4) | l)
                    }
                    _ => Some(b'%'),
                }
            }
            b => Some(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fold_name, is_method_name};

    #[test]
    fn spellings_that_fold_alike() {
        for alias in [
            "limit", "LIMIT", " limit", "limit[]", "limit[0]", "Limit[x]",
        ] {
            assert_eq!(fold_name(alias), "limit", "{alias}");
        }
        assert_eq!(fold_name("user.role"), "user_role");
        assert_eq!(fold_name("user role"), "user_role");
        assert_eq!(fold_name("a[b"), "a_b");
        assert_ne!(fold_name("limits"), "limit");
        // PHP cuts a name at a NUL; Rack 2 drops leading brackets and ends a name at a `]`,
        // qs unwraps `[role]`.
        for alias in [
            "role\0",
            "role\0x",
            "[role]",
            "[[role",
            "]role",
            "role]",
            "role]]",
            "role]x",
            "[]role[x]",
            " [ROLE]",
        ] {
            assert_eq!(fold_name(alias), "role", "{alias:?}");
        }
        assert_eq!(fold_name("[role"), "role");
        assert_eq!(fold_name("[]"), "");
        assert_eq!(fold_name("\0role"), "");
        assert_ne!(fold_name("ro]le"), "role");
        assert_ne!(fold_name("x[role]"), "role");
    }

    #[test]
    fn method_names() {
        for name in [
            "_method",
            "_METHOD",
            ".method",
            "+_method",
            "%20_method",
            "_method[]",
            "_method[x]",
            "%5Fmethod",
            "_method%00x",
            // Rack 2 and qs.
            "[_method]",
            "%5B_method%5D",
            "]_method",
            "[[_method",
            "_method]",
            "_method]]",
            "_method][]",
            "[.method]",
        ] {
            assert!(is_method_name(name.as_bytes()), "{name:?}");
        }
        for name in [
            "method",
            "[method",
            "_methods",
            "x_method",
            "_method_id",
            "a[_method]",
            "_method]x",
            "_method.",
            "_meth",
            "",
        ] {
            assert!(!is_method_name(name.as_bytes()), "{name:?}");
        }
    }
}
