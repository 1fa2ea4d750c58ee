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
