//! Constraints attached to a permit: ownership (the object belongs to the caller) and tenant
//! isolation. Both deny when the value they compare is missing, empty on the caller's side,
//! or ambiguous. A query parameter counts under every name an upstream framework may read as
//! it ([`fold_name`]), with pairs split at `;` as well as `&`.

use http::request::Parts;
use portcullis_core::{Principal, RouteMatch, same_name_folded};
use serde_json::Value;

use crate::config::{Owner, Source, Tenant};
use crate::rules::ScopeHierarchy;

/// A claim by dotted path (`org.id`): strings, and numbers as written. `sub` is the
/// principal's subject (an API key's owner, a certificate's identity too).
pub fn claim_string(p: &Principal, path: &str) -> Option<String> {
    if path == "sub" {
        return p.subject.clone();
    }
    match p.claim(path)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One value of a query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryValue {
    /// Percent-decoded, `+` as a space.
    pub value: String,
    /// Named exactly as configured (after percent-decoding) and at the start of an
    /// `&`-separated pair: where every reader of the query finds it. Only such a value may
    /// name what the request asks for; the others (other spellings of the name, pairs after a
    /// `;`) can only add values that must agree.
    pub plain: bool,
}

pub use portcullis_core::query::fold_name;

/// Every value of query parameter `name` under any spelling an upstream may read as it (see
/// [`fold_name`]), pairs split at `;` as well as `&`. `Err` when a name or a value of it is not
/// valid UTF-8 after percent-decoding: such a request cannot be compared safely.
pub fn query_values(head: &Parts, name: &str) -> Result<Vec<QueryValue>, String> {
    let Some(q) = head.uri.query() else {
        return Ok(Vec::new());
    };
    let dec = |s: &str| -> Result<String, String> {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| "undecodable query".to_string())
    };
    let wanted = fold_name(name);
    let mut out = Vec::new();
    for pair in q.split('&') {
        for (i, part) in pair.split(';').enumerate() {
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = dec(k)?;
            if fold_name(&k) != wanted {
                continue;
            }
            out.push(QueryValue {
                value: dec(v)?,
                plain: i == 0 && k == name,
            });
        }
    }
    Ok(out)
}

/// The ownership verdict: `Ok(reason)` or `Err(reason)`.
pub fn check_owner(
    o: &Owner,
    head: &Parts,
    route: Option<&RouteMatch>,
    p: &Principal,
    h: &ScopeHierarchy,
) -> Result<String, String> {
    if let Some(s) = o.override_scopes.iter().find(|s| h.grants(&p.scopes, s)) {
        return Ok(format!("override scope {s}"));
    }
    // An empty claim owns nothing: it would equal an empty parameter (`?user=`).
    let Some(owner) = claim_string(p, &o.claim).filter(|c| !c.is_empty()) else {
        return Err(format!(
            "the caller has no {} claim (or an empty one)",
            o.claim
        ));
    };
    let mut values: Vec<String> = Vec::new();
    if let Some(name) = &o.param {
        match route.and_then(|r| r.param(name)) {
            Some(v) => values.push(v.to_string()),
            None => return Err(format!("no {{{name}}} in the path")),
        }
        // The same name in the query string (under any spelling an upstream reads as it) must
        // not name someone else's object: upstreams that read parameters from either place
        // would otherwise be fooled.
        values.extend(query_values(head, name)?.into_iter().map(|q| q.value));
    }
    if let Some(name) = &o.query {
        let q = query_values(head, name)?;
        if o.param.is_none() && !q.iter().any(|v| v.plain) {
            return Err(format!("no {name} query parameter"));
        }
        values.extend(q.into_iter().map(|q| q.value));
    }
    match values.iter().find(|v| **v != owner) {
        Some(_) => Err(format!(
            "the object does not belong to the caller ({} mismatch)",
            o.claim
        )),
        None if values.is_empty() => Err("no owner named by the request".into()),
        None => Ok(format!("owner matches {}", o.claim)),
    }
}

/// The tenant verdict: the verified tenant, or why not.
pub fn check_tenant(
    t: &Tenant,
    head: &Parts,
    route: Option<&RouteMatch>,
    p: &Principal,
) -> Result<String, String> {
    let caller = match &t.claim {
        Some(c) => claim_string(p, c),
        None => p.tenant.clone(),
    };
    let Some(caller) = caller.filter(|c| !c.is_empty()) else {
        return Err("the caller has no tenant".into());
    };
    // It goes upstream in a header, whose readers trim spaces and tabs: `acme ` (asked for as
    // `tenant=acme%20`) would reach them as another tenant, `acme`.
    if caller.trim() != caller || caller.chars().any(char::is_control) {
        return Err("the caller's tenant has spaces at its ends or control characters".into());
    }
    let asked = match &t.source {
        Source::Param(name) => {
            // The same name in the query string must not name another tenant: upstreams that
            // read parameters from either place would otherwise be fooled (as for ownership).
            if query_values(head, name)?.iter().any(|q| q.value != caller) {
                return Err("tenant mismatch (query parameter of the same name)".into());
            }
            route.and_then(|r| r.param(name)).map(str::to_string)
        }
        Source::Header(name) => {
            // One value only, however its name is spelt: CGI, WSGI, Rack and PHP read
            // `x_tenant` as `x-tenant` (both `HTTP_X_TENANT`, often the last one winning), so a
            // copy under the `_` spelling is a repeat. Only the name itself names the tenant.
            // (Field names are lower case here whatever the case they were sent in, so copies
            // differing in case are already repeats of the name.)
            let nb = name.as_str().as_bytes();
            let mut all = head
                .headers
                .iter()
                .filter(|(k, _)| *k == name || same_name_folded(k.as_str().as_bytes(), nb));
            match (all.next(), all.next()) {
                (Some((k, v)), None) if k == name => v.to_str().ok().map(|s| s.trim().to_string()),
                (Some(_), None) => return Err(format!("{name} sent under another spelling")),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "more than one {name} header (other spellings counted)"
                    ));
                }
                (None, _) => None,
            }
        }
        Source::Query(name) => {
            // One value only, however its name is spelt, and that one under the name itself.
            let v = query_values(head, name)?;
            if v.len() > 1 {
                return Err(format!("more than one {name} query parameter"));
            }
            v.into_iter().find(|q| q.plain).map(|q| q.value)
        }
    };
    match asked {
        None => Err("the request names no tenant".into()),
        Some(a) if a == caller => Ok(caller),
        Some(_) => Err("tenant mismatch".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{AuthMethod, RouteId};
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn head(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn route(params: &[(&str, &str)]) -> RouteMatch {
        RouteMatch {
            id: RouteId(0),
            name: Arc::from("r"),
            params: params
                .iter()
                .map(|(k, v)| (Arc::from(*k), v.to_string()))
                .collect(),
        }
    }

    fn alice() -> Principal {
        let mut p = Principal::new(AuthMethod::Jwt, Arc::from("idp"));
        p.subject = Some("alice".into());
        p.tenant = Some("t1".into());
        p.scopes = vec!["read:users".into()];
        p.claims = Arc::new(
            json!({"sub": "alice", "org": {"id": "t1", "n": 7}, "uid": 42})
                .as_object()
                .cloned()
                .unwrap(),
        );
        p
    }

    fn owner(param: Option<&str>, query: Option<&str>) -> Owner {
        Owner {
            param: param.map(Arc::from),
            query: query.map(str::to_string),
            claim: "sub".into(),
            override_scopes: vec!["admin:users".into()],
            mode: crate::config::Mode::Enforce,
        }
    }

    fn hierarchy() -> ScopeHierarchy {
        let mut e = BTreeMap::new();
        e.insert("root".to_string(), vec!["admin:users".to_string()]);
        ScopeHierarchy::compile(&e).unwrap()
    }

    #[test]
    fn ownership_by_path_parameter() {
        let o = owner(Some("id"), None);
        let h = hierarchy();
        let p = alice();
        assert!(
            check_owner(
                &o,
                &head("/users/alice", &[]),
                Some(&route(&[("id", "alice")])),
                &p,
                &h
            )
            .is_ok()
        );
        let e = check_owner(
            &o,
            &head("/users/bob", &[]),
            Some(&route(&[("id", "bob")])),
            &p,
            &h,
        )
        .unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        // The id again in the query, naming someone else: refused.
        assert!(
            check_owner(
                &o,
                &head("/users/alice?id=bob", &[]),
                Some(&route(&[("id", "alice")])),
                &p,
                &h
            )
            .is_err()
        );
        // Encoded in the query, still compared decoded.
        assert!(
            check_owner(
                &o,
                &head("/users/alice?id=%62ob", &[]),
                Some(&route(&[("id", "alice")])),
                &p,
                &h
            )
            .is_err()
        );
        assert!(
            check_owner(
                &o,
                &head("/users/alice?id=%61lice", &[]),
                Some(&route(&[("id", "alice")])),
                &p,
                &h
            )
            .is_ok()
        );
        // Near misses are misses.
        for v in ["Alice", "alice ", " alice", "alice\u{0}"] {
            assert!(
                check_owner(&o, &head("/u", &[]), Some(&route(&[("id", v)])), &p, &h).is_err(),
                "{v:?}"
            );
        }
        // Undecodable query: refused.
        assert!(
            check_owner(
                &o,
                &head("/users/alice?id=%ff", &[]),
                Some(&route(&[("id", "alice")])),
                &p,
                &h
            )
            .is_err()
        );
    }

    #[test]
    fn ownership_by_query_and_override() {
        let o = owner(None, Some("user"));
        let h = hierarchy();
        let mut p = alice();
        assert!(check_owner(&o, &head("/orders?user=alice", &[]), None, &p, &h).is_ok());
        assert!(check_owner(&o, &head("/orders?user=alice&user=bob", &[]), None, &p, &h).is_err());
        assert!(check_owner(&o, &head("/orders", &[]), None, &p, &h).is_err());
        p.scopes.push("root".into());
        let ok = check_owner(&o, &head("/orders?user=bob", &[]), None, &p, &h).unwrap();
        assert_eq!(ok, "override scope admin:users");
        // Other claims, numbers included.
        let mut o = owner(Some("id"), None);
        o.claim = "uid".into();
        assert!(
            check_owner(
                &o,
                &head("/u/42", &[]),
                Some(&route(&[("id", "42")])),
                &alice(),
                &hierarchy()
            )
            .is_ok()
        );
        o.claim = "missing".into();
        assert!(
            check_owner(
                &o,
                &head("/u/42", &[]),
                Some(&route(&[("id", "42")])),
                &alice(),
                &hierarchy()
            )
            .is_err()
        );
    }

    #[test]
    fn an_empty_owner_claim_owns_nothing() {
        let h = hierarchy();
        let mut p = alice();
        p.subject = Some(String::new());
        // An empty query value would otherwise equal the empty claim.
        let o = owner(None, Some("user"));
        for uri in ["/orders?user=", "/orders?user", "/orders?user=&user="] {
            let e = check_owner(&o, &head(uri, &[]), None, &p, &h).unwrap_err();
            assert!(e.contains("no sub claim"), "{uri}: {e}");
        }
        let o = owner(Some("id"), None);
        let r = check_owner(&o, &head("/u/", &[]), Some(&route(&[("id", "")])), &p, &h);
        assert!(r.is_err(), "{r:?}");
        // A claim of another name, empty: refused too.
        let mut o = owner(None, Some("user"));
        o.claim = "org.id".into();
        let mut p = alice();
        p.claims = Arc::new(json!({"org": {"id": ""}}).as_object().cloned().unwrap());
        assert!(check_owner(&o, &head("/orders?user=", &[]), None, &p, &h).is_err());
        // The override still works without a claim.
        p.scopes.push("root".into());
        assert!(check_owner(&o, &head("/orders?user=", &[]), None, &p, &h).is_ok());
    }

    /// Names a framework would read as the configured one (PHP folds `.` and space to `_`
    /// and makes `name[]` an array; some frameworks ignore case; `;` separates pairs in
    /// some): their values must match too.
    #[test]
    fn query_names_that_fold_to_the_parameter_are_the_parameter() {
        let h = hierarchy();
        let p = alice();
        let o = owner(None, Some("user_id"));
        for (uri, ok) in [
            ("/o?user_id=alice", true),
            ("/o?user_id=alice&user.id=bob", false),
            ("/o?user_id=alice&user+id=bob", false),
            ("/o?user_id=alice&user%20id=bob", false),
            ("/o?user_id=alice&user%2Eid=bob", false),
            ("/o?user_id=alice&user_id[]=bob", false),
            ("/o?user_id=alice&user_id%5B%5D=bob", false),
            ("/o?user_id=alice&user_id[0]=bob", false),
            ("/o?user_id=alice&user_id[a][b]=bob", false),
            ("/o?user_id=alice&USER_ID=bob", false),
            ("/o?user_id=alice&User.Id=bob", false),
            ("/o?user_id=alice&%20user_id=bob", false),
            ("/o?user_id=alice&user[id=bob", false),
            ("/o?user_id=alice;user_id=bob", false),
            ("/o?x=1;user.id=bob&user_id=alice", false),
            // What follows a `;` is another pair, not part of the value.
            ("/o?user_id=alice;x=1", true),
            // The same value under another spelling names the same owner.
            ("/o?user_id=alice&user.id=alice&user_id[]=alice", true),
            ("/o?user_id=alice&USER_ID=alice", true),
            // Names that do not fold to it are other parameters.
            (
                "/o?user_id=alice&user__id=bob&userid=bob&user_id_=bob&user-id=bob",
                true,
            ),
            ("/o?user_id=alice&xuser_id=bob&user_id.x=bob", true),
            // Only the name itself, read the usual way (`&`), says who is asked for: an
            // upstream reading no other spelling would otherwise see no owner at all.
            ("/o?user.id=alice", false),
            ("/o?USER_ID=alice", false),
            ("/o?user_id[]=alice", false),
            ("/o?x=1;user_id=alice", false),
            ("/o?%75ser_id=alice", true),
        ] {
            let r = check_owner(&o, &head(uri, &[]), None, &p, &h);
            assert_eq!(r.is_ok(), ok, "{uri}: {r:?}");
        }
        // Beside a path parameter.
        let o = owner(Some("id"), None);
        let at_alice = route(&[("id", "alice")]);
        for (uri, ok) in [
            ("/users/alice?ID=bob", false),
            ("/users/alice?id[]=bob", false),
            ("/users/alice?x=1;id=bob", false),
            ("/users/alice?Id=alice", true),
            ("/users/alice?idx=bob", true),
        ] {
            let r = check_owner(&o, &head(uri, &[]), Some(&at_alice), &p, &h);
            assert_eq!(r.is_ok(), ok, "{uri}: {r:?}");
        }
        // An undecodable name might have been the parameter: refused.
        let o = owner(None, Some("user_id"));
        assert!(check_owner(&o, &head("/o?user_id=alice&%ff=1", &[]), None, &p, &h).is_err());

        // Tenants, by path parameter and by query parameter.
        let t = |source: Source| Tenant {
            source,
            claim: None,
            upstream_header: http::HeaderName::from_static("x-portcullis-tenant"),
            mode: crate::config::Mode::Enforce,
        };
        let by_param = t(Source::Param(Arc::from("tenant_id")));
        let in_t1 = route(&[("tenant_id", "t1")]);
        for (uri, ok) in [
            ("/t/t1?tenant.id=t2", false),
            ("/t/t1?tenant+id=t2", false),
            ("/t/t1?tenant_id[]=t2", false),
            ("/t/t1?TENANT_ID=t2", false),
            ("/t/t1?a=1;tenant_id=t2", false),
            ("/t/t1?tenant.id=t1", true),
        ] {
            let r = check_tenant(&by_param, &head(uri, &[]), Some(&in_t1), &p);
            assert_eq!(r.is_ok(), ok, "{uri}: {r:?}");
        }
        let by_query = t(Source::Query("tenant_id".into()));
        for (uri, ok) in [
            ("/x?tenant_id=t1", true),
            ("/x?tenant_id=t1&tenant.id=t2", false),
            ("/x?tenant_id=t1&tenant_id[]=t2", false),
            ("/x?tenant_id=t1;tenant_id=t2", false),
            // The existing rule: one value only, however it is spelt.
            ("/x?tenant_id=t1&Tenant_Id=t1", false),
            ("/x?tenant.id=t1", false),
            ("/x?a=1;tenant_id=t1", false),
        ] {
            let r = check_tenant(&by_query, &head(uri, &[]), None, &p);
            assert_eq!(r.is_ok(), ok, "{uri}: {r:?}");
        }
    }

    /// A tenant header is read by CGI, WSGI, Rack and PHP backends under its `_` spelling too
    /// (`X_Tenant` and `X-Tenant` are both `HTTP_X_TENANT`): a copy so spelt, or in another
    /// case, is a repeat, whatever it says; alone it names no tenant.
    #[test]
    fn a_tenant_header_counts_its_other_spellings_as_repeats() {
        let p = alice();
        let by_header = Tenant {
            source: Source::Header(http::HeaderName::from_static("x-tenant")),
            claim: None,
            upstream_header: http::HeaderName::from_static("x-portcullis-tenant"),
            mode: crate::config::Mode::Enforce,
        };
        for (headers, want) in [
            (&[("x-tenant", "t1")][..], Ok("t1")),
            (
                &[("X-Tenant", "t1"), ("X_Tenant", "t2")],
                Err("more than one"),
            ),
            (
                &[("X_Tenant", "t2"), ("X-Tenant", "t1")],
                Err("more than one"),
            ),
            (
                &[("x-tenant", "t1"), ("x_tenant", "t1")],
                Err("more than one"),
            ),
            (
                &[("x-tenant", "t1"), ("x_TENANT", "t1")],
                Err("more than one"),
            ),
            (
                &[("x-tenant", "t1"), ("X-TENANT", "t2")],
                Err("more than one"),
            ),
            (
                &[("X-Tenant", "t1"), ("x-TENANT", "t1")],
                Err("more than one"),
            ),
            (&[("x_tenant", "t1")], Err("another spelling")),
            (&[("X_Tenant", "t1")], Err("another spelling")),
            // Names that do not fold to it are other headers.
            (
                &[("x-tenant", "t1"), ("x__tenant", "t2"), ("x-tenants", "t2")],
                Ok("t1"),
            ),
            (
                &[("x-tenant", "t1"), ("x.tenant", "t2"), ("xtenant", "t2")],
                Ok("t1"),
            ),
        ] {
            let r = check_tenant(&by_header, &head("/", headers), None, &p);
            match want {
                Ok(t) => assert_eq!(r.as_deref(), Ok(t), "{headers:?}"),
                Err(w) => {
                    let e = r.expect_err(&format!("{headers:?}"));
                    assert!(e.contains(w), "{headers:?}: {e}");
                }
            }
        }
        // A configured name with `_` in it: its `-` spelling is the repeat.
        let underscored = Tenant {
            source: Source::Header(http::HeaderName::from_static("x_tenant")),
            ..by_header
        };
        let r = check_tenant(&underscored, &head("/", &[("x_tenant", "t1")]), None, &p);
        assert_eq!(r.as_deref(), Ok("t1"));
        let two = [("x_tenant", "t1"), ("x-tenant", "t2")];
        assert!(check_tenant(&underscored, &head("/", &two), None, &p).is_err());
    }

    #[test]
    fn tenants() {
        let p = alice();
        let t = |source: Source, claim: Option<&str>| Tenant {
            source,
            claim: claim.map(str::to_string),
            upstream_header: http::HeaderName::from_static("x-portcullis-tenant"),
            mode: crate::config::Mode::Enforce,
        };
        let by_param = t(Source::Param(Arc::from("tenant")), None);
        assert_eq!(
            check_tenant(
                &by_param,
                &head("/t/t1/x", &[]),
                Some(&route(&[("tenant", "t1")])),
                &p
            )
            .unwrap(),
            "t1"
        );
        assert!(
            check_tenant(
                &by_param,
                &head("/t/t2/x", &[]),
                Some(&route(&[("tenant", "t2")])),
                &p
            )
            .is_err()
        );
        // A query parameter of the path parameter's name must name the same tenant.
        let in_t1 = Some(route(&[("tenant", "t1")]));
        for (uri, ok) in [
            ("/t/t1/x?tenant=t1", true),
            ("/t/t1/x?tenant=t2", false),
            ("/t/t1/x?tenant=t1&tenant=t2", false),
            ("/t/t1/x?tenant=%74%32", false),
            ("/t/t1/x?other=t2", true),
        ] {
            let r = check_tenant(&by_param, &head(uri, &[]), in_t1.as_ref(), &p);
            assert_eq!(r.is_ok(), ok, "{uri}: {r:?}");
        }
        let by_header = t(
            Source::Header(http::HeaderName::from_static("x-tenant")),
            Some("org.id"),
        );
        assert!(check_tenant(&by_header, &head("/", &[("x-tenant", "t1")]), None, &p).is_ok());
        assert!(check_tenant(&by_header, &head("/", &[("x-tenant", "t2")]), None, &p).is_err());
        assert!(check_tenant(&by_header, &head("/", &[]), None, &p).is_err());
        assert!(
            check_tenant(
                &by_header,
                &head("/", &[("x-tenant", "t1"), ("x-tenant", "t2")]),
                None,
                &p
            )
            .is_err()
        );
        let by_query = t(Source::Query("tenant".into()), None);
        assert!(check_tenant(&by_query, &head("/?tenant=t1", &[]), None, &p).is_ok());
        assert!(check_tenant(&by_query, &head("/?tenant=t1&tenant=t1", &[]), None, &p).is_err());
        let mut no_tenant = alice();
        no_tenant.tenant = None;
        assert!(check_tenant(&by_query, &head("/?tenant=t1", &[]), None, &no_tenant).is_err());
        // A tenant that header readers would read as another (trimmed) is no tenant to send.
        for (claim, uri) in [
            ("t1 ", "/?tenant=t1%20"),
            (" t1", "/?tenant=%20t1"),
            ("t1\t", "/?tenant=t1%09"),
            ("t\u{1}1", "/?tenant=t%011"),
        ] {
            let mut odd = alice();
            odd.tenant = Some(claim.into());
            let r = check_tenant(&by_query, &head(uri, &[]), None, &odd);
            assert!(r.is_err(), "{claim:?}: {r:?}");
        }
    }
}
