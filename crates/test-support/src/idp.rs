//! A real OpenID provider: the npm package `oidc-provider` (a certified implementation), run
//! with Node on 127.0.0.1 from `idp/server.mjs`. `scripts/test` installs its packages.
//!
//! It has a client-credentials client (`gw-client` / `gw-secret`) allowed the scopes
//! `read:orders write:orders admin:orders`, an introspection client (`gateway` /
//! `gateway-secret`), JWT access tokens (RFC 9068, `typ: at+jwt`, audience
//! [`JWT_AUDIENCE`]) and opaque ones (audience [`OPAQUE_AUDIENCE`]). Signing keys are
//! generated here, so tests can rotate them: [`OidcProvider::rotate_key`] restarts the
//! provider on the same port with a new signing key first and the old one still published.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const JWT_AUDIENCE: &str = "https://api.example/jwt";
pub const OPAQUE_AUDIENCE: &str = "https://api.example/opaque";

/// A running `oidc-provider`; killed on drop.
pub struct OidcProvider {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    keys: Vec<String>,
    kids: Vec<String>,
    alg: &'static str,
    serial: u32,
}

fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("idp")
}

fn node_modules_present() -> bool {
    idp_dir().join("node_modules/oidc-provider").is_dir()
}

/// A private JWK from `node server.mjs genkey`. Node has been seen to hang (in a futex, at
/// 0% CPU) on a loaded machine now and then: a run that takes longer than 20 s is killed and
/// tried again, at most three times.
fn genkey(kid: &str, alg: &str) -> String {
    for _ in 0..3 {
        let mut child = Command::new("node")
            .arg("server.mjs")
            .args(["genkey", kid, alg])
            .current_dir(idp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait().expect("wait for node") {
                Some(_) => {
                    let out = child.wait_with_output().expect("node output");
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    return String::from_utf8(out.stdout).unwrap().trim().to_string();
                }
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    panic!("node server.mjs genkey hung three times");
}

impl OidcProvider {
    /// Starts a provider signing with a fresh `alg` key (`RS256` or `ES256`) on an ephemeral
    /// port; waits (at most 30 s) until it listens.
    pub fn start(alg: &'static str) -> OidcProvider {
        assert!(
            node_modules_present(),
            "oidc-provider is not installed: run scripts/test (it runs `npm ci` in {})",
            idp_dir().display()
        );
        let mut p = OidcProvider {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            keys: Vec::new(),
            kids: Vec::new(),
            alg,
            serial: 0,
        };
        p.new_key();
        p.launch();
        p
    }

    fn new_key(&mut self) -> String {
        self.serial += 1;
        let kid = format!(
            "{}-{}-{}",
            self.alg.to_lowercase(),
            std::process::id(),
            self.serial
        );
        let jwk = genkey(&kid, self.alg);
        self.keys.insert(0, jwk);
        self.kids.insert(0, kid.clone());
        kid
    }

    fn launch(&mut self) {
        let file = self.dir.path().join("jwks.json");
        std::fs::write(&file, format!("{{\"keys\":[{}]}}", self.keys.join(","))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new("node")
                .arg("server.mjs")
                .current_dir(idp_dir())
                .env("PORT", self.port.to_string())
                .env("JWKS_FILE", &file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("node");
            let stdout = child.stdout.take().unwrap();
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            if let Some(url) = line.trim().strip_prefix("oidc-provider listening ") {
                self.port = url.rsplit(':').next().unwrap().parse().unwrap();
                self.child = Some(child);
                return;
            }
            // Restarting on the same port can race the old socket's release: retry briefly.
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            assert!(
                Instant::now() < deadline,
                "oidc-provider did not start: {line}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    /// Key ids, the signing one first.
    pub fn kids(&self) -> Vec<String> {
        self.kids.clone()
    }

    async fn token(&self, scope: &str, resource: &str) -> String {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode("gw-client:gw-secret");
        let body = format!(
            "grant_type=client_credentials&scope={}&resource={}",
            scope.replace(' ', "%20").replace(':', "%3A"),
            resource.replace(':', "%3A").replace('/', "%2F")
        );
        let req = http::Request::post(format!("{}/token", self.issuer()))
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let r = crate::send(req).await;
        assert_eq!(r.status, 200, "token endpoint: {}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    /// A client-credentials JWT access token for [`JWT_AUDIENCE`].
    pub async fn jwt_token(&self, scope: &str) -> String {
        self.token(scope, JWT_AUDIENCE).await
    }

    /// A client-credentials opaque access token for [`OPAQUE_AUDIENCE`].
    pub async fn opaque_token(&self, scope: &str) -> String {
        self.token(scope, OPAQUE_AUDIENCE).await
    }

    /// Generates a new signing key and restarts on the same port with it first and the old
    /// keys still published. Returns the new kid. (Opaque tokens issued before do not survive
    /// a restart: the provider keeps them in memory.)
    pub fn rotate_key(&mut self) -> String {
        let kid = self.new_key();
        self.stop();
        self.launch();
        kid
    }

    /// Kills the provider; [`OidcProvider::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}
