//! Who has a device connected anywhere in the cluster, read from the registry: for a process
//! that routes nothing but must know whether a user is reachable (a logic node deciding to
//! send a push notification).

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};

use crate::PresenceError;

/// Reads the presence registry the gateways write.
pub struct PresenceReader {
    pool: Pool,
    prefix: String,
    command_timeout: Duration,
}

impl std::fmt::Debug for PresenceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceReader")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl PresenceReader {
    /// A reader of the registry at `redis_url` under `prefix` (the gateways' `--redis-url` and
    /// prefix, `im` by default). Connects on first use.
    pub fn new(redis_url: &str, prefix: &str) -> Result<PresenceReader, PresenceError> {
        let pool = deadpool_redis::Config::from_url(redis_url.to_owned())
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| PresenceError::Redis(e.to_string()))?;
        Ok(PresenceReader {
            pool,
            prefix: prefix.to_owned(),
            command_timeout: Duration::from_secs(1),
        })
    }

    /// Those of `users` with no device registered on any gateway, in the order given. A
    /// device of a gateway that died counts as connected until the gateways clean its entry
    /// up (a lease or two): better a missed notification than one to a user who is online.
    pub async fn offline(&self, users: &[String]) -> Result<Vec<String>, String> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HLEN")
                .arg(format!("{}:online:{user}", self.prefix));
        }
        let lookup = async {
            let mut connection = self.pool.get().await.map_err(|e| e.to_string())?;
            pipe.query_async::<Vec<u64>>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        };
        let devices = tokio::time::timeout(self.command_timeout, lookup)
            .await
            .map_err(|_| "timed out reading presence".to_owned())??;
        Ok(users
            .iter()
            .zip(devices)
            .filter(|(_, devices)| *devices == 0)
            .map(|(user, _)| user.clone())
            .collect())
    }
}
