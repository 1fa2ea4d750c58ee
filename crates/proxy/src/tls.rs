//! TLS termination with rustls: TLS 1.3 preferred, 1.2 minimum, only ECDHE key exchange with
//! AEAD ciphers, SNI choosing among several certificates, ALPN `h2` and `http/1.1`.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_config::{Certificate, ListenerTls};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The crypto provider every TLS context of the gateway uses: ring, restricted to AEAD suites
/// (TLS 1.3: AES-GCM, ChaCha20-Poly1305; TLS 1.2: ECDHE with AES-GCM or ChaCha20-Poly1305)
/// and to elliptic-curve key exchange.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider, kx_group};
    let mut p = default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

/// Picks the certificate for a client's SNI: exact name, then wildcard, then the first
/// certificate of the listener.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// keyed by the suffix after `*.`
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return k.clone();
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

fn certified_key(c: &Certificate, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let key = provider
        .key_provider
        .load_private_key(c.key.clone_key())
        .map_err(|e| format!("{}: unusable private key: {e}", c.cert_file.display()))?;
    let ck = CertifiedKey::new(c.chain.clone(), key);
    ck.keys_match().map_err(|e| {
        format!(
            "{}: the private key does not belong to the certificate: {e}",
            c.cert_file.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// The names a certificate answers for: configured ones, else its DNS subject alternative names.
fn names_of(c: &Certificate) -> Result<Vec<String>, String> {
    if !c.server_names.is_empty() {
        return Ok(c.server_names.clone());
    }
    let Some(leaf) = c.chain.first() else {
        return Err(format!("{}: no certificate", c.cert_file.display()));
    };
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
        format!(
            "{}: cannot parse the certificate: {e:?}",
            c.cert_file.display()
        )
    })?;
    Ok(ee
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect())
}

pub fn resolver(tls: &ListenerTls, provider: &CryptoProvider) -> Result<SniResolver, String> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for c in &tls.certificates {
        let ck = certified_key(c, provider)?;
        for n in names_of(c)? {
            match n.strip_prefix("*.") {
                Some(suffix) => {
                    wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| ck.clone());
                }
                None => {
                    exact.entry(n).or_insert_with(|| ck.clone());
                }
            }
        }
        default.get_or_insert(ck);
    }
    let default = default.ok_or_else(|| "no certificate".to_string())?;
    Ok(SniResolver {
        exact,
        wildcard,
        default,
    })
}

/// The server configuration of a TLS listener.
pub fn server_config(tls: &ListenerTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let resolver = resolver(tls, &provider)?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in &ca.roots {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("client_auth CA: {e}"))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if ca.required {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("client_auth: {e}"))?)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// The fingerprint of a listener's client-certificate rules: SHA-256 over the `required` flag
/// and every CA certificate of `ca_file`, in order, each after its length (so that no two lists
/// of certificates hash alike). Computed when a configuration's runtime is built; a TLS
/// connection keeps the one its handshake ran under, and each of its requests compares it with
/// the running configuration's ([`crate::runtime::Runtime::client_auth_changed`]).
pub fn client_auth_fingerprint(ca: &portcullis_config::ClientAuth) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"portcullis client_auth v1\0");
    ctx.update(&[u8::from(ca.required)]);
    for root in &ca.roots {
        ctx.update(&(root.len() as u64).to_be_bytes());
        ctx.update(root);
    }
    // Then each trust domain's bundle (none: the v1 fingerprint, unchanged): a bundle changed
    // changes which certificates carry which ids.
    for (domain, certs) in &ca.spiffe_bundles {
        ctx.update(b"\0spiffe\0");
        ctx.update(&(domain.len() as u64).to_be_bytes());
        ctx.update(domain.as_bytes());
        ctx.update(&(certs.len() as u64).to_be_bytes());
        for c in certs {
            ctx.update(&(c.len() as u64).to_be_bytes());
            ctx.update(c);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,` between RDNs and `+`
/// between the attributes of one, the usual short names (`CN`, `O`, `OU`, `C`, `L`, `ST`,
/// `STREET`, `DC`, `UID`, else the dotted OID), and in values the characters that would
/// delimit escaped with `\` — so that no value can pass for more attributes
/// (`CN=bff\, O=Example` is one common name, never `CN=bff` and `O=Example`). A value that is
/// no string is written `#` and its bytes in hex.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type().to_id_string();
            let short = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.6" => "C",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                "2.5.4.9" => "STREET",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "0.9.2342.19200300.100.1.25" => "DC",
                "0.9.2342.19200300.100.1.1" => "UID",
                _ => oid.as_str(),
            };
            out.push_str(short);
            out.push('=');
            match atv.as_str() {
                Ok(v) => push_rfc4514_value(&mut out, v),
                Err(_) => {
                    out.push('#');
                    for b in atv.attr_value().data.iter() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

/// An attribute value with RFC 4514 §2.4's escapes.
fn push_rfc4514_value(out: &mut String, v: &str) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
}

/// The SPIFFE trust bundles of a listener (`client_auth.spiffe_bundles`): for each trust
/// domain, the CAs whose certificates may carry its ids. Made once per configuration.
#[derive(Debug)]
pub struct SpiffeBundles {
    domains: HashMap<String, Vec<rustls_pki_types::TrustAnchor<'static>>>,
}

impl SpiffeBundles {
    /// `None` when the listener has no bundles (any CA of `ca_file` vouches for any domain).
    pub fn new(ca: &portcullis_config::ClientAuth) -> Result<Option<SpiffeBundles>, String> {
        if ca.spiffe_bundles.is_empty() {
            return Ok(None);
        }
        let mut domains = HashMap::with_capacity(ca.spiffe_bundles.len());
        for (domain, certs) in &ca.spiffe_bundles {
            let anchors = certs
                .iter()
                .map(|c| {
                    webpki::anchor_from_trusted_cert(c)
                        .map(|a| a.to_owned())
                        .map_err(|e| format!("client_auth.spiffe_bundles.{domain}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            domains.insert(domain.clone(), anchors);
        }
        Ok(Some(SpiffeBundles { domains }))
    }

    /// Whether the certificate chain the client sent (its own first) chains, for client
    /// authentication and at the present time, to a CA of `domain`'s bundle.
    pub fn vouch_for(&self, domain: &str, chain: &[rustls_pki_types::CertificateDer<'_>]) -> bool {
        let (Some(anchors), Some((leaf, intermediates))) =
            (self.domains.get(domain), chain.split_first())
        else {
            return false;
        };
        let Ok(ee) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        // The provider's algorithms, made once: a handshake of a listener with bundles asks.
        static ALGORITHMS: std::sync::LazyLock<
            &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm],
        > = std::sync::LazyLock::new(|| provider().signature_verification_algorithms.all);
        ee.verify_for_usage(
            *ALGORITHMS,
            anchors,
            intermediates,
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    }
}

/// What the gateway keeps of the client certificate chain a handshake verified (the client's
/// own certificate first): [`peer_certificate`] of it, whose SPIFFE id is dropped when the
/// listener has trust bundles and the one of the id's trust domain does not vouch for it.
pub fn peer_identity(
    chain: &[rustls_pki_types::CertificateDer<'_>],
    bundles: Option<&SpiffeBundles>,
) -> Option<portcullis_core::PeerCertificate> {
    let mut cert = peer_certificate(chain.first()?)?;
    if let (Some(bundles), Some(id)) = (bundles, &cert.spiffe)
        && !bundles.vouch_for(&id.trust_domain, chain)
    {
        tracing::debug!(
            spiffe_id = %id,
            "the client certificate's SPIFFE id is not vouched for by its trust domain's bundle: ignored"
        );
        cert.spiffe = None;
    }
    Some(cert)
}

/// What the gateway keeps of a client certificate the handshake verified.
pub fn peer_certificate(der: &[u8]) -> Option<portcullis_core::PeerCertificate> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut san_uris = Vec::new();
    let mut san_dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => san_uris.push(u.to_string()),
                GeneralName::DNSName(d) => san_dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    // An X.509-SVID has exactly one URI SAN: with more (a second, other trust domain's id) or
    // an invalid one, the certificate has no SPIFFE identity.
    let spiffe = match san_uris.as_slice() {
        [one] => portcullis_core::SpiffeId::parse(one),
        _ => None,
    };
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let fingerprint_sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Some(portcullis_core::PeerCertificate {
        subject: rfc4514(cert.subject()),
        common_name,
        san_uris,
        san_dns,
        spiffe,
        fingerprint_sha256,
        not_before: u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0),
        not_after: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rcgen::DnType;

    fn subject_of(dn: &[(DnType, &str)]) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let mut name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            name.push(t.clone(), *v);
        }
        params.distinguished_name = name;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        peer_certificate(cert.der()).unwrap().subject
    }

    /// RFC 4514: the last RDN first, values escaped, so that a common name holding `, O=…`
    /// cannot pass for a certificate with that organisation.
    #[test]
    fn subjects_are_written_as_rfc_4514() {
        let real = subject_of(&[
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "bff"),
        ]);
        assert_eq!(real, "CN=bff,O=Example,C=DE");
        let forged = subject_of(&[(DnType::CommonName, "bff,O=Example,C=DE")]);
        assert_eq!(forged, "CN=bff\\,O=Example\\,C=DE");
        assert_ne!(forged, real);
        assert_eq!(
            subject_of(&[(DnType::CommonName, " #a+b\"c\\d<e>f;g ")]),
            "CN=\\ #a\\+b\\\"c\\\\d\\<e\\>f\\;g\\ "
        );
        assert_eq!(subject_of(&[(DnType::CommonName, "#x")]), "CN=\\#x");
        assert_eq!(subject_of(&[(DnType::CommonName, "bff")]), "CN=bff");
    }

    /// The fingerprint changes with the `required` flag, with any CA certificate added, removed
    /// or reordered, and with nothing else.
    #[test]
    fn the_client_auth_fingerprint_covers_the_flag_and_every_root_in_order() {
        let root = |cn: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().clone()
        };
        let (a, b) = (root("a"), root("b"));
        let rules = |required: bool, roots: &[&rustls_pki_types::CertificateDer<'static>]| {
            client_auth_fingerprint(&portcullis_config::ClientAuth {
                required,
                roots: roots.iter().map(|r| (*r).clone()).collect(),
                spiffe_bundles: Vec::new(),
            })
        };
        let base = rules(false, &[&a, &b]);
        assert_eq!(base, rules(false, &[&a, &b]));
        // A trust domain's bundle, added or changed, changes it too.
        let with_bundle = |domain: &str, certs: &[&rustls_pki_types::CertificateDer<'static>]| {
            client_auth_fingerprint(&portcullis_config::ClientAuth {
                required: false,
                roots: vec![a.clone(), b.clone()],
                spiffe_bundles: vec![(
                    domain.to_string(),
                    certs.iter().map(|c| (*c).clone()).collect(),
                )],
            })
        };
        let bundled = with_bundle("prod.test", &[&a]);
        assert_ne!(base, bundled);
        assert_eq!(bundled, with_bundle("prod.test", &[&a]));
        assert_ne!(bundled, with_bundle("prod.test", &[&b]));
        assert_ne!(bundled, with_bundle("dev.test", &[&a]));
        for other in [
            rules(true, &[&a, &b]),
            rules(false, &[&a]),
            rules(false, &[&b, &a]),
            rules(false, &[&a, &b, &b]),
            rules(false, &[]),
        ] {
            assert_ne!(base, other);
        }
    }

    fn with_uris(uris: &[&str]) -> portcullis_core::PeerCertificate {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(u.to_string().try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        peer_certificate(cert.der()).unwrap()
    }

    /// An X.509-SVID has exactly one URI SAN: a certificate with a second one (another trust
    /// domain's id, an invalid id) has no SPIFFE identity at all.
    #[test]
    fn the_spiffe_id_is_the_only_uri_san() {
        let one = with_uris(&["spiffe://prod.example/sa/api"]);
        assert_eq!(
            one.spiffe.clone().unwrap().to_string(),
            "spiffe://prod.example/sa/api"
        );
        assert!(one.valid_at(portcullis_core::unix_now()));
        assert!(!one.valid_at(one.not_after + 1));
        for uris in [
            &["spiffe://dev.example/sa/x", "spiffe://prod.example/sa/api"][..],
            &[
                "spiffe://Prod.example/sa/api",
                "spiffe://prod.example/sa/api",
            ],
            &["https://example.com/", "spiffe://prod.example/sa/api"],
            &["spiffe://prod.example/sa/../api"],
        ] {
            assert_eq!(with_uris(uris).spiffe, None, "{uris:?}");
        }
    }
}
