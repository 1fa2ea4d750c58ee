//! A real Redis Cluster of three masters (no replicas) on free loopback ports, built with the
//! OS packages' `redis-server --cluster-enabled yes` and `redis-cli --cluster create`. Ready
//! when every node reports `cluster_state:ok` and knows the other two; killed (all three
//! processes) on drop. Persistence is off and each node keeps its `nodes.conf` in a temporary
//! folder, so nothing outlives the test.
//!
//! The cluster bus port of each node is chosen free as well (`--cluster-port`), instead of the
//! default `port + 10000`, which can fall outside the port range or be taken.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

struct Node {
    port: u16,
    child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisCluster {
    /// Starts three masters and joins them; panics if the cluster is not `ok` within 30 s.
    /// The ports picked are released before the servers bind them, so another test may take
    /// one meanwhile: every node answering must be one started here (its directory), or all
    /// three are stopped and other ports tried.
    pub fn start() -> RedisCluster {
        for _ in 0..10 {
            if let Some(cluster) = Self::launch() {
                return cluster.join();
            }
        }
        panic!("no redis cluster of this test's own could be started");
    }

    /// Three fresh nodes on free ports, each answering PING and known to be ours; `None` when
    /// a port was taken (the node exited, or another server answers there).
    fn launch() -> Option<RedisCluster> {
        let dir = tempfile::tempdir().unwrap();
        let own_dir = dir.path().to_string_lossy().into_owned();
        // Pick all six ports first, while the probes are closed, then launch.
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut nodes = Vec::new();
        for i in 0..3 {
            let (port, bus) = (ports[2 * i], ports[2 * i + 1]);
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "5000"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("redis-server: {e} (scripts/test installs it)"));
            nodes.push(Node { port, child });
        }
        // Dropped on a `None`: its nodes are killed.
        let mut cluster = RedisCluster { nodes, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &mut cluster.nodes {
            while cli(n.port, &["PING"]).as_deref() != Some("PONG") {
                if n.child.try_wait().ok().flatten().is_some() {
                    return None;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not answer PING"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let dir = cli(n.port, &["CONFIG", "GET", "dir"]).unwrap_or_default();
            if dir.lines().nth(1) != Some(own_dir.as_str()) {
                return None;
            }
        }
        Some(cluster)
    }

    /// Joins the three nodes into one cluster and waits until each says it is `ok`.
    fn join(self) -> RedisCluster {
        let cluster = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("redis-cli: {e} (scripts/test installs redis-server)"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for n in &cluster.nodes {
            loop {
                let info = cli(n.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster not ok on {}: {info}",
                    n.port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// The masters' client ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// One `redis://` URL per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// The nodes' URLs joined with commas (a seed list).
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    /// Runs one command with `redis-cli -p PORT` on the node at `index` (0..3) and returns its
    /// output, trimmed (arrays one element per line, as `redis-cli` prints them unformatted).
    pub fn cmd(&self, index: usize, args: &[&str]) -> String {
        cli(self.nodes[index].port, args).expect("redis-cli")
    }

    /// Runs one command on every node; the outputs in node order.
    pub fn cmd_all(&self, args: &[&str]) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.cmd(i, args)).collect()
    }

    /// The hash slot Redis assigns to `key` (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        self.cmd(0, &["CLUSTER", "KEYSLOT", key]).parse().unwrap()
    }

    /// The index of the node serving `key`'s slot, read from node 0's `CLUSTER NODES`.
    pub fn node_of(&self, key: &str) -> usize {
        let slot = self.keyslot(key);
        let nodes = self.cmd(0, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 {
                continue;
            }
            let port: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let serves = fields[8..].iter().any(|range| {
                let mut it = range.split('-');
                match (
                    it.next().and_then(|a| a.parse::<u16>().ok()),
                    it.next().and_then(|b| b.parse::<u16>().ok()),
                ) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no node serves slot {slot}:\n{nodes}")
    }
}

/// `redis-cli -p PORT ARGS…`; `None` when it cannot run or connect.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.starts_with("Could not connect") {
        return None;
    }
    Some(text)
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}
