//! Small JSON text helpers shared by the steps and the engine.

/// Writes `s` as a JSON string literal (quotes included) with the escapes JSON requires, for
/// documents assembled by hand (problem bodies) without a serializer's allocations.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str("\\u00");
                let n = u32::from(c);
                for d in [n >> 4, n & 0xf] {
                    out.push(char::from_digit(d, 16).unwrap_or('0'));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The byte offset in `body` of serde_json's 1-based line and column (where a parse error
/// was found), clamped to the body.
pub fn json_error_offset(body: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    if line > 1 {
        let mut seen = 1;
        for (i, &b) in body.iter().enumerate() {
            if b == b'\n' {
                seen += 1;
                if seen == line {
                    start = i + 1;
                    break;
                }
            }
        }
    }
    start
        .saturating_add(column.saturating_sub(1))
        .min(body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\n\r\t\u{1}\u{1f}é");
        assert_eq!(out, r#""a\"b\\c\n\r\t\u0001\u001fé""#);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\n\r\t\u{1}\u{1f}é");
    }

    #[test]
    fn offsets_of_lines_and_columns() {
        let body = b"{\n  \"a\": x\n}";
        assert_eq!(json_error_offset(body, 1, 1), 0);
        assert_eq!(json_error_offset(body, 2, 8), 9);
        assert_eq!(json_error_offset(body, 1, 40), body.len());
        assert_eq!(json_error_offset(b"", 1, 0), 0);
    }
}
