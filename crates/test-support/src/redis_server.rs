//! A real Redis server (`redis-server` from the OS packages; `scripts/test` installs it) on a
//! free loopback port, with persistence off. [`RedisServer::stop`] kills it hard, to test what
//! the gateway does when Redis is gone; [`RedisServer::restart`] brings it back on the same port
//! (empty).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A server of this test's own: the free port picked is released before `redis-server`
    /// binds it, so another test may have taken it meanwhile (its own server, then shared by
    /// two tests — one restarting it under the other — or a listener of its own): the server
    /// answering must be the one started here (its directory), or another port is tried.
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
        };
        let dir = r.dir.path().to_string_lossy().into_owned();
        for _ in 0..10 {
            r.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let ours = r
                .launch()
                .then(|| r.try_cmd(&["CONFIG", "GET", "dir"]))
                .flatten();
            if ours.is_some_and(|v| v.lines().nth(1) == Some(dir.as_str())) {
                return r;
            }
            r.stop();
        }
        panic!("no redis-server of this test's own could be started");
    }

    /// Starts `redis-server` on the port and waits until something answers PING there; false
    /// when the server exited first (the port was taken).
    fn launch(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e} (scripts/test installs it)"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_cmd(&["PING"]).as_deref() != Some("PONG") {
            if self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server at once (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.launch(),
            "redis-server did not start again on its port"
        );
    }

    /// Runs one command and renders the reply: strings as they are, integers in decimal,
    /// nil as `(nil)`, arrays one element per line.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).expect("redis command")
    }

    fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        read_reply(&mut r)
    }
}

fn read_reply(r: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => Some(rest.to_string()),
        "-" => Some(format!("ERR {rest}")),
        "$" => {
            let n: i64 = rest.parse().ok()?;
            if n < 0 {
                return Some("(nil)".into());
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).ok()?;
            buf.truncate(n as usize);
            String::from_utf8(buf).ok()
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(r)?);
            }
            Some(items.join("\n"))
        }
        _ => None,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
