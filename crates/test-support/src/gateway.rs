//! Launches the real `portcullis` binary and reads what it prints.
//!
//! The binary announces itself on STDOUT, one line each, while it starts:
//!
//! ```text
//! portcullis: listener <name> <http|https>://<ip:port>    (one per client listener)
//! portcullis: admin http://<ip:port>                      (when the admin listener is on)
//! portcullis: ready
//! ```
//!
//! Audit events are JSON lines on STDOUT too (the default audit output); logs go to STDERR.
//! [`Gateway::start`] writes the YAML to `config.yaml` in a fresh temporary folder, runs
//! `bin run --config <file>` with both streams piped (stdin null), collects the lines on two
//! threads and returns once `portcullis: ready` was printed (an error with everything printed
//! when the process exits first or 30 s pass). Listener addresses come from those lines, so
//! configurations should bind `127.0.0.1:0`. The child is killed on drop.
//!
//! In a test of the `portcullis` package the binary is `env!("CARGO_BIN_EXE_portcullis")`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `portcullis run` process; killed on drop.
pub struct Gateway {
    child: Child,
    _dir: Option<tempfile::TempDir>,
    config: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    listeners: Vec<(String, String)>,
    admin: Option<SocketAddr>,
}

impl Gateway {
    /// Writes `yaml` to `config.yaml` in a fresh temporary folder (removed on drop) and runs
    /// `bin run --config` on it; waits up to 30 s for `portcullis: ready`.
    pub fn start(bin: &Path, yaml: &str) -> anyhow::Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let mut g = Self::start_in(bin, dir.path(), yaml)?;
        g._dir = Some(dir);
        Ok(g)
    }

    /// Same, writing `config.yaml` into `dir` (for configurations that reference files next
    /// to it; the caller keeps `dir` alive).
    pub fn start_in(bin: &Path, dir: &Path, yaml: &str) -> anyhow::Result<Gateway> {
        Self::start_in_with(bin, dir, yaml, &[])
    }

    /// Same, with more arguments to `run` (`--threads 1`, `--no-watch`).
    pub fn start_in_with(
        bin: &Path,
        dir: &Path,
        yaml: &str,
        args: &[&str],
    ) -> anyhow::Result<Gateway> {
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml)?;
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn portcullis")?;
        let stdout: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr: Arc<Mutex<String>> = Arc::default();
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let so = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                so.lock().unwrap().push(line);
            }
        });
        let se = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                se.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut g = Gateway {
            child,
            _dir: None,
            config,
            stdout,
            stderr,
            listeners: Vec::new(),
            admin: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = g.stdout_lines();
            if lines.iter().any(|l| l == "portcullis: ready") {
                for l in &lines {
                    if let Some(rest) = l.strip_prefix("portcullis: listener ") {
                        if let Some((name, url)) = rest.split_once(' ') {
                            g.listeners.push((name.to_string(), url.to_string()));
                        }
                    } else if let Some(url) = l.strip_prefix("portcullis: admin http://") {
                        g.admin = url.parse().ok();
                    }
                }
                return Ok(g);
            }
            if let Ok(Some(status)) = g.child.try_wait() {
                // Let the readers drain the pipes (bounded: a grandchild may hold them open).
                let drained = Instant::now() + Duration::from_secs(2);
                while !(out_reader.is_finished() && err_reader.is_finished())
                    && Instant::now() < drained
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                bail!(
                    "portcullis exited with {status}\nstdout:\n{}\nstderr:\n{}",
                    g.stdout_lines().join("\n"),
                    g.stderr_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "portcullis did not get ready in 30s\nstdout:\n{}\nstderr:\n{}",
                    g.stdout_lines().join("\n"),
                    g.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The announced URL of a client listener (`http://127.0.0.1:PORT` or `https://…`);
    /// panics for an unknown name.
    pub fn url(&self, name: &str) -> String {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.clone())
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.listeners))
    }

    /// The bound address of a client listener; panics for an unknown name.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let url = self.url(name);
        url.split("://").nth(1).unwrap().parse().unwrap()
    }

    /// The admin listener's address; panics when none was announced.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener")
    }

    /// `http://` + [`admin`](Self::admin).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin())
    }

    /// Every STDOUT line so far (announcements and audit events).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything printed on STDERR so far (logs).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stdout lines that are JSON objects: the audit events.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// Polls the audit events (every 20 ms) until one matches; `None` after `timeout`.
    pub fn wait_for_audit(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.audit_events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The configuration file the process was started with (rewrite it to test reloads).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit (bounded); returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a finished CLI invocation left.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit code; -1 when killed by a signal.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bin args…` to completion (stdin null), e.g. `run_cli(bin, &["check", file])`.
pub fn run_cli(bin: &Path, args: &[&str]) -> CliOutput {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    CliOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
