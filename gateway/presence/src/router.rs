//! [`ClusterRouter`]: the push router of one gateway in a cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::{Pool, Runtime};
use futures::StreamExt as _;
use gateway::hub::Hub;
use gateway::router::{Origin, PushRouter};
use im_protocol::{Frame, pb};
use logic_api::Delivery;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::{self, Carried, GatewayMessage};

/// Where and how a gateway registers.
#[derive(Clone, Debug)]
pub struct PresenceOptions {
    /// `redis://host:port/`.
    pub redis_url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// This gateway's id: unique per process (a restarted gateway takes a new one).
    pub gateway_id: String,
    /// How long a gateway's lease lasts without renewal: a gateway silent this long is dead.
    pub lease: Duration,
    /// How often the lease is renewed (well under `lease`).
    pub renew_every: Duration,
    /// Pushes queued for other gateways before new ones are dropped (the devices then get
    /// them on their next sync).
    pub queue: usize,
    /// Deadline of one Redis command.
    pub command_timeout: Duration,
}

impl PresenceOptions {
    /// Defaults for `redis_url` and `gateway_id`: prefix `im`, a 10 s lease renewed every 2 s.
    pub fn new(redis_url: impl Into<String>, gateway_id: impl Into<String>) -> PresenceOptions {
        PresenceOptions {
            redis_url: redis_url.into(),
            prefix: "im".into(),
            gateway_id: gateway_id.into(),
            lease: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            queue: 65_536,
            command_timeout: Duration::from_secs(1),
        }
    }
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The Redis URL is unusable.
    #[error("redis: {0}")]
    Redis(String),
}

/// Work for the publisher task.
enum Outgoing {
    Deliveries(Vec<Delivery>),
    Typing(Vec<String>, pb::TypingEvent),
    Offline(String, String),
}

/// Registers HSET device -> gateway and tells the device's previous gateway, if another, to
/// close it. Returns the previous gateway.
const CONNECT_SCRIPT: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old and old ~= ARGV[2] then
  redis.call('PUBLISH', ARGV[3] .. old, ARGV[4])
end
return old
";

/// Removes a device's entry only if it still names the given gateway.
const FORGET_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

/// The push router of one gateway among several: its own hub, plus Redis for the others.
pub struct ClusterRouter {
    hub: Arc<Hub>,
    options: PresenceOptions,
    pool: Pool,
    outgoing: mpsc::Sender<Outgoing>,
    /// Gateways whose lease was live at the last renewal.
    live: Mutex<HashSet<String>>,
    /// Since when Redis has kept our lease without a gap: entries naming gateways missing
    /// from `live` are removed only once this is older than two leases (right after a Redis
    /// restart every gateway is missing until it renews).
    stable_since: Mutex<Instant>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for ClusterRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRouter")
            .field("gateway_id", &self.options.gateway_id)
            .finish_non_exhaustive()
    }
}

impl ClusterRouter {
    /// Starts the router of the gateway whose hub is `hub`: the lease, the publisher and the
    /// subscriber run until `shutdown`, and then the gateway's lease and devices are removed.
    /// Starts even when Redis is down (it keeps trying).
    pub fn start(
        hub: Arc<Hub>,
        options: PresenceOptions,
        shutdown: CancellationToken,
    ) -> Result<Arc<ClusterRouter>, PresenceError> {
        let pool = deadpool_redis::Config::from_url(options.redis_url.clone())
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| PresenceError::Redis(e.to_string()))?;
        let client = redis::Client::open(options.redis_url.clone())
            .map_err(|e| PresenceError::Redis(e.to_string()))?;
        let (outgoing, queued) = mpsc::channel(options.queue.max(1));
        let router = Arc::new(ClusterRouter {
            hub,
            options,
            pool,
            outgoing,
            live: Mutex::new(HashSet::new()),
            stable_since: Mutex::new(Instant::now()),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(router.clone().publish_loop(queued));
        tokio::spawn(router.clone().subscribe_loop(client, shutdown.clone()));
        tokio::spawn(router.clone().lease_loop(shutdown));
        Ok(router)
    }

    /// The devices of `user` connected to any gateway, with the gateway holding each, sorted
    /// by device.
    pub async fn devices_of(&self, user: &str) -> Result<Vec<(String, String)>, String> {
        let mut connection = self.connection().await?;
        let found: HashMap<String, String> = self
            .run(
                "presence lookup",
                redis::cmd("HGETALL")
                    .arg(self.key_online(user))
                    .query_async(&mut connection),
            )
            .await?;
        let mut devices: Vec<(String, String)> = found.into_iter().collect();
        devices.sort();
        Ok(devices)
    }

    /// Closes the connections of `user` (one device, or all) wherever they are, each told
    /// `reason`: here directly, on other gateways through their channels. Returns how many
    /// devices were told to go.
    pub async fn kick_everywhere(
        &self,
        user: &str,
        device: Option<&str>,
        reason: pb::KickReason,
    ) -> Result<usize, String> {
        let devices = self.devices_of(user).await?;
        let me = self.options.gateway_id.as_str();
        let mut gateways: Vec<&str> = devices
            .iter()
            .filter(|(d, gateway)| device.is_none_or(|wanted| d == wanted) && gateway != me)
            .map(|(_, gateway)| gateway.as_str())
            .collect();
        gateways.sort_unstable();
        gateways.dedup();
        let frame = Frame::push(pb::Kick {
            reason: reason as i32,
            message: "kicked by the operator".into(),
            redirect_addr: String::new(),
            retry_after_ms: 0,
        });
        let mut kicked = self.hub.kick_user(user, device, &frame);
        if !gateways.is_empty() {
            let message = GatewayMessage {
                carried: Some(Carried::Kick(wire::Kick {
                    user: user.to_owned(),
                    device: device.unwrap_or_default().to_owned(),
                    reason: reason as i32,
                })),
            }
            .encode_to_vec();
            let mut commands = redis::pipe();
            for gateway in &gateways {
                commands
                    .cmd("PUBLISH")
                    .arg(self.channel(gateway))
                    .arg(message.clone())
                    .ignore();
            }
            let mut connection = self.connection().await?;
            self.run::<()>("kick", commands.query_async(&mut connection))
                .await?;
            kicked += devices
                .iter()
                .filter(|(d, gateway)| device.is_none_or(|wanted| d == wanted) && gateway != me)
                .count();
        }
        Ok(kicked)
    }

    /// Pushes for other gateways dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn key_online(&self, user: &str) -> String {
        format!("{}:online:{user}", self.options.prefix)
    }

    fn channel_prefix(&self) -> String {
        format!("{}:push:", self.options.prefix)
    }

    fn channel(&self, gateway: &str) -> String {
        format!("{}{gateway}", self.channel_prefix())
    }

    fn enqueue(&self, item: Outgoing) {
        if self.outgoing.try_send(item).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "push queue to other gateways full; devices will sync instead"
                );
            }
        }
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, String> {
        match tokio::time::timeout(self.options.command_timeout, self.pool.get()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out getting a Redis connection".into()),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.options.command_timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: timed out")),
        }
    }

    // ----- publisher -----

    async fn publish_loop(self: Arc<Self>, mut queued: mpsc::Receiver<Outgoing>) {
        while let Some(first) = queued.recv().await {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match queued.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            if let Err(error) = self.publish(batch).await {
                tracing::warn!(%error, "pushes to other gateways lost; devices will sync instead");
            }
        }
    }

    async fn publish(&self, batch: Vec<Outgoing>) -> Result<(), String> {
        let mut users: Vec<String> = Vec::new();
        for item in &batch {
            match item {
                Outgoing::Deliveries(deliveries) => {
                    users.extend(deliveries.iter().map(|d| d.user.clone()));
                }
                Outgoing::Typing(recipients, _) => users.extend(recipients.iter().cloned()),
                Outgoing::Offline(..) => {}
            }
        }
        users.sort_unstable();
        users.dedup();
        let mut connection = self.connection().await?;
        let mut where_online: HashMap<String, HashMap<String, String>> = HashMap::new();
        if !users.is_empty() {
            let mut lookup = redis::pipe();
            for user in &users {
                lookup.cmd("HGETALL").arg(self.key_online(user));
            }
            let found: Vec<HashMap<String, String>> = self
                .run("presence lookup", lookup.query_async(&mut connection))
                .await?;
            where_online = users.into_iter().zip(found).collect();
        }
        let me = self.options.gateway_id.as_str();
        let gateways_of = |user: &str| -> Vec<String> {
            let mut gateways: Vec<String> = where_online
                .get(user)
                .map(|devices| devices.values().filter(|g| *g != me).cloned().collect())
                .unwrap_or_default();
            gateways.sort();
            gateways.dedup();
            gateways
        };
        // Per gateway, its messages in order.
        let mut messages: BTreeMap<String, Vec<GatewayMessage>> = BTreeMap::new();
        let mut commands = redis::pipe();
        for item in batch {
            match item {
                Outgoing::Deliveries(deliveries) => {
                    let mut per_gateway: BTreeMap<String, Vec<wire::Delivery>> = BTreeMap::new();
                    for delivery in deliveries {
                        for gateway in gateways_of(&delivery.user) {
                            per_gateway
                                .entry(gateway)
                                .or_default()
                                .push(wire::Delivery {
                                    user: delivery.user.clone(),
                                    entry: Some(delivery.entry.clone()),
                                });
                        }
                    }
                    for (gateway, deliveries) in per_gateway {
                        messages.entry(gateway).or_default().push(GatewayMessage {
                            carried: Some(Carried::Deliveries(wire::Deliveries { deliveries })),
                        });
                    }
                }
                Outgoing::Typing(recipients, event) => {
                    let mut per_gateway: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for user in recipients {
                        for gateway in gateways_of(&user) {
                            per_gateway.entry(gateway).or_default().push(user.clone());
                        }
                    }
                    for (gateway, recipients) in per_gateway {
                        messages.entry(gateway).or_default().push(GatewayMessage {
                            carried: Some(Carried::Typing(wire::Typing {
                                recipients,
                                event: Some(event.clone()),
                            })),
                        });
                    }
                }
                Outgoing::Offline(user, device) => {
                    commands
                        .cmd("EVAL")
                        .arg(FORGET_SCRIPT)
                        .arg(1)
                        .arg(self.key_online(&user))
                        .arg(device)
                        .arg(me)
                        .ignore();
                }
            }
        }
        for (gateway, messages) in messages {
            for message in messages {
                commands
                    .cmd("PUBLISH")
                    .arg(self.channel(&gateway))
                    .arg(message.encode_to_vec())
                    .ignore();
            }
        }
        // Entries naming gateways whose lease ran out: remove them (only the ones still naming
        // that gateway), once the live set can be trusted.
        if self.live_set_is_settled() {
            let live = self
                .live
                .lock()
                .map(|live| live.clone())
                .unwrap_or_default();
            for (user, devices) in &where_online {
                for (device, gateway) in devices {
                    if gateway != me && !live.contains(gateway) {
                        commands
                            .cmd("EVAL")
                            .arg(FORGET_SCRIPT)
                            .arg(1)
                            .arg(self.key_online(user))
                            .arg(device)
                            .arg(gateway)
                            .ignore();
                    }
                }
            }
        }
        self.run::<()>("publish", commands.query_async(&mut connection))
            .await
    }

    fn live_set_is_settled(&self) -> bool {
        self.stable_since
            .lock()
            .map(|since| since.elapsed() > self.options.lease * 2)
            .unwrap_or(false)
    }

    // ----- subscriber -----

    async fn subscribe_loop(self: Arc<Self>, client: redis::Client, shutdown: CancellationToken) {
        let channel = self.channel(&self.options.gateway_id);
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        let mut messages = pubsub.into_on_message();
                        loop {
                            let message = tokio::select! {
                                () = shutdown.cancelled() => return,
                                message = messages.next() => message,
                            };
                            let Some(message) = message else { break };
                            self.receive(message.get_payload_bytes());
                        }
                        tracing::warn!("lost the Redis subscription; resubscribing");
                    }
                    Err(error) => tracing::warn!(%error, "cannot subscribe to Redis"),
                },
                Err(error) => tracing::warn!(%error, "cannot reach Redis for pushes"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// A message from another gateway.
    fn receive(&self, payload: &[u8]) {
        let Ok(message) = GatewayMessage::decode(payload) else {
            tracing::warn!("a message on this gateway's channel does not decode; ignored");
            return;
        };
        match message.carried {
            Some(Carried::Deliveries(deliveries)) => {
                let deliveries = deliveries
                    .deliveries
                    .into_iter()
                    .filter_map(|d| {
                        Some(Delivery {
                            user: d.user,
                            entry: d.entry?,
                        })
                    })
                    .collect();
                self.hub.deliver(deliveries);
            }
            Some(Carried::Typing(typing)) => {
                if let Some(event) = typing.event {
                    self.hub.relay_typing(&typing.recipients, &event);
                }
            }
            Some(Carried::Kick(kick)) if kick.reason != 0 => {
                // An operator's kick from another gateway's admin API.
                let frame = Frame::push(pb::Kick {
                    reason: kick.reason,
                    message: "kicked by the operator".into(),
                    redirect_addr: String::new(),
                    retry_after_ms: 0,
                });
                let device = (!kick.device.is_empty()).then_some(kick.device.as_str());
                self.hub.kick_user(&kick.user, device, &frame);
            }
            Some(Carried::Kick(kick)) => {
                let frame = Frame::push(pb::Kick {
                    reason: pb::KickReason::LoggedInElsewhere as i32,
                    message: format!("device {} connected on another server", kick.device),
                    redirect_addr: String::new(),
                    retry_after_ms: 0,
                });
                self.hub.kick_device(&kick.user, &kick.device, &frame);
            }
            None => {}
        }
    }

    // ----- lease -----

    async fn lease_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.options.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.renew().await {
                tracing::warn!(%error, "cannot renew this gateway's lease in Redis");
                if let Ok(mut since) = self.stable_since.lock() {
                    *since = Instant::now();
                }
            }
        }
        if let Err(error) = self.withdraw().await {
            tracing::warn!(%error, "cannot remove this gateway from Redis on shutdown");
        }
    }

    async fn renew(&self) -> Result<(), String> {
        let mut connection = self.connection().await?;
        let me = &self.options.gateway_id;
        let prefix = &self.options.prefix;
        let lease_ms = u64::try_from(self.options.lease.as_millis()).unwrap_or(u64::MAX);
        let previous: Option<String> = self
            .run(
                "lease",
                redis::cmd("SET")
                    .arg(format!("{prefix}:lease:{me}"))
                    .arg(1)
                    .arg("PX")
                    .arg(lease_ms)
                    .arg("GET")
                    .query_async(&mut connection),
            )
            .await?;
        if previous.is_none() {
            // First renewal, or Redis lost its data (restarted empty): write every device
            // connected here again, and trust no live set for a while.
            if let Ok(mut since) = self.stable_since.lock() {
                *since = Instant::now();
            }
            let devices = self.hub.online_devices();
            if !devices.is_empty() {
                let mut rewrite = redis::pipe();
                for (user, device) in &devices {
                    rewrite
                        .cmd("HSET")
                        .arg(self.key_online(user))
                        .arg(device)
                        .arg(me)
                        .ignore();
                }
                self.run::<()>("presence rewrite", rewrite.query_async(&mut connection))
                    .await?;
                tracing::info!(devices = devices.len(), "presence written to Redis again");
            }
        }
        let (seconds, micros): (u64, u64) = self
            .run("time", redis::cmd("TIME").query_async(&mut connection))
            .await?;
        let now_ms = seconds * 1000 + micros / 1000;
        let set = format!("{prefix}:gateways");
        let (live,): (Vec<String>,) = self
            .run(
                "gateways",
                redis::pipe()
                    .cmd("ZADD")
                    .arg(&set)
                    .arg(now_ms + lease_ms)
                    .arg(me)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&set)
                    .arg("-inf")
                    .arg(now_ms)
                    .ignore()
                    .cmd("ZRANGE")
                    .arg(&set)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut connection),
            )
            .await?;
        if let Ok(mut known) = self.live.lock() {
            *known = live.into_iter().collect();
        }
        Ok(())
    }

    /// On shutdown: this gateway's lease and devices go.
    async fn withdraw(&self) -> Result<(), String> {
        let mut connection = self.connection().await?;
        let me = &self.options.gateway_id;
        let prefix = &self.options.prefix;
        let mut commands = redis::pipe();
        commands
            .cmd("ZREM")
            .arg(format!("{prefix}:gateways"))
            .arg(me)
            .ignore()
            .cmd("DEL")
            .arg(format!("{prefix}:lease:{me}"))
            .ignore();
        for (user, device) in self.hub.online_devices() {
            commands
                .cmd("EVAL")
                .arg(FORGET_SCRIPT)
                .arg(1)
                .arg(self.key_online(&user))
                .arg(device)
                .arg(me)
                .ignore();
        }
        self.run::<()>("withdraw", commands.query_async(&mut connection))
            .await
    }
}

impl PushRouter for ClusterRouter {
    fn deliver(&self, deliveries: Vec<Delivery>, origin: Option<Origin<'_>>) {
        if deliveries.is_empty() {
            return;
        }
        self.hub
            .deliver_except(deliveries.clone(), origin.map(|o| (o.user, o.conn_id)));
        self.enqueue(Outgoing::Deliveries(deliveries));
    }

    fn relay_typing(&self, recipients: &[String], event: &pb::TypingEvent) {
        self.hub.relay_typing(recipients, event);
        self.enqueue(Outgoing::Typing(recipients.to_vec(), event.clone()));
    }

    fn connected<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let kick = GatewayMessage {
                carried: Some(Carried::Kick(wire::Kick {
                    user: user.to_owned(),
                    device: device.to_owned(),
                    reason: 0,
                })),
            };
            let registered = async {
                let mut connection = self.connection().await?;
                self.run::<Option<String>>(
                    "presence",
                    redis::cmd("EVAL")
                        .arg(CONNECT_SCRIPT)
                        .arg(1)
                        .arg(self.key_online(user))
                        .arg(device)
                        .arg(&self.options.gateway_id)
                        .arg(self.channel_prefix())
                        .arg(kick.encode_to_vec())
                        .query_async(&mut connection),
                )
                .await
            };
            if let Err(error) = registered.await {
                // The session still opens; pushes from other gateways miss this device until
                // the lease renewal writes it (the device syncs on its next gap or reconnect).
                tracing::warn!(%error, user, device, "cannot register the device in Redis");
            }
        })
    }

    fn disconnected(&self, user: &str, device: &str) {
        self.enqueue(Outgoing::Offline(user.to_owned(), device.to_owned()));
    }
}
