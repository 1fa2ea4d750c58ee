//! Scope and role requirements, the scope hierarchy, and path patterns of resource policies.
//! Everything here is decided at configuration time; a request only does lookups.

use std::collections::{BTreeMap, HashMap};

use portcullis_core::Principal;
use portcullis_core::path::{EncodedSlash, PathRules, Semicolons, normalize_path_with};

/// A scope hierarchy expanded once: for every scope, the scopes that imply it (itself
/// excluded), transitively.
#[derive(Debug, Clone, Default)]
pub struct ScopeHierarchy {
    implied_by: HashMap<String, Vec<String>>,
    implies: HashMap<String, Vec<String>>,
}

impl ScopeHierarchy {
    /// `edges`: scope → the scopes it implies directly. A cycle is an error naming it.
    pub fn compile(edges: &BTreeMap<String, Vec<String>>) -> Result<ScopeHierarchy, String> {
        // Depth-first search with colours: 1 = on the current path, 2 = done.
        fn visit<'a>(
            s: &'a str,
            edges: &'a BTreeMap<String, Vec<String>>,
            colour: &mut HashMap<&'a str, u8>,
            path: &mut Vec<&'a str>,
        ) -> Result<(), String> {
            match colour.get(s) {
                Some(2) => return Ok(()),
                Some(1) => {
                    let start = path.iter().position(|p| *p == s).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].to_vec();
                    cycle.push(s);
                    return Err(format!("scope cycle: {}", cycle.join(" ⇒ ")));
                }
                _ => {}
            }
            colour.insert(s, 1);
            path.push(s);
            for next in edges.get(s).map(Vec::as_slice).unwrap_or(&[]) {
                visit(next, edges, colour, path)?;
            }
            path.pop();
            colour.insert(s, 2);
            Ok(())
        }
        let mut colour = HashMap::new();
        for s in edges.keys() {
            visit(s, edges, &mut colour, &mut Vec::new())?;
        }
        let mut implies: HashMap<String, Vec<String>> = HashMap::new();
        for s in edges.keys() {
            let mut seen: Vec<String> = Vec::new();
            let mut stack: Vec<&str> = edges[s].iter().map(String::as_str).collect();
            while let Some(n) = stack.pop() {
                if n == s || seen.iter().any(|x| x == n) {
                    continue;
                }
                seen.push(n.to_string());
                if let Some(more) = edges.get(n) {
                    stack.extend(more.iter().map(String::as_str));
                }
            }
            seen.sort();
            implies.insert(s.clone(), seen);
        }
        let mut implied_by: HashMap<String, Vec<String>> = HashMap::new();
        for (s, list) in &implies {
            for t in list {
                implied_by.entry(t.clone()).or_default().push(s.clone());
            }
        }
        for v in implied_by.values_mut() {
            v.sort();
        }
        Ok(ScopeHierarchy {
            implied_by,
            implies,
        })
    }

    /// Whether `held` grants `scope`, directly or through the hierarchy.
    pub fn grants(&self, held: &[String], scope: &str) -> bool {
        if held.iter().any(|h| h == scope) {
            return true;
        }
        match self.implied_by.get(scope) {
            Some(by) => held.iter().any(|h| by.iter().any(|b| b == h)),
            None => false,
        }
    }

    /// Every scope `held` grants, sorted (for policies, field masks and audit).
    pub fn expand(&self, held: &[String]) -> Vec<String> {
        let mut out: Vec<String> = held.to_vec();
        for h in held {
            if let Some(more) = self.implies.get(h) {
                out.extend(more.iter().cloned());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// `any_of` (at least one) and `all_of` (every one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub any_of: Vec<String>,
    pub all_of: Vec<String>,
}

impl Group {
    /// `Ok` if `has` accepts the group; otherwise what is missing, for the error.
    fn check(&self, has: impl Fn(&str) -> bool) -> Result<(), Vec<String>> {
        let missing_all: Vec<String> = self.all_of.iter().filter(|s| !has(s)).cloned().collect();
        let any_ok = self.any_of.is_empty() || self.any_of.iter().any(|s| has(s));
        if missing_all.is_empty() && any_ok {
            return Ok(());
        }
        let mut need = missing_all;
        if !any_ok {
            need.extend(self.any_of.iter().cloned());
        }
        Err(need)
    }

    fn describe(&self, what: &str) -> String {
        let mut parts = Vec::new();
        if !self.all_of.is_empty() {
            parts.push(format!("all of {}", self.all_of.join(", ")));
        }
        if !self.any_of.is_empty() {
            parts.push(format!("one of {}", self.any_of.join(", ")));
        }
        format!("{what}: {}", parts.join(" and "))
    }
}

/// Scope and role requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    pub scopes: Option<Group>,
    pub roles: Option<Group>,
}

/// Why a requirement is not met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmet {
    /// The scopes to ask for (for `WWW-Authenticate: … scope="…"`) and a description.
    Scopes(Vec<String>, String),
    Roles(String),
}

impl Unmet {
    pub fn reason(&self) -> &str {
        match self {
            Unmet::Scopes(_, d) | Unmet::Roles(d) => d,
        }
    }
}

impl Requirement {
    pub fn check(&self, p: &Principal, h: &ScopeHierarchy) -> Result<(), Unmet> {
        if let Some(g) = &self.scopes
            && let Err(need) = g.check(|s| h.grants(&p.scopes, s))
        {
            return Err(Unmet::Scopes(
                need,
                format!("insufficient scope ({})", g.describe("requires")),
            ));
        }
        if let Some(g) = &self.roles
            && g.check(|r| p.roles.iter().any(|x| x == r)).is_err()
        {
            return Err(Unmet::Roles(format!(
                "missing role ({})",
                g.describe("requires")
            )));
        }
        Ok(())
    }
}

/// A literal segment of pattern `s`, which must be in the normal form request paths are
/// matched in (`portcullis_core::path`): one written otherwise could never match a request
/// (`%7Euser`, `caf%c3%a9`, `café`). Escaped slashes and `;` are taken, as the server's
/// `encoded_slash` and `path_semicolons` may keep them.
fn normal_segment(s: &str, seg: &str) -> Result<String, String> {
    let lenient = PathRules {
        encoded_slash: EncodedSlash::Keep,
        semicolons: Semicolons::Keep,
    };
    match normalize_path_with(&format!("/{seg}"), lenient) {
        Ok(None) => Ok(seg.to_string()),
        Ok(Some(normal)) => Err(format!(
            "\"{s}\": the segment \"{seg}\" is not in the normal form requests are matched in; write \"{}\"",
            normal.trim_start_matches('/')
        )),
        Err(why) => Err(format!(
            "\"{s}\": the segment \"{seg}\" can never match: {}",
            why.detail()
        )),
    }
}

/// A resource pattern: `/orders` (exact), `/orders/*` (one segment), `/orders/**` (any
/// depth including none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segs: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    One,
    Rest,
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.starts_with('/') {
            return Err(format!("\"{s}\" must start with '/'"));
        }
        let mut segs = Vec::new();
        let body = &s[1..];
        if !body.is_empty() {
            let parts: Vec<&str> = body.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                match *part {
                    "" => return Err(format!("\"{s}\" has an empty segment")),
                    "*" => segs.push(Seg::One),
                    "**" if i + 1 == parts.len() => segs.push(Seg::Rest),
                    "**" => return Err(format!("\"{s}\": ** only as the last segment")),
                    "." | ".." => return Err(format!("\"{s}\" has a dot segment")),
                    p if p.contains('*') => {
                        return Err(format!("\"{s}\": * and ** stand for whole segments only"));
                    }
                    p => segs.push(Seg::Lit(normal_segment(s, p)?)),
                }
            }
        }
        Ok(PathPattern { segs })
    }

    /// Matches a normalised path.
    pub fn matches(&self, path: &str) -> bool {
        let body = path.strip_prefix('/').unwrap_or(path);
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut parts = body.split('/').filter(|p| !p.is_empty());
        for seg in &self.segs {
            match seg {
                Seg::Rest => return true,
                Seg::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Seg::Lit(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AuthMethod;
    use std::sync::Arc;

    fn edges(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn principal(scopes: &[&str], roles: &[&str]) -> Principal {
        let mut p = Principal::new(AuthMethod::Jwt, Arc::from("t"));
        p.scopes = scopes.iter().map(|s| s.to_string()).collect();
        p.roles = roles.iter().map(|s| s.to_string()).collect();
        p
    }

    #[test]
    fn hierarchy_is_transitive() {
        let h = ScopeHierarchy::compile(&edges(&[
            ("admin:orders", &["write:orders"]),
            ("write:orders", &["read:orders"]),
        ]))
        .unwrap();
        let admin = vec!["admin:orders".to_string()];
        assert!(h.grants(&admin, "read:orders"));
        assert!(h.grants(&admin, "write:orders"));
        assert!(h.grants(&admin, "admin:orders"));
        let read = vec!["read:orders".to_string()];
        assert!(!h.grants(&read, "write:orders"));
        assert!(!h.grants(&read, "other"));
        assert_eq!(
            h.expand(&admin),
            vec!["admin:orders", "read:orders", "write:orders"]
        );
    }

    #[test]
    fn cycles_are_refused_with_their_path() {
        let e = ScopeHierarchy::compile(&edges(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]))
            .unwrap_err();
        assert!(e.contains("a ⇒ b ⇒ c ⇒ a"), "{e}");
        let e = ScopeHierarchy::compile(&edges(&[("a", &["a"])])).unwrap_err();
        assert!(e.contains("a ⇒ a"), "{e}");
        // A diamond is not a cycle.
        ScopeHierarchy::compile(&edges(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"])]))
            .unwrap();
    }

    #[test]
    fn any_of_and_all_of() {
        let h = ScopeHierarchy::compile(&edges(&[("admin", &["x", "y"])])).unwrap();
        let req = Requirement {
            scopes: Some(Group {
                any_of: vec!["a".into(), "b".into()],
                all_of: vec!["x".into(), "y".into()],
            }),
            roles: None,
        };
        assert!(req.check(&principal(&["a", "x", "y"], &[]), &h).is_ok());
        assert!(req.check(&principal(&["b", "admin"], &[]), &h).is_ok());
        match req.check(&principal(&["a", "x"], &[]), &h) {
            Err(Unmet::Scopes(need, _)) => assert_eq!(need, vec!["y"]),
            other => panic!("{other:?}"),
        }
        match req.check(&principal(&["x", "y"], &[]), &h) {
            Err(Unmet::Scopes(need, d)) => {
                assert_eq!(need, vec!["a", "b"]);
                assert!(d.contains("one of a, b"), "{d}");
            }
            other => panic!("{other:?}"),
        }
        let roles = Requirement {
            scopes: None,
            roles: Some(Group {
                any_of: vec!["admin".into()],
                all_of: vec![],
            }),
        };
        assert!(roles.check(&principal(&[], &["admin"]), &h).is_ok());
        // Scopes never stand in for roles.
        assert!(matches!(
            roles.check(&principal(&["admin"], &["user"]), &h),
            Err(Unmet::Roles(_))
        ));
    }

    #[test]
    fn path_patterns() {
        let p = PathPattern::parse("/orders/**").unwrap();
        for ok in ["/orders", "/orders/", "/orders/1", "/orders/1/items/2"] {
            assert!(p.matches(ok), "{ok}");
        }
        for no in ["/", "/order", "/ordersx", "/users/orders"] {
            assert!(!p.matches(no), "{no}");
        }
        let p = PathPattern::parse("/orders/*").unwrap();
        assert!(p.matches("/orders/1"));
        assert!(!p.matches("/orders"));
        assert!(!p.matches("/orders/1/items"));
        let p = PathPattern::parse("/orders/*/items").unwrap();
        assert!(p.matches("/orders/7/items"));
        assert!(!p.matches("/orders/7/items/1"));
        let p = PathPattern::parse("/").unwrap();
        assert!(p.matches("/"));
        assert!(!p.matches("/a"));
        assert!(
            PathPattern::parse("/**")
                .unwrap()
                .matches("/anything/at/all")
        );
        for bad in ["orders", "/a//b", "/a/**/b", "/a*", "/a/../b"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
        // Segments not in the normal form requests are matched in never match: refused, with
        // the form to write.
        for (bad, write) in [
            ("/users/%7Ejo/**", "\"~jo\""),
            ("/caf%c3%a9", "\"caf%C3%A9\""),
            ("/café/*", "\"caf%C3%A9\""),
            ("/items%3Apurge", "\"items:purge\""),
            ("/a/%2e%2e/b", "can never match"),
        ] {
            let e = PathPattern::parse(bad).unwrap_err();
            assert!(e.contains(write), "{bad}: {e}");
        }
        // In normal form, escapes included: taken, and matched as requests arrive.
        let p = PathPattern::parse("/files/caf%C3%A9/a%2Fb;v=1").unwrap();
        assert!(p.matches("/files/caf%C3%A9/a%2Fb;v=1"));
    }
}
