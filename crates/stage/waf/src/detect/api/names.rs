//! Parameter and field names: the segment an application binds (`role` in `$.user.role`,
//! `user[role]`, `/user/@role`), the loose comparison of configured names, and the reading of a
//! pagination value.

use std::borrow::Cow;

/// Longest normalised name kept in a [`NameSet`] comparison buffer.
const MAX_NAME: usize = 64;

/// A name reduced for comparison: ASCII letters lowercased and ASCII punctuation dropped, so that
/// `is_admin`, `isAdmin`, `IS-ADMIN` and `$isadmin` are one name. The four non-ASCII letters
/// that some server's case-insensitive binding takes for an ASCII one become it: `ſ` (U+017F)
/// and `K` (Kelvin, U+212A), which Go's `encoding/json` folds to `s` and `k`, and `ı` and `İ`
/// (U+0131, U+0130), which Java's `equalsIgnoreCase` and .NET's ordinal comparison match with
/// `i`; so `iſ_admin` is `is_admin`. Other non-ASCII characters are kept as they are.
///
/// A NUL ends the name, as PHP ends a parameter's name there (`role%00x` is `role` to it).
pub(crate) fn normalize(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut buf = [0u8; 4];
    for c in name.chars().take_while(|&c| c != '\0') {
        out.extend_from_slice(fold(c, &mut buf));
    }
    out
}

/// A query or form parameter's name as PHP binds it, ASCII case folded: cut at a NUL, leading
/// spaces dropped, spaces and dots before the first `[` made `_` — so `user.id`, `user id`,
/// ` user_id`, `user_id%00x` and `USER_ID` are one parameter, as they are to PHP (and, but for
/// the dots, to case-insensitive binders), while `f[a.b]` and `f[a_b]` are two (PHP keeps an
/// array key as written).
pub(crate) fn php_key(name: &str) -> Cow<'_, str> {
    let name = name.split('\0').next().unwrap_or(name);
    let name = name.trim_start_matches(' ');
    let base = name.find('[').unwrap_or(name.len());
    let mangled = |i: usize, b: u8| i < base && (b == b' ' || b == b'.');
    if !name
        .bytes()
        .enumerate()
        .any(|(i, b)| mangled(i, b) || b.is_ascii_uppercase())
    {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.char_indices()
            .map(|(i, c)| match c {
                ' ' | '.' if i < base => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect(),
    )
}

/// One character of a name in its normal form (see [`normalize`]): nothing, a lowercase ASCII
/// letter or digit, or the character's UTF-8 bytes.
fn fold(c: char, buf: &mut [u8; 4]) -> &[u8] {
    let folded = match c {
        'ſ' => 's',
        '\u{212a}' => 'k',
        'ı' | 'İ' => 'i',
        c if c.is_ascii_alphanumeric() => c.to_ascii_lowercase(),
        c if c.is_ascii() => return &[],
        c => c,
    };
    folded.encode_utf8(buf).as_bytes()
}

/// Configured names, normalised once; lookups normalise into a stack buffer (no allocation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct NameSet {
    names: Vec<Box<[u8]>>,
    longest: usize,
    /// Bit `n` set when some name is `n` bytes long (quick rejection).
    lengths: u128,
    /// Bit `b` set when some name starts with byte `b` (quick rejection).
    firsts: [u64; 4],
}

impl NameSet {
    /// The set of the names' normal forms (names that normalise to nothing are left out).
    pub(crate) fn new<'n>(names: impl IntoIterator<Item = &'n str>) -> NameSet {
        let mut set = NameSet::default();
        for n in names {
            let norm = normalize(n);
            if norm.is_empty() || norm.len() > MAX_NAME || set.names.iter().any(|x| **x == *norm) {
                continue;
            }
            set.longest = set.longest.max(norm.len());
            set.lengths |= 1u128 << norm.len();
            set.firsts[usize::from(norm[0] >> 6)] |= 1u64 << (norm[0] & 63);
            set.names.push(norm.into_boxed_slice());
        }
        set
    }

    /// Whether `name`'s normal form is one of the set's.
    pub(crate) fn contains(&self, name: &str) -> bool {
        if self.names.is_empty() {
            return false;
        }
        let mut buf = [0u8; MAX_NAME];
        let mut n = 0usize;
        let mut ch = [0u8; 4];
        for c in name.chars().take_while(|&c| c != '\0') {
            for &b in fold(c, &mut ch) {
                if n >= self.longest {
                    return false;
                }
                if n == 0 && self.firsts[usize::from(b >> 6)] & (1u64 << (b & 63)) == 0 {
                    return false;
                }
                buf[n] = b;
                n += 1;
            }
        }
        n > 0 && self.lengths & (1u128 << n) != 0 && self.names.iter().any(|x| **x == buf[..n])
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

/// The key a JSON path ends with, array indexes skipped: `$.user.role` → `role`,
/// `$['we ird']` → `we ird`, `$.roles[0]` → `roles`, `$` → none.
pub(crate) fn json_last_key(path: &str) -> Option<Cow<'_, str>> {
    let mut s = path;
    // Trailing array indexes.
    while s.ends_with(']') && !s.ends_with("']") {
        let open = s.rfind('[')?;
        if !s[open + 1..s.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        s = &s[..open];
    }
    if let Some(inner) = s.strip_suffix("']") {
        let open = inner.rfind("['")?;
        let key = &inner[open + 2..];
        if key.contains('\\') {
            let mut out = String::with_capacity(key.len());
            let mut chars = key.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            return Some(Cow::Owned(out));
        }
        return Some(Cow::Borrowed(key));
    }
    let dot = s.rfind('.')?;
    let key = &s[dot + 1..];
    (!key.is_empty()).then_some(Cow::Borrowed(key))
}

/// Whether a JSON path names a member of the top-level object (`$.limit`, `$['limit']`).
pub(crate) fn json_is_top_level(path: &str) -> bool {
    if let Some(rest) = path.strip_prefix("$.") {
        !rest.is_empty() && !rest.contains(['.', '['])
    } else if let Some(rest) = path.strip_prefix("$['") {
        rest.ends_with("']") && !rest[..rest.len() - 2].contains("']")
    } else {
        false
    }
}

/// The segment a framework binds from a form or query parameter name: `user[role]` → `role`,
/// `user.role` → `role`, `roles[]` → `roles`, `items[0]` → `items`.
pub(crate) fn field_last_segment(name: &str) -> &str {
    if !name.bytes().any(|b| matches!(b, b'[' | b']' | b'.')) {
        return name;
    }
    name.split(['[', ']', '.'])
        .rev()
        .find(|s| !s.is_empty() && !s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or(name)
}

/// The element or attribute an XML path ends with: `/user/role` → `role`, `/user/@role` →
/// `role`, `/a:user/a:role[2]` → `role`.
pub(crate) fn xml_last_segment(path: &str) -> &str {
    let last = path.rsplit('/').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    let last = last.trim_start_matches('@');
    last.rsplit(':').next().unwrap_or(last)
}

/// What a pagination value turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageValue {
    /// Nothing (`limit=`): the application's default applies.
    Empty,
    /// A plain non-negative decimal integer (`u64::MAX` when it overflows).
    Number(u64),
    /// Looks numeric but is not a plain non-negative integer: `-1`, `+5`, `1e9`, `10.5`, `0x10`,
    /// `100abc`, `1,000`.
    Malformed,
    /// Not a number at all: `all`, `max`, `unlimited`.
    Word,
}

/// Reads a pagination value (surrounding ASCII white space ignored).
pub(crate) fn page_value(value: &str) -> PageValue {
    let v = value.trim_ascii();
    if v.is_empty() {
        return PageValue::Empty;
    }
    let bytes = v.as_bytes();
    if bytes.iter().all(|b| b.is_ascii_digit()) {
        let n = bytes.iter().try_fold(0u64, |acc, &b| {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        });
        return PageValue::Number(n.unwrap_or(u64::MAX));
    }
    match bytes[0] {
        b'0'..=b'9' | b'-' | b'+' | b'.' => PageValue::Malformed,
        _ => PageValue::Word,
    }
}
