//! Query parameter names as upstream frameworks read them.

/// A query parameter's name as the frameworks an upstream may be written with read it:
/// leading spaces dropped, a `[…]` suffix removed (PHP, Rack and others make `name[]` and
/// `name[k]` the parameter `name`; PHP turns a `[` without a `]` after it into `_`), `.` and
/// space as `_` (PHP), ASCII letters in lower case (frameworks that ignore case). Two names
/// that fold alike may be the same parameter to the upstream. `name` is percent-decoded.
pub fn fold_name(name: &str) -> String {
    let name = name.trim_start_matches(' ');
    let base = match name.find('[') {
        Some(i) if name[i..].contains(']') => &name[..i],
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
/// the frameworks that take it as a method override (Rack, Symfony, Laravel): percent-decoded
/// once (`+` a space), in any case, and with PHP's mangling of names — leading spaces
/// dropped, ` `, `.` and an unclosed `[` read as `_` (`.method` is `_method` to Laravel and
/// Symfony), the name ending at a NUL or at an array index (`_method[]`). No allocation.
pub fn is_method_name(raw: &[u8]) -> bool {
    // The shortest spelling is seven bytes, and decoding only shortens.
    if raw.len() < 7 {
        return false;
    }
    let mut decoded = Decoded { raw, at: 0 }.skip_while(|b| *b == b' ');
    for want in b"_method" {
        let folded = match decoded.next() {
            Some(b' ' | b'.' | b'[') => b'_',
            Some(b) => b.to_ascii_lowercase(),
            None => return false,
        };
        if folded != *want {
            return false;
        }
    }
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
    use super::fold_name;

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
    }
}
