//! Remote key sets (a JWKS URL, or one found by OIDC discovery) and their lifecycle:
//! cached for the server's `max-age` within bounds, refetched in the background before they
//! expire, refetched once (single-flight, with a cooldown) when a token names an unknown `kid`,
//! and kept — the last good set — while the IdP is down. A key set URL found by discovery is
//! looked up again when fetching it fails (in the background or for an unknown `kid`), and the
//! new one kept once a key set was read there: a provider that moves its key set is followed,
//! while a forged `kid` alone never makes the gateway read the discovery document again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use portcullis_core::unix_now;

use arc_swap::ArcSwapOption;
use portcullis_jose::JwkSet;
use serde::Serialize;

use crate::config::{JwksCacheSettings, JwtIssuer, KeySource};
use crate::fetch::{Fetcher, max_age};

/// What the admin API and metrics show about one key source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyStatus {
    pub source: String,
    pub jwks_uri: Option<String>,
    pub kids: Vec<String>,
    /// Unix seconds of the last successful fetch.
    pub last_success: Option<u64>,
    pub last_error: Option<String>,
    pub fetches: u64,
    pub failures: u64,
    /// Refetches caused by tokens with an unknown `kid`.
    pub unknown_kid_refetches: u64,
    /// Unknown-`kid` refetches refused by the cooldown.
    pub unknown_kid_throttled: u64,
}

/// A remote key set shared by every snapshot whose issuer has the same source and settings.
pub struct RemoteKeys {
    name: String,
    source: KeySource,
    settings: JwksCacheSettings,
    fetcher: Fetcher,
    keys: ArcSwapOption<JwkSet>,
    jwks_uri: Mutex<Option<String>>,
    status: Mutex<KeyStatus>,
    /// Serialises fetches: concurrent callers wait for the one in flight.
    fetching: tokio::sync::Mutex<()>,
    /// Bumped by every completed fetch attempt.
    generation: AtomicU64,
    last_kid_refetch: Mutex<Option<Instant>>,
    /// The keys of the set in force, each by its public members ([`key_identities`]).
    identities: Mutex<HashSet<String>>,
    /// Bumped each time a newly fetched set lacks a key the set it replaces had (a key the
    /// IdP withdrew — or changed under the same `kid`): verdicts cached before it are void.
    withdrawals: AtomicU64,
}

impl RemoteKeys {
    pub fn new(issuer: &JwtIssuer) -> Result<Arc<RemoteKeys>, String> {
        let fetcher = Fetcher::new(issuer.ca_pem.as_deref())?;
        let source_desc = match &issuer.source {
            KeySource::Discovery { issuer } => format!("discovery {issuer}"),
            KeySource::JwksUrl(u) => format!("jwks_url {u}"),
            KeySource::Static(_) => "static".into(),
        };
        Ok(Arc::new(RemoteKeys {
            name: issuer.name.to_string(),
            source: issuer.source.clone(),
            settings: issuer.cache.clone(),
            fetcher,
            keys: ArcSwapOption::empty(),
            jwks_uri: Mutex::new(match &issuer.source {
                KeySource::JwksUrl(u) => Some(u.clone()),
                _ => None,
            }),
            status: Mutex::new(KeyStatus {
                source: source_desc,
                ..KeyStatus::default()
            }),
            fetching: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            last_kid_refetch: Mutex::new(None),
            identities: Mutex::new(HashSet::new()),
            withdrawals: AtomicU64::new(0),
        }))
    }

    /// Starts the background refresh task; it stops when the last snapshot using these keys
    /// is gone. Needs a Tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let weak: Weak<RemoteKeys> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(me) = weak.upgrade() else { return };
                let wait = {
                    let _g = me.fetching.lock().await;
                    match me.fetch().await {
                        Ok(ttl) => {
                            failures = 0;
                            (ttl * 3 / 4).max(Duration::from_secs(1))
                        }
                        Err(_) => {
                            failures = failures.saturating_add(1);
                            // 1s, 2s, 4s … up to 60s while the IdP is down.
                            Duration::from_secs(1u64 << failures.min(6).saturating_sub(1))
                                .min(Duration::from_secs(60))
                        }
                    }
                };
                drop(me);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// The current set, if one was ever loaded.
    pub fn current(&self) -> Option<Arc<JwkSet>> {
        self.keys.load_full()
    }

    pub fn status(&self) -> KeyStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many times a fetched set withdrew a key the set before it had. A verdict cached
    /// while this was lower may rest on a withdrawn key: read it *before* [`Self::current`]
    /// when stamping a verdict (the new set is in place before the count moves), and compare
    /// when serving one.
    pub fn withdrawals(&self) -> u64 {
        self.withdrawals.load(Ordering::Acquire)
    }

    /// Called when a token names a `kid` the current set lacks (or no set is loaded yet).
    /// Waits for a fetch already in flight; otherwise fetches once unless the cooldown since
    /// the last such refetch has not passed. Returns true when a new set may be in place.
    ///
    /// A set never loaded is different: its source has not answered yet (it may hang for
    /// `fetch_timeout` on every try), so a request that finds a fetch in flight or the
    /// cooldown not over returns at once (a 503 for its caller) rather than wait — retrying is
    /// the background task's — and at most one request per cooldown waits on a fetch.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let before = self.generation.load(Ordering::Acquire);
        let _g = if self.current().is_none() {
            match self.fetching.try_lock() {
                Ok(g) => g,
                Err(_) => {
                    if let Ok(mut s) = self.status.lock() {
                        s.unknown_kid_throttled += 1;
                    }
                    return false;
                }
            }
        } else {
            self.fetching.lock().await
        };
        if self.generation.load(Ordering::Acquire) != before {
            return true;
        }
        {
            let Ok(mut last) = self.last_kid_refetch.lock() else {
                return false;
            };
            if let Some(t) = *last
                && t.elapsed() < self.settings.unknown_kid_cooldown
            {
                if let Ok(mut s) = self.status.lock() {
                    s.unknown_kid_throttled += 1;
                }
                return false;
            }
            *last = Some(Instant::now());
        }
        if let Ok(mut s) = self.status.lock() {
            s.unknown_kid_refetches += 1;
        }
        self.fetch().await.is_ok()
    }

    /// One fetch (discovery first when needed). On success the set is swapped in and its time
    /// to live returned; on failure the old set stays.
    async fn fetch(&self) -> Result<Duration, String> {
        let result = self.fetch_inner().await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut s) = self.status.lock() {
            s.fetches += 1;
            match &result {
                Ok((set, _, _)) => {
                    s.last_success = Some(unix_now());
                    s.last_error = None;
                    s.kids = set.kids();
                    s.jwks_uri = self.jwks_uri.lock().ok().and_then(|u| u.clone());
                }
                Err(e) => {
                    s.failures += 1;
                    s.last_error = Some(e.clone());
                }
            }
        }
        match result {
            Ok((set, ttl, ids)) => {
                tracing::debug!(issuer = %self.name, kids = ?set.kids(), ttl = ?ttl, "key set loaded");
                self.keys.store(Some(Arc::new(set)));
                // After the new set is in place: a request that saw the new count verifies
                // with the new set.
                let withdrawn = match self.identities.lock() {
                    Ok(mut known) => {
                        let gone = known.iter().any(|k| !ids.contains(k));
                        *known = ids;
                        gone
                    }
                    // Not knowing what changed: as if a key went.
                    Err(_) => true,
                };
                if withdrawn {
                    self.withdrawals.fetch_add(1, Ordering::AcqRel);
                    tracing::info!(issuer = %self.name, "a key was withdrawn from the key set; tokens verified before are verified again");
                }
                Ok(ttl)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.name, error = %e, "key set fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    async fn fetch_inner(&self) -> Result<Fetched, String> {
        let known = self.jwks_uri.lock().ok().and_then(|u| u.clone());
        let KeySource::Discovery { issuer } = &self.source else {
            return match known {
                Some(u) => self.fetch_set(&u).await,
                None => Err("no key source".into()),
            };
        };
        let first = match &known {
            Some(u) => match self.fetch_set(u).await {
                Ok(set) => return Ok(set),
                Err(e) => Some(e),
            },
            None => None,
        };
        // None known yet, or the known one failed: the provider may have moved its key set.
        // A URL is kept only once a key set was read there.
        let found = match self.discover(issuer, self.settings.fetch_timeout).await {
            Ok(u) => u,
            Err(e) => return Err(first.unwrap_or(e)),
        };
        if let Some(e) = first
            && known.as_deref() == Some(found.as_str())
        {
            return Err(e);
        }
        let set = self.fetch_set(&found).await?;
        if let Some(old) = &known {
            tracing::warn!(issuer = %self.name, from = %old, to = %found, "the provider's key set moved");
        }
        if let Ok(mut slot) = self.jwks_uri.lock() {
            *slot = Some(found);
        }
        Ok(set)
    }

    /// Fetches and reads the key set at `uri`, with its time to live and its keys'
    /// identities.
    async fn fetch_set(&self, uri: &str) -> Result<Fetched, String> {
        let timeout = self.settings.fetch_timeout;
        let r = self.fetcher.get_json(uri, timeout).await?;
        if !r.status.is_success() {
            return Err(format!("{uri} answered {}", r.status));
        }
        let (set, warnings) = JwkSet::from_json(&r.body).map_err(|e| format!("{uri}: {e}"))?;
        for w in warnings {
            tracing::debug!(issuer = %self.name, "{uri}: {w}");
        }
        if set.keys.is_empty() {
            return Err(format!("{uri}: no usable signing key"));
        }
        let s = &self.settings;
        let ttl = max_age(&r.headers)
            .unwrap_or(s.default_ttl)
            .clamp(s.min_ttl, s.max_ttl);
        Ok((set, ttl, key_identities(&r.body)))
    }

    async fn discover(&self, issuer: &str, timeout: Duration) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let r = self.fetcher.get_json(&url, timeout).await?;
        if !r.status.is_success() {
            return Err(format!("{url} answered {}", r.status));
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| format!("{url}: {e}"))?;
        // OpenID Connect Discovery §4.3: the document's issuer must be the one asked for.
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
            return Err(format!("{url}: the document's issuer is not {issuer}"));
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{url}: no jwks_uri"))?;
        check_jwks_uri(issuer, jwks).map_err(|e| format!("{url}: {e}"))?;
        Ok(jwks.to_string())
    }
}

/// A fetched key set, its time to live and its keys' identities.
type Fetched = (JwkSet, Duration, HashSet<String>);

/// Each key of a JWKS document by its public members (`kid`, `kty`, `crv`, `x`, `y`, `n`,
/// `e`, `alg`, `use`, `key_ops`): a key that goes, or changes under the same `kid`, is missed
/// when the next set is compared with this one.
fn key_identities(body: &[u8]) -> HashSet<String> {
    const MEMBERS: [&str; 10] = [
        "kid", "kty", "crv", "x", "y", "n", "e", "alg", "use", "key_ops",
    ];
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    doc.get("keys")
        .and_then(|k| k.as_array())
        .map(|keys| {
            keys.iter()
                .map(|k| {
                    MEMBERS
                        .iter()
                        .map(|m| k.get(*m).map(|v| v.to_string()).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the `jwks_uri` a discovery document of `issuer` names may be fetched: `https://`,
/// without credentials in it; plain `http://` only on loopback and only for an issuer that
/// is itself `http://` on loopback (a test IdP, a sidecar) — a remote issuer's document must
/// not send the gateway to its own host's services. For the same reason an `https://` one
/// naming `localhost` or an internal address literal (loopback, private, link-local — cloud
/// metadata services live there —, unspecified) is taken only from an issuer whose own host is
/// one too.
pub(crate) fn check_jwks_uri(issuer: &str, jwks: &str) -> Result<(), String> {
    let parsed: http::Uri = jwks
        .parse()
        .map_err(|_| "jwks_uri is not a URL".to_string())?;
    if parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("jwks_uri carries credentials (user:password@)".into());
    }
    let loopback_http = |u: &http::Uri| {
        u.scheme_str() == Some("http") && u.host().is_some_and(crate::config::is_loopback_host)
    };
    let issuer_internal = || {
        issuer
            .parse::<http::Uri>()
            .is_ok_and(|i| i.host().is_some_and(is_internal_host))
    };
    match parsed.scheme_str() {
        Some("https") if parsed.host().is_some_and(is_internal_host) && !issuer_internal() => {
            Err("jwks_uri names a local or internal address, for an issuer that does not".into())
        }
        Some("https") if parsed.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Some("http")
            if loopback_http(&parsed)
                && issuer.parse::<http::Uri>().is_ok_and(|i| loopback_http(&i)) =>
        {
            Ok(())
        }
        Some("http") if loopback_http(&parsed) => {
            Err("jwks_uri is plain http on loopback, for an issuer that is not".into())
        }
        _ => Err("jwks_uri must be https".into()),
    }
}

/// `localhost`, or an address literal that is not a public one: loopback, private (RFC 1918,
/// IPv6 unique local), link-local (IPv6 site-local too), shared (RFC 6598), "this network"
/// (`0.0.0.0/8`), unspecified — and every IPv6 form that carries an IPv4 address the gateway
/// would end up reaching, judged by that address: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-translated (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`;
/// the local-use `64:ff9b:1::/48` is internal as a whole), 6to4 (`2002:AABB:CCDD::/48`) and
/// Teredo (`2001:0::/32`: its server's address and the client's, stored inverted).
fn is_internal_host(h: &str) -> bool {
    use std::net::IpAddr;
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    if crate::config::is_loopback_host(h) {
        return true;
    }
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => is_internal_v4(a),
        Ok(IpAddr::V6(a)) => {
            let first = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || (first, a.segments()[1], a.segments()[2]) == (0x64, 0xff9b, 1)
                || embedded_v4(a).iter().any(|v4| is_internal_v4(*v4))
        }
        Err(_) => false,
    }
}

fn is_internal_v4(a: std::net::Ipv4Addr) -> bool {
    let [x, y, ..] = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || x == 0
        || (x == 100 && (64..128).contains(&y))
}

/// The IPv4 addresses an IPv6 address embeds by one of the standard translation or tunnelling
/// forms (see [`is_internal_host`]); none for any other address.
fn embedded_v4(a: std::net::Ipv6Addr) -> Vec<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let s = a.segments();
    let o = a.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        // IPv4-mapped `::ffff:0:0/96` and IPv4-translated `::ffff:0:0:0/96` (SIIT).
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0xffff, 0, ..] => vec![last],
        // IPv4-compatible `::/96` (`::` and `::1` are judged as IPv6 above).
        [0, 0, 0, 0, 0, 0, ..] => vec![last],
        // NAT64, the well-known prefix `64:ff9b::/96`.
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => vec![last],
        // 6to4 `2002::/16`: the IPv4 address in bits 16–48.
        [0x2002, ..] => vec![Ipv4Addr::new(o[2], o[3], o[4], o[5])],
        // Teredo `2001:0::/32`: the server in bits 32–64, the client (inverted) in the last 32.
        [0x2001, 0, ..] => vec![
            Ipv4Addr::new(o[4], o[5], o[6], o[7]),
            Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn remote(jwks_url: String, cooldown: Duration, fetch_timeout: Duration) -> Arc<RemoteKeys> {
        let mut issuer = JwtIssuer::for_tests(&jwks_url);
        issuer.name = Arc::from("silent");
        issuer.issuer = "https://idp.test".into();
        issuer.cache.unknown_kid_cooldown = cooldown;
        issuer.cache.fetch_timeout = fetch_timeout;
        RemoteKeys::new(&issuer).unwrap()
    }

    /// A key source that was never loaded and does not answer (it accepts connections and
    /// says nothing): a request that finds a fetch under way does not wait for it, and once
    /// a request's fetch was tried no other request waits on one within the cooldown.
    /// Counted in connections the source saw, not in time; the timeouts only bound the test.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_never_loaded_keeps_at_most_one_request_per_cooldown_waiting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        let keys = remote(
            format!("http://{addr}/jwks"),
            Duration::from_secs(3600),
            Duration::from_secs(120),
        );
        let bound = Duration::from_secs(30);

        // The first request fetches, and hangs with the source.
        let first = tokio::spawn({
            let keys = keys.clone();
            async move { keys.refetch_for_unknown_kid().await }
        });
        let until = Instant::now() + bound;
        while accepted.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < until, "the first fetch never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Others meanwhile: answered at once (their caller refuses with 503), no new fetch.
        for _ in 0..3 {
            let r = tokio::time::timeout(bound, keys.refetch_for_unknown_kid())
                .await
                .expect("a request waited on the fetch under way");
            assert!(!r);
        }
        assert!(!first.is_finished(), "the first fetch ended before them");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // The first request gives up (its client went away): no fetch is under way now, but
        // the cooldown is not over, so none is started either.
        first.abort();
        let _ = first.await;
        for _ in 0..3 {
            let r = tokio::time::timeout(bound, keys.refetch_for_unknown_kid())
                .await
                .expect("a request waited within the cooldown");
            assert!(!r);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(keys.current().is_none());
        assert_eq!(keys.status().unknown_kid_refetches, 1);
        assert_eq!(keys.status().unknown_kid_throttled, 6);
    }

    #[test]
    fn a_discovered_key_set_url_is_https_or_as_local_as_its_issuer() {
        let ok = |i: &str, j: &str| check_jwks_uri(i, j).is_ok();
        assert!(ok("https://idp.example", "https://keys.example/jwks"));
        assert!(ok("https://idp.example", "https://idp.example:8443/jwks"));
        assert!(ok("http://127.0.0.1:9000", "http://127.0.0.1:9000/jwks"));
        assert!(ok("http://localhost:9000", "http://[::1]:9001/jwks"));
        assert!(ok("http://127.0.0.1:9000", "https://keys.example/jwks"));
        // A remote issuer's document naming a service on the gateway's own host.
        for local in [
            "http://127.0.0.1:8500/v1/kv",
            "http://localhost/jwks",
            "http://[::1]:9901/config",
        ] {
            assert!(!ok("https://idp.example", local), "{local}");
        }
        // Nor, over https, an internal address: loopback, private, link-local (metadata),
        // shared, unspecified, mapped — unless the issuer is internal itself.
        for internal in [
            "https://localhost/jwks",
            "https://127.0.0.1:8443/jwks",
            "https://10.0.0.5/jwks",
            "https://172.16.1.1/jwks",
            "https://192.168.1.10/jwks",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/jwks",
            "https://0.0.0.0/jwks",
            "https://[::1]/jwks",
            "https://[fd00::1]/jwks",
            "https://[fe80::1]/jwks",
            "https://[::ffff:10.0.0.5]/jwks",
            "https://LOCALHOST/jwks",
            "https://localhost./jwks",
            "https://keys.localhost/jwks",
        ] {
            assert!(!ok("https://idp.example", internal), "{internal}");
        }
        // IPv6 forms that carry an internal IPv4 address, each judged by it: NAT64,
        // IPv4-compatible, IPv4-translated, 6to4, Teredo (server, or the inverted client);
        // local-use NAT64 and site-local as a whole.
        for internal in [
            "https://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "https://[64:ff9b::10.0.0.5]/jwks",
            "https://[64:ff9b::127.0.0.1]/jwks",
            "https://[64:ff9b:1::8.8.8.8]/jwks",
            "https://[::10.0.0.5]/jwks",
            "https://[::127.0.0.1]/jwks",
            "https://[::169.254.169.254]/jwks",
            "https://[::0.0.0.2]/jwks",
            "https://[::ffff:0:192.168.1.1]/jwks",
            "https://[2002:a00:5::1]/jwks",
            "https://[2002:7f00:1::]/jwks",
            "https://[2002:a9fe:a9fe:1234::1]/jwks",
            "https://[2001:0:a00:1::8:f7f7:f7f7]/jwks",
            "https://[2001:0:4136:e378:8000:63bf:f5ff:fffa]/jwks",
            "https://[2001:0:4136:e378:8000:63bf:5601:56fa]/jwks",
            "https://[fec0::1]/jwks",
        ] {
            assert!(!ok("https://idp.example", internal), "{internal}");
        }
        // The same forms around public IPv4 addresses stay public.
        for public in [
            "https://[64:ff9b::8.8.8.8]/jwks",
            "https://[::8.8.8.8]/jwks",
            "https://[2002:808:808::1]/jwks",
            "https://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/jwks",
            "https://[2001:db8:a00:5::1]/jwks",
        ] {
            assert!(ok("https://idp.example", public), "{public}");
        }
        assert!(ok("https://10.0.0.2", "https://10.0.0.5/jwks"));
        assert!(ok("http://127.0.0.1:9000", "https://127.0.0.1:9443/jwks"));
        assert!(ok("https://idp.example", "https://172.32.0.1/jwks"));
        assert!(ok("https://idp.example", "https://[2001:db8::1]/jwks"));
        // Plain http elsewhere, whatever the issuer.
        assert!(!ok("http://127.0.0.1:9000", "http://keys.example/jwks"));
        assert!(!ok("https://idp.example", "http://keys.example/jwks"));
        // Credentials in the URL, with either scheme.
        assert!(!ok("https://idp.example", "https://u:p@keys.example/jwks"));
        assert!(!ok("https://idp.example", "https://u@keys.example/jwks"));
        assert!(!ok(
            "http://127.0.0.1:9000",
            "http://u:p@127.0.0.1:9000/jwks"
        ));
        // Not a URL, or another scheme.
        for bad in [
            "",
            "/jwks",
            "keys.example/jwks",
            "file:///etc/passwd",
            "ftp://k/j",
        ] {
            assert!(!ok("https://idp.example", bad), "{bad}");
        }
    }
}
