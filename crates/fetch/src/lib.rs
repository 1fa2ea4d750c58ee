//! # portcullis-fetch
//!
//! A small HTTP client for what the security steps fetch from other services: discovery
//! documents, key sets and introspection answers (authentication), decisions of an external
//! policy engine (authorization).
//!
//! * **Takes**: a URL (http or https), an optional CA bundle to trust instead of the system
//!   roots, a time limit per call.
//! * **Produces**: the status, headers and body of the answer.
//! * **Refuses**: an answer not complete within the time limit (connection, request and the
//!   whole body), a body larger than 1 MiB.
//!
//! One [`Fetcher`] per trust configuration; it pools connections and is cheap to clone.

#![forbid(unsafe_code)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest body read from an IdP (a JWKS, a discovery document, an introspection answer).
const MAX_BODY: usize = 1 << 20;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled client for one trust configuration.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<Https, Full<Bytes>>,
}

/// What a fetch returned.
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetcher {
    /// `ca_pem`: trust these CAs instead of the system roots.
    pub fn new(ca_pem: Option<&[u8]>) -> Result<Fetcher, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                use rustls_pki_types::pem::PemObject;
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
                    roots.add(cert).map_err(|e| format!("CA bundle: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("CA bundle holds no certificate".into());
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(https);
        Ok(Fetcher { client })
    }

    /// Sends `req` and reads the answer, all within `timeout`.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Fetched, String> {
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// GET with `Accept: application/json`.
    pub async fn get_json(&self, url: &str, timeout: Duration) -> Result<Fetched, String> {
        let req = Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portcullis")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad URL {url}: {e}"))?;
        self.send(req, timeout).await
    }

    /// POST of a JSON `body` with `Content-Type` and `Accept: application/json`, plus `headers`
    /// (e.g. an `Authorization` the service asks for).
    pub async fn post_json(
        &self,
        url: &str,
        body: Bytes,
        headers: &[(http::HeaderName, http::HeaderValue)],
        timeout: Duration,
    ) -> Result<Fetched, String> {
        let mut builder = Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portcullis");
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| format!("bad URL {url}: {e}"))?;
        self.send(req, timeout).await
    }
}

/// `max-age` of a `Cache-Control` header (`no-store`/`no-cache` count as 0).
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut out = None;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(s) = v.to_str() else { continue };
        for d in s.split(',') {
            let d = d.trim().to_ascii_lowercase();
            if d == "no-store" || d == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(n) = d.strip_prefix("max-age=")
                && let Ok(n) = n.trim_matches('"').parse::<u64>()
            {
                out = Some(Duration::from_secs(n));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let mut h = HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=600".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(600)));
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn post_json_to_a_closed_port_or_a_bad_url_fails() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let fetcher = Fetcher::new(None).unwrap();
        let url = format!("http://127.0.0.1:{port}/v1/data/x");
        let e = fetcher
            .post_json(&url, Bytes::from_static(b"{}"), &[], Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(e.contains("request failed"), "{e}");
        let e = fetcher
            .post_json(
                "http://bad host/",
                Bytes::new(),
                &[],
                Duration::from_secs(5),
            )
            .await
            .err()
            .unwrap();
        assert!(e.contains("bad URL"), "{e}");
    }
}
