//! The shared store (Redis) for API keys, revocations and bans. Connects in the background and
//! reconnects on its own; every command is bounded by the configured timeout, and a store that
//! cannot answer is reported as such (each caller fails in its documented direction).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use portcullis_core::{ConfigErrors, RawSecretOrString, UrlText, redact_url};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

pub struct Store {
    client: Client,
    conn: OnceCell<Conn>,
    pub timeout: Duration,
    pub prefix: String,
    pub url_redacted: String,
}

// One per store, made once per configuration: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// A connection to one server or to a cluster; both reconnect on their own. Every command
/// the store sends names one key, so a cluster routes each to its slot's node.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a shared Redis store is: one server, or seed nodes of a Redis Cluster. Compiled from
/// a section's `url` (a string or a secret), `cluster` and `cluster_nodes`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RedisTarget {
    /// `url` first, then `cluster_nodes`.
    pub urls: Vec<String>,
    pub cluster: bool,
}

/// Shown with the URLs' passwords hidden.
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<_> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("RedisTarget")
            .field("urls", &urls)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl RedisTarget {
    /// Checks each URL (`redis://` or `rediss://`), that more nodes come with `cluster`, and
    /// that the client takes them (a cluster's seeds with different passwords …); errors at
    /// `path.url`, `path.cluster_nodes[i]`.
    pub fn compile(
        url: &RawSecretOrString,
        cluster: bool,
        nodes: &[UrlText],
        path: &str,
        base: &Path,
        e: &mut ConfigErrors,
    ) -> RedisTarget {
        let errors = e.len();
        let is_redis = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
        // A secret that cannot be read is reported as such, not as a bad URL too.
        let first = url.resolve(&format!("{path}.url"), base, e);
        if first.as_deref().is_some_and(|u| !is_redis(u)) {
            e.push(format!("{path}.url"), "a redis:// or rediss:// URL");
        }
        if !cluster && !nodes.is_empty() {
            e.push(
                format!("{path}.cluster_nodes"),
                "more nodes need `cluster: true`",
            );
        }
        for (i, n) in nodes.iter().enumerate() {
            if !is_redis(n.as_str()) {
                e.push(
                    format!("{path}.cluster_nodes[{i}]"),
                    "a redis:// or rediss:// URL",
                );
            }
        }
        let mut urls = vec![first.unwrap_or_default()];
        urls.extend(nodes.iter().map(|n| n.0.clone()));
        if e.len() == errors
            && let Err(m) = Store::check(&urls, cluster)
        {
            e.push(format!("{path}.url"), m);
        }
        RedisTarget { urls, cluster }
    }
}

impl Store {
    /// A store at `urls` (nothing is connected yet), every key starting with `prefix`: one
    /// server's URL, or with `cluster` one or more seed nodes of a Redis Cluster.
    pub fn new(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Store, String> {
        let url_redacted = urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        let client = match (cluster, urls) {
            (_, []) => return Err("redis: no URL".into()),
            (false, [url]) => Client::Single(
                redis::Client::open(url.as_str()).map_err(|e| format!("redis: {e}"))?,
            ),
            (false, _) => return Err("redis: several URLs need `cluster: true`".into()),
            (true, urls) => Client::Cluster(
                ClusterClientBuilder::new(urls.to_vec())
                    .connection_timeout(timeout.max(Duration::from_millis(500)))
                    .response_timeout(timeout)
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| format!("redis cluster: {e}"))?,
            ),
        };
        Ok(Store {
            client,
            conn: OnceCell::new(),
            timeout,
            prefix: prefix.to_string(),
            url_redacted,
        })
    }

    /// Whether a store can be made of `urls` (nothing is connected): for configuration
    /// checks, so that what a client refuses (a cluster's seeds with different passwords, a
    /// URL it cannot read) is refused with the rest of the configuration.
    fn check(urls: &[String], cluster: bool) -> Result<(), String> {
        Store::new(urls, cluster, Duration::from_secs(1), "").map(drop)
    }

    async fn conn(&self) -> Result<Conn, String> {
        let connect_timeout = self.timeout.max(Duration::from_millis(500));
        let c = self
            .conn
            .get_or_try_init(|| async {
                let connecting = async {
                    match &self.client {
                        Client::Single(client) => {
                            let cfg = redis::aio::ConnectionManagerConfig::new()
                                .set_connection_timeout(Some(connect_timeout))
                                .set_response_timeout(Some(self.timeout))
                                .set_number_of_retries(1);
                            ConnectionManager::new_with_config(client.clone(), cfg)
                                .await
                                .map(Conn::Single)
                        }
                        Client::Cluster(client) => {
                            client.get_async_connection().await.map(Conn::Cluster)
                        }
                    }
                };
                tokio::time::timeout(connect_timeout, connecting)
                    .await
                    .map_err(|_| "redis: connect timed out".to_string())?
                    .map_err(|e| format!("redis: {e}"))
            })
            .await?;
        Ok(c.clone())
    }

    async fn bounded<T, F>(&self, f: F) -> Result<T, String>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Err(_) => Err("redis: timed out".into()),
        }
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, String> {
        let mut c = self.conn().await?;
        self.bounded(c.hgetall(key)).await
    }

    pub async fn smembers(&self, key: &str) -> Result<Vec<String>, String> {
        let mut c = self.conn().await?;
        self.bounded(c.smembers(key)).await
    }

    pub async fn sadd(&self, key: &str, member: &str) -> Result<(), String> {
        let mut c = self.conn().await?;
        self.bounded(c.sadd::<_, _, ()>(key, member)).await
    }

    /// Adds `member` to the sorted set `key` with `score`, keeping the larger score when it
    /// is there already (`ZADD GT`).
    pub async fn zadd_gt(&self, key: &str, member: &str, score: u64) -> Result<(), String> {
        let mut c = self.conn().await?;
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(key).arg("GT").arg(score).arg(member);
        self.bounded(cmd.query_async::<()>(&mut c)).await
    }

    /// The members of the sorted set `key` scored above `above`, with their scores; those at
    /// or below it are removed first (`ZREMRANGEBYSCORE`, then `ZRANGE … BYSCORE`).
    pub async fn zlive(&self, key: &str, above: u64) -> Result<Vec<(String, u64)>, String> {
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(above)
            .ignore()
            .cmd("ZRANGE")
            .arg(key)
            .arg(format!("({above}"))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES");
        let (live,): (Vec<(String, u64)>,) = self.bounded(pipe.query_async(&mut c)).await?;
        Ok(live)
    }

    /// [`Self::zadd_gt`] for many members at once (one command).
    pub async fn zadd_gt_many(&self, key: &str, members: &[(String, u64)]) -> Result<(), String> {
        if members.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(key).arg("GT");
        for (member, score) in members {
            cmd.arg(*score).arg(member);
        }
        self.bounded(cmd.query_async::<()>(&mut c)).await
    }

    /// Adds refusals to shared counts (hashes: address → count) in one script: for each
    /// `(address, n, reset)`, the address's count in `current` goes up by `n` — or, with
    /// `reset`, its counts in both windows are cleared — and when `previous × weight + current`
    /// reaches `count`, both are cleared and the address is returned. `current` expires after
    /// `ttl_ms`. Both keys must be on one cluster node (a shared hash tag).
    pub async fn count_refusals(
        &self,
        current: &str,
        previous: &str,
        ttl_ms: u64,
        weight: f64,
        count: u32,
        entries: &[(String, u32, bool)],
    ) -> Result<Vec<String>, String> {
        let mut c = self.conn().await?;
        let script = redis::Script::new(
            "local reached = {} \
             local weight, count = tonumber(ARGV[2]), tonumber(ARGV[3]) \
             for i = 4, #ARGV, 3 do \
               local a = ARGV[i] \
               if ARGV[i + 2] == '1' then \
                 redis.call('HDEL', KEYS[1], a) redis.call('HDEL', KEYS[2], a) \
               else \
                 local cur = redis.call('HINCRBY', KEYS[1], a, ARGV[i + 1]) \
                 local prev = tonumber(redis.call('HGET', KEYS[2], a) or '0') \
                 if prev * weight + cur >= count then \
                   redis.call('HDEL', KEYS[1], a) redis.call('HDEL', KEYS[2], a) \
                   reached[#reached + 1] = a \
                 end \
               end \
             end \
             redis.call('PEXPIRE', KEYS[1], ARGV[1]) \
             return reached",
        );
        let mut inv = script.key(current);
        inv.key(previous).arg(ttl_ms).arg(weight).arg(count);
        for (address, n, reset) in entries {
            inv.arg(address).arg(*n).arg(if *reset { "1" } else { "0" });
        }
        self.bounded(inv.invoke_async::<Vec<String>>(&mut c)).await
    }

    /// Removes from the sorted set `key` every member starting with `start` (one script, so
    /// a member added meanwhile by another instance is either seen or not, never half).
    pub async fn zrem_starting(&self, key: &str, start: &str) -> Result<(), String> {
        let mut c = self.conn().await?;
        let script = redis::Script::new(
            "local n = 0 \
             for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do \
               if string.sub(m, 1, #ARGV[1]) == ARGV[1] then \
                 redis.call('ZREM', KEYS[1], m) n = n + 1 \
               end \
             end \
             return n",
        );
        self.bounded(script.key(key).arg(start).invoke_async::<u64>(&mut c))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn urls(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_server_or_a_cluster_and_passwords_kept_out_of_sight() {
        let t = Duration::from_millis(100);
        let one = Store::new(&urls(&["redis://:hunter2@10.0.0.1:6379/0"]), false, t, "p:").unwrap();
        assert_eq!(one.url_redacted, "redis://:<redacted>@10.0.0.1:6379/0");
        assert_eq!(one.key("bans"), "p:bans");
        let seeds = urls(&["redis://u:pw@10.0.0.1:7000", "redis://u:pw@10.0.0.2:7000"]);
        let cluster = Store::new(&seeds, true, t, "p:").unwrap();
        assert_eq!(
            cluster.url_redacted,
            "redis://u:<redacted>@10.0.0.1:7000,redis://u:<redacted>@10.0.0.2:7000"
        );
        assert!(matches!(cluster.client, Client::Cluster(_)));
        let err = |r: Result<Store, String>| r.err().unwrap();
        assert!(err(Store::new(&seeds, false, t, "p:")).contains("cluster: true"));
        assert!(err(Store::new(&[], true, t, "p:")).contains("no URL"));
        let other_password = urls(&[
            "redis://u:pw@10.0.0.1:7000",
            "redis://u:other@10.0.0.2:7000",
        ]);
        assert!(Store::check(&other_password, true).is_err());
        assert!(Store::check(&seeds, true).is_ok());
        assert!(err(Store::new(&urls(&["http://10.0.0.1"]), false, t, "p:")).starts_with("redis"));
    }
}
