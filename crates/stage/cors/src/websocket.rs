//! A route's `websocket:` setting, as written ([`RawWebSocket`]) and compiled ([`WebSocket`]).
//!
//! A WebSocket handshake is an ordinary GET until the upstream answers 101; after that the
//! connection is a tunnel that no step reads. So upgrades are refused unless the route says it
//! serves WebSockets, and browsers, which apply no CORS to WebSockets and send the user's cookies
//! with a handshake from any page, are held to the route's own origin unless others are listed.

use portcullis_core::units::RawSize;
use portcullis_core::{ConfigErrors, Scheme};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::origin::{self, OriginPattern, RequestHost, RequestOrigin, WebScheme};

/// A route's `websocket:` setting: `true` (WebSockets from the route's own origin and from
/// clients that send no `Origin`), `false` (none: the default) or the settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawWebSocket {
    Enabled(bool),
    Settings(RawWebSocketSettings),
}

/// `websocket:` written as a map.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocketSettings {
    /// Origins whose pages may open a WebSocket here besides the route's own:
    /// `scheme://host[:port]`, `https://*.example.com`, `null`, or `["*"]` alone (any page).
    /// Default none. A route's `cors.allowed_origins` do not count: CORS lets pages read
    /// answers, where a WebSocket carries the user's cookies both ways.
    #[serde(default)]
    pub origins: Vec<String>,
    /// The largest message a client may send (the payloads of its frames, as sent: a
    /// compressed message counts compressed). Default: the route's `max_body_bytes`.
    #[serde(default)]
    pub max_message_bytes: Option<RawSize>,
}

/// Which pages may open a WebSocket on a route.
#[derive(Debug, Clone)]
pub struct WebSocket {
    origins: WsOrigins,
    max_message_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
enum WsOrigins {
    /// `*`: any page.
    Any,
    /// The route's own origin and these.
    Listed(Vec<OriginPattern>),
}

/// Why a handshake's `Origin` is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WsOriginRefused<'h> {
    /// Sent more than once, not visible ASCII, or not an origin.
    Malformed,
    NotAllowed(&'h str),
}

impl WebSocket {
    /// The largest message a client may send, when the route sets one (otherwise its
    /// `max_body_bytes` stands).
    pub fn max_message_bytes(&self) -> Option<u64> {
        self.max_message_bytes
    }

    /// Checks a handshake's `Origin` (`origin`: every value sent) against the request's `Host`
    /// and the scheme the client used (`client`: the listener's, or a trusted proxy's word).
    /// No `Origin` at all is a client that is not a browser, which no page can make send a
    /// handshake: allowed. The route's own origin is the `Host`'s name and port; a `Host`
    /// without a port stands for the origin scheme's default one. Over `https` the own origin
    /// is an `https` one: a page served in cleartext (which anyone on its path can write) may
    /// not open a socket that carries the user's `Secure` cookies. Over `http` either scheme
    /// is taken, as a TLS terminator the gateway does not trust may be in front.
    pub(crate) fn check<'h>(
        &self,
        origin: http::header::GetAll<'h, http::HeaderValue>,
        host: Option<&http::HeaderValue>,
        client: Scheme,
    ) -> Result<(), WsOriginRefused<'h>> {
        let mut values = origin.iter();
        let Some(value) = values.next() else {
            return Ok(());
        };
        if values.next().is_some() {
            return Err(WsOriginRefused::Malformed);
        }
        let text = value.to_str().map_err(|_| WsOriginRefused::Malformed)?;
        let parsed = origin::parse_request(text).ok_or(WsOriginRefused::Malformed)?;
        let allowed = match &self.origins {
            WsOrigins::Any => true,
            WsOrigins::Listed(list) => {
                same_origin(&parsed, host, client) || list.iter().any(|p| p.matches(&parsed))
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(WsOriginRefused::NotAllowed(text))
        }
    }
}

/// Whether a request's origin names the host and port the request was sent to, and, over
/// `https`, the scheme.
fn same_origin(
    origin: &RequestOrigin<'_>,
    host: Option<&http::HeaderValue>,
    client: Scheme,
) -> bool {
    let RequestOrigin::Tuple {
        scheme,
        host: oh,
        port,
    } = origin
    else {
        return false;
    };
    if client == Scheme::Https && *scheme != WebScheme::Https {
        return false;
    }
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let (name, host_port) = if let Some(inner) = host.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return false;
        };
        (addr, after.strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let host_port = match host_port {
        None => scheme.default_port(),
        Some(p) => match origin::parse_port(p) {
            Some(p) => p,
            None => return false,
        },
    };
    host_port == *port
        && match oh {
            RequestHost::Name(n) => n.eq_ignore_ascii_case(name),
            RequestHost::V6(a) => name.parse::<std::net::Ipv6Addr>().is_ok_and(|b| *a == b),
        }
}

/// Compiles a route's `websocket:` setting. `None` when WebSockets stay off (`false`, or
/// errors, which are recorded under `path`).
pub fn compile_websocket(
    raw: &RawWebSocket,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<WebSocket> {
    let (listed, max) = match raw {
        RawWebSocket::Enabled(false) => return None,
        RawWebSocket::Enabled(true) => (&[][..], None),
        RawWebSocket::Settings(s) => (&s.origins[..], s.max_message_bytes.as_ref()),
    };
    let before = errors.len();
    let max_message_bytes = max.map(|m| {
        let p = format!("{path}.max_message_bytes");
        let n = m.compile(&p, errors);
        if n == 0 && m.parse().is_ok() {
            errors.push(p, "must be at least 1 byte");
        }
        n
    });
    let p = format!("{path}.origins");
    let (list, star) = origin::parse_list(listed, &p, errors);
    if let Some(i) = star
        && listed.len() > 1
    {
        errors.push(
            format!("{p}[{i}]"),
            "\"*\" cannot be combined with other origins",
        );
    }
    if errors.len() > before {
        return None;
    }
    Some(WebSocket {
        origins: if star.is_some() {
            WsOrigins::Any
        } else {
            WsOrigins::Listed(list)
        },
        max_message_bytes,
    })
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;

    fn compiled(raw: &str) -> Result<Option<WebSocket>, Vec<String>> {
        let raw: RawWebSocket = serde_yaml_ng::from_str(raw).map_err(|e| vec![e.to_string()])?;
        let mut errors = ConfigErrors::default();
        let ws = compile_websocket(&raw, "routes[0].websocket", &mut errors);
        if errors.is_empty() {
            Ok(ws)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    fn check(ws: &WebSocket, origins: &[&str], host: Option<&str>) -> Result<(), String> {
        check_over(ws, origins, host, Scheme::Http)
    }

    fn check_over(
        ws: &WebSocket,
        origins: &[&str],
        host: Option<&str>,
        client: Scheme,
    ) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        for o in origins {
            headers.append(http::header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        ws.check(headers.get_all(http::header::ORIGIN), host.as_ref(), client)
            .map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn off_unless_the_route_says_so() {
        assert!(compiled("false").unwrap().is_none());
        assert!(compiled("true").unwrap().is_some());
        assert!(compiled("{}").unwrap().is_some());
        assert!(compiled("{ origins: [] }").unwrap().is_some());
    }

    #[test]
    fn the_routes_own_origin_and_clients_without_one_are_allowed() {
        let ws = compiled("true").unwrap().unwrap();
        // No Origin: not a browser.
        assert_eq!(check(&ws, &[], Some("api.example.com")), Ok(()));
        // The Host's name and port, whatever the scheme and case, over `http`.
        for (origin, host) in [
            ("https://api.example.com", "api.example.com"),
            ("http://api.example.com", "API.example.com"),
            ("https://api.example.com:8443", "api.example.com:8443"),
            ("https://api.example.com", "api.example.com:443"),
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://[::1]:8080", "[0:0::1]:8080"),
        ] {
            assert_eq!(check(&ws, &[origin], Some(host)), Ok(()), "{origin} {host}");
        }
        // Another page.
        for (origin, host) in [
            ("https://evil.example", "api.example.com"),
            ("https://api.example.com.evil.example", "api.example.com"),
            ("https://api.example.com:8443", "api.example.com"),
            ("https://api.example.com", "api.example.com:8443"),
            ("http://api.example.com", "api.example.com:443"),
            ("http://[::2]:8080", "[::1]:8080"),
            ("null", "api.example.com"),
        ] {
            assert!(
                matches!(
                    ws.check(
                        {
                            let mut h = HeaderMap::new();
                            h.insert(http::header::ORIGIN, HeaderValue::from_str(origin).unwrap());
                            h
                        }
                        .get_all(http::header::ORIGIN),
                        Some(&HeaderValue::from_str(host).unwrap()),
                        Scheme::Http,
                    ),
                    Err(WsOriginRefused::NotAllowed(_))
                ),
                "{origin} {host}"
            );
        }
        // No Host to compare with, or a Host that is no host.
        assert!(check(&ws, &["https://api.example.com"], None).is_err());
        assert!(check(&ws, &["https://api.example.com"], Some("api.example.com:x")).is_err());
        // Malformed or repeated origins are never allowed.
        assert_eq!(
            check(&ws, &["https://a.com/"], Some("a.com")),
            Err("Malformed".into())
        );
        assert_eq!(
            check(&ws, &["https://a.com", "https://a.com"], Some("a.com")),
            Err("Malformed".into())
        );
    }

    /// Over `https`, the own origin is an `https` one: a page served in cleartext on the same
    /// host may not open a socket that carries the user's `Secure` cookies. Listed origins and
    /// clients without an `Origin` are as over `http`.
    #[test]
    fn over_https_the_own_origin_is_an_https_one() {
        let ws = compiled(r#"{ origins: ["http://legacy.example.com"] }"#)
            .unwrap()
            .unwrap();
        let over_tls =
            |origin: &str, host: &str| check_over(&ws, &[origin], Some(host), Scheme::Https);
        assert_eq!(
            over_tls("https://api.example.com", "api.example.com"),
            Ok(())
        );
        assert_eq!(
            over_tls("https://api.example.com:8443", "api.example.com:8443"),
            Ok(())
        );
        for (origin, host) in [
            ("http://api.example.com", "api.example.com"),
            ("http://api.example.com:443", "api.example.com"),
            ("http://api.example.com:8443", "api.example.com:8443"),
        ] {
            assert_eq!(
                over_tls(origin, host),
                Err(format!("NotAllowed({origin:?})")),
                "{origin} {host}"
            );
        }
        assert_eq!(
            over_tls("http://legacy.example.com", "api.example.com"),
            Ok(())
        );
        assert_eq!(
            check_over(&ws, &[], Some("api.example.com"), Scheme::Https),
            Ok(())
        );
    }

    #[test]
    fn listed_origins_and_star() {
        let ws = compiled(
            r#"{ origins: ["https://app.example.com", "https://*.example.org", "null"] }"#,
        )
        .unwrap()
        .unwrap();
        for origin in ["https://app.example.com", "https://a.b.example.org", "null"] {
            assert_eq!(
                check(&ws, &[origin], Some("api.example.com")),
                Ok(()),
                "{origin}"
            );
        }
        assert!(check(&ws, &["http://app.example.com"], Some("api.example.com")).is_err());
        assert!(check(&ws, &["https://example.org"], Some("api.example.com")).is_err());
        // The route's own origin stays allowed.
        assert_eq!(
            check(&ws, &["https://api.example.com"], Some("api.example.com")),
            Ok(())
        );

        let any = compiled(r#"{ origins: ["*"] }"#).unwrap().unwrap();
        assert_eq!(
            check(&any, &["https://evil.example"], Some("a.com")),
            Ok(())
        );
        // Even `*` takes no malformed origin.
        assert!(check(&any, &["evil"], Some("a.com")).is_err());
    }

    #[test]
    fn bad_settings_say_where() {
        let errors =
            compiled(r#"{ origins: ["https://a.com/", "*", "ftp://b.com", "https://*.com"] }"#)
                .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].starts_with("routes[0].websocket.origins[0]:"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("routes[0].websocket.origins[2]:"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("routes[0].websocket.origins[3]:"),
            "{errors:?}"
        );
        assert!(
            errors[3].starts_with("routes[0].websocket.origins[1]:")
                && errors[3].contains("cannot be combined"),
            "{errors:?}"
        );
        // Unknown keys are refused, as everywhere.
        assert!(compiled("{ origin: [] }").is_err());
    }
}
