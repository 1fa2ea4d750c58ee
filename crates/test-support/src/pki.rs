//! A throwaway certificate authority, made at test time with rcgen (ring, ECDSA P-256).
//!
//! [`TestPki::new`] creates the CA and a temporary folder (removed on drop) holding `ca.pem`
//! and every issued certificate and key, each under a unique name.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The leaf certificate alone (not the CA).
    pub cert_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// DER of the leaf, to compare with what a TLS server presented.
    pub cert_der: Vec<u8>,
}

/// A certificate authority and the folder its files live in.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    n: AtomicUsize,
}

impl TestPki {
    /// A fresh CA (`CN=Portcullis Test CA`) written to `ca.pem` in a fresh temporary folder.
    pub fn new() -> TestPki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis Test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        TestPki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            dir,
            n: AtomicUsize::new(0),
        }
    }

    /// The folder holding `ca.pem` and issued files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn issue(&self, mut params: CertificateParams) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        params.is_ca = IsCa::NoCa;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let i = self.n.fetch_add(1, Ordering::Relaxed);
        let cert_path = self.dir.path().join(format!("leaf{i}.pem"));
        let key_path = self.dir.path().join(format!("leaf{i}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        CertFiles {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path,
            key_path,
            cert_der: cert.der().to_vec(),
        }
    }

    /// A server certificate signed by the CA: each name becomes an IP address SAN when it
    /// parses as one, a DNS SAN otherwise; the first is also the common name. EKU serverAuth.
    pub fn issue_server(&self, names: &[&str]) -> CertFiles {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params)
    }

    /// A client certificate signed by the CA (for mTLS): `CN=common_name`, EKU clientAuth,
    /// and the SPIFFE ID (`spiffe://trust.domain/path`) as URI SAN when given.
    pub fn issue_client(&self, common_name: &str, spiffe_id: Option<&str>) -> CertFiles {
        self.issue_client_until(common_name, spiffe_id, None)
    }

    /// Same, valid until `not_after` (seconds since the Unix epoch) when given.
    pub fn issue_client_until(
        &self,
        common_name: &str,
        spiffe_id: Option<&str>,
        not_after: Option<u64>,
    ) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(t) = not_after {
            params.not_after = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(t);
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(id) = spiffe_id {
            params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
