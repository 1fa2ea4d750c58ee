//! Client authentication at the token endpoint: `client_secret_basic`, `client_secret_post`
//! (RFC 6749 §2.3.1) against a stored SHA-256 of the secret, compared in constant time, or
//! `tls_client_auth` (RFC 8705 §2.1) with the certificate the listener verified.

use base64::Engine;
use http::HeaderMap;
use portcullis_authn::cache::digest;
use portcullis_core::PeerCertificate;
use subtle::ConstantTimeEq;

use crate::config::{Client, ClientAuth, TokenExchangeSettings};
use crate::error::OAuthError;
use crate::form::{Form, decode};

/// Finds and authenticates the client of a token request. A request uses exactly one
/// method: an `Authorization: Basic` header, a `client_secret` parameter, or (neither) the
/// verified client certificate.
pub fn authenticate<'a>(
    settings: &'a TokenExchangeSettings,
    headers: &HeaderMap,
    form: &Form,
    cert: Option<&PeerCertificate>,
) -> Result<&'a Client, OAuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let basic = match values.next() {
        None => None,
        Some(v) => {
            if values.next().is_some() {
                return Err(OAuthError::invalid_request(
                    "more than one Authorization header",
                ));
            }
            Some(basic(v.as_bytes())?)
        }
    };
    let body_id = form.get("client_id");
    match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => Err(OAuthError::invalid_request(
            "use one client authentication method, not two",
        )),
        (Some((id, secret)), None) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::invalid_client("client_id_mismatch"));
            }
            by_secret(settings, &id, &secret)
        }
        (None, Some(secret)) => match body_id {
            Some(id) => by_secret(settings, id, secret),
            None => Err(OAuthError::invalid_client("client_id_missing")),
        },
        (None, None) => match cert {
            // Verified at the handshake; the connection may outlive it.
            Some(cert) if !cert.valid_at(portcullis_core::unix_now()) => {
                Err(OAuthError::invalid_client("client_certificate_expired"))
            }
            Some(cert) => by_certificate(settings, body_id, cert),
            None => Err(OAuthError::invalid_client("client_auth_missing")),
        },
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn basic(v: &[u8]) -> Result<(String, String), OAuthError> {
    let s =
        std::str::from_utf8(v).map_err(|_| OAuthError::invalid_client("client_auth_malformed"))?;
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client("client_auth_scheme"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_matches(' '))
        .map_err(|_| OAuthError::invalid_client("client_auth_malformed"))?;
    let text =
        String::from_utf8(raw).map_err(|_| OAuthError::invalid_client("client_auth_malformed"))?;
    let (id, secret) = text
        .split_once(':')
        .ok_or(OAuthError::invalid_client("client_auth_malformed"))?;
    let id = decode(id).map_err(|_| OAuthError::invalid_client("client_auth_malformed"))?;
    let secret = decode(secret).map_err(|_| OAuthError::invalid_client("client_auth_malformed"))?;
    if id.is_empty() || secret.is_empty() {
        return Err(OAuthError::invalid_client("client_auth_malformed"));
    }
    Ok((id, secret))
}

fn by_secret<'a>(
    settings: &'a TokenExchangeSettings,
    id: &str,
    secret: &str,
) -> Result<&'a Client, OAuthError> {
    let client = settings.clients.iter().find(|c| c.id == id);
    // Hash and compare whether or not the client exists, so timing tells nothing.
    let expected = match client.map(|c| &c.auth) {
        Some(ClientAuth::Secret(h)) => *h,
        _ => [0u8; 32],
    };
    let same: bool = digest(secret.as_bytes()).ct_eq(&expected).into();
    match client {
        None => Err(OAuthError::invalid_client("client_unknown")),
        Some(c) if !matches!(c.auth, ClientAuth::Secret(_)) => {
            Err(OAuthError::invalid_client("client_auth_method"))
        }
        Some(c) if same => Ok(c),
        Some(_) => Err(OAuthError::invalid_client("client_secret_mismatch")),
    }
}

fn certificate_matches(c: &Client, cert: &PeerCertificate) -> bool {
    match &c.auth {
        ClientAuth::Spiffe(id) => cert.spiffe.as_ref().is_some_and(|s| s.to_string() == *id),
        ClientAuth::Subject(s) => cert.subject == *s,
        ClientAuth::Secret(_) => false,
    }
}

fn by_certificate<'a>(
    settings: &'a TokenExchangeSettings,
    id: Option<&str>,
    cert: &PeerCertificate,
) -> Result<&'a Client, OAuthError> {
    match id {
        Some(id) => match settings.clients.iter().find(|c| c.id == id) {
            Some(c) if certificate_matches(c, cert) => Ok(c),
            Some(c) if !c.auth.is_mtls() => Err(OAuthError::invalid_client("client_auth_missing")),
            Some(_) => Err(OAuthError::invalid_client("client_certificate_mismatch")),
            None => Err(OAuthError::invalid_client("client_unknown")),
        },
        None => settings
            .clients
            .iter()
            .find(|c| certificate_matches(c, cert))
            .ok_or(OAuthError::invalid_client("client_certificate_unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn settings() -> TokenExchangeSettings {
        TokenExchangeSettings {
            jwt_issuers: vec![],
            introspection: vec![],
            audiences: vec![],
            clients: vec![
                Client {
                    id: "bff".into(),
                    auth: ClientAuth::Secret(digest(b"s3cret:+")),
                    audiences: vec![],
                },
                Client {
                    id: "svc".into(),
                    auth: ClientAuth::Spiffe("spiffe://prod.test/sa/svc".into()),
                    audiences: vec![],
                },
            ],
        }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(a).unwrap(),
            );
        }
        h
    }

    fn b64(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    fn audit(r: Result<&Client, OAuthError>) -> &'static str {
        match r {
            Ok(c) => panic!("authenticated {}", c.id),
            Err(e) => e.audit.unwrap_or(e.error),
        }
    }

    #[test]
    fn basic_is_form_encoded_inside() {
        let s = settings();
        let f = Form::default();
        let h = headers(Some(&b64("bff:s3cret%3A%2B")));
        assert_eq!(authenticate(&s, &h, &f, None).unwrap().id, "bff");
        let h = headers(Some(&b64("bff:s3cret:+")));
        assert_eq!(
            audit(authenticate(&s, &h, &f, None)),
            "client_secret_mismatch",
            "+ is a space in form encoding"
        );
        let h = headers(Some(&b64("bff:wrong")));
        assert_eq!(
            audit(authenticate(&s, &h, &f, None)),
            "client_secret_mismatch"
        );
        let h = headers(Some(&b64("nobody:s3cret%3A%2B")));
        assert_eq!(audit(authenticate(&s, &h, &f, None)), "client_unknown");
        let h = headers(Some("Bearer abc"));
        assert_eq!(audit(authenticate(&s, &h, &f, None)), "client_auth_scheme");
        let h = headers(Some("Basic !!!"));
        assert_eq!(
            audit(authenticate(&s, &h, &f, None)),
            "client_auth_malformed"
        );
        let h = headers(None);
        assert_eq!(audit(authenticate(&s, &h, &f, None)), "client_auth_missing");
    }

    #[test]
    fn post_and_one_method_only() {
        let s = settings();
        let f = Form::parse(b"client_id=bff&client_secret=s3cret%3A%2B").unwrap();
        assert_eq!(
            authenticate(&s, &headers(None), &f, None).unwrap().id,
            "bff"
        );
        let h = headers(Some(&b64("bff:s3cret%3A%2B")));
        assert_eq!(
            audit(authenticate(&s, &h, &f, None)),
            "invalid_request",
            "two methods"
        );
        let f = Form::parse(b"client_secret=s3cret%3A%2B").unwrap();
        assert_eq!(
            audit(authenticate(&s, &headers(None), &f, None)),
            "client_id_missing"
        );
        let f = Form::parse(b"client_id=svc&client_secret=x").unwrap();
        assert_eq!(
            audit(authenticate(&s, &headers(None), &f, None)),
            "client_auth_method"
        );
        let f = Form::parse(b"client_id=other").unwrap();
        let h = headers(Some(&b64("bff:s3cret%3A%2B")));
        assert_eq!(audit(authenticate(&s, &h, &f, None)), "client_id_mismatch");
    }

    #[test]
    fn certificates() {
        let s = settings();
        let cert = |spiffe: Option<&str>| PeerCertificate {
            subject: "CN=svc".into(),
            common_name: Some("svc".into()),
            san_uris: vec![],
            san_dns: vec![],
            spiffe: spiffe.and_then(portcullis_core::SpiffeId::parse),
            fingerprint_sha256: "00".into(),
            not_before: 0,
            not_after: u64::MAX,
        };
        let good = cert(Some("spiffe://prod.test/sa/svc"));
        let f = Form::default();
        assert_eq!(
            authenticate(&s, &headers(None), &f, Some(&good))
                .unwrap()
                .id,
            "svc"
        );
        let f = Form::parse(b"client_id=svc").unwrap();
        assert_eq!(
            authenticate(&s, &headers(None), &f, Some(&good))
                .unwrap()
                .id,
            "svc"
        );
        let bad = cert(Some("spiffe://prod.test/sa/web"));
        assert_eq!(
            audit(authenticate(&s, &headers(None), &f, Some(&bad))),
            "client_certificate_mismatch"
        );
        assert_eq!(
            audit(authenticate(
                &s,
                &headers(None),
                &Form::default(),
                Some(&bad)
            )),
            "client_certificate_unknown"
        );
        let f = Form::parse(b"client_id=bff").unwrap();
        assert_eq!(
            audit(authenticate(&s, &headers(None), &f, Some(&good))),
            "client_auth_missing",
            "a secret client cannot use a certificate"
        );
        // A certificate that expired while its connection stayed open.
        let expired = PeerCertificate {
            not_after: portcullis_core::unix_now() - 1,
            ..good.clone()
        };
        let f = Form::default();
        assert_eq!(
            audit(authenticate(&s, &headers(None), &f, Some(&expired))),
            "client_certificate_expired"
        );
    }
}
