//! The shared store (Redis) for API keys, revocations and bans. Connects in the background and
//! reconnects on its own; every command is bounded by the configured timeout, and a store that
//! cannot answer is reported as such (each caller fails in its documented direction).

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

pub struct Store {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    pub timeout: Duration,
    pub prefix: String,
    pub url_redacted: String,
}

impl Store {
    /// A store at `url` (nothing is connected yet), every key starting with `prefix`.
    pub fn new(url: &str, timeout: Duration, prefix: &str) -> Result<Store, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis: {e}"))?;
        let url_redacted = match url.rsplit_once('@') {
            Some((_, host)) => format!("redis://…@{host}"),
            None => url.to_string(),
        };
        Ok(Store {
            client,
            conn: OnceCell::new(),
            timeout,
            prefix: prefix.to_string(),
            url_redacted,
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                tokio::time::timeout(
                    self.timeout.max(Duration::from_millis(500)),
                    ConnectionManager::new_with_config(self.client.clone(), cfg),
                )
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
