//! Offline push (SPEC §13.11): message entries for a user with no connection become push
//! notifications to the devices the user registered, through the providers the operator
//! configured (APNs, FCM, a webhook). Who is offline is known where the connections are: with
//! one gateway its hub reports such entries ([`OfflineNotifier`] is its offline sink); in a
//! cluster the logic tier hands every new message entry over ([`NotifyingLogic`]) and the
//! worker asks the presence registry. The worker then looks up the user's registrations and
//! mutes and hands the message to the [`PushDispatcher`], which folds, rate-limits and
//! delivers. Tokens a push service rejects for good are deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gateway::router::OfflineSink;
use im_presence::PresenceReader;
use im_protocol::pb;
use im_push::{
    ApnsConfig, ApnsProvider, DispatcherConfig, FcmConfig, FcmProvider, InvalidToken, Notification,
    Platform, PreviewPolicy, Providers, PushDispatcher, PushToken, WebhookConfig, WebhookProvider,
};
use logic::Logic;
use logic_api::{Caller, Effects, LogicApi, SendReply};
use timeline_store::TimelineStore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages waiting for their recipient's registrations to be looked up.
const LOOKUP_QUEUE: usize = 10_000;
/// Most queued messages whose recipients' presence is read in one registry round trip.
const LOOKUP_BATCH: usize = 256;

/// Where notifications go and how often.
#[derive(Clone, Debug, Default)]
pub struct PushSettings {
    /// The deployment's own push gateway: URL and HMAC secret.
    pub webhook: Option<(String, Vec<u8>)>,
    /// Apple's push service.
    pub apns: Option<ApnsConfig>,
    /// Firebase Cloud Messaging.
    pub fcm: Option<FcmConfig>,
    /// Folding, rate limits, retries.
    pub dispatcher: DispatcherConfig,
}

impl PushSettings {
    /// Whether any provider is configured (without one, nothing is looked up or sent).
    pub fn enabled(&self) -> bool {
        self.webhook.is_some() || self.apns.is_some() || self.fcm.is_some()
    }

    /// The providers, checked (keys readable, URLs usable).
    pub fn providers(&self) -> Result<Providers, im_push::ConfigError> {
        let mut providers = Providers::new();
        if let Some((url, secret)) = &self.webhook {
            let provider = WebhookProvider::new(WebhookConfig {
                url: url.clone(),
                secret: secret.clone(),
                timeout: Duration::from_secs(10),
            })?;
            providers = providers.with(Platform::Webhook, Arc::new(provider));
        }
        if let Some(apns) = &self.apns {
            providers = providers.with(Platform::Apns, Arc::new(ApnsProvider::new(apns.clone())?));
        }
        if let Some(fcm) = &self.fcm {
            providers = providers.with(Platform::Fcm, Arc::new(FcmProvider::new(fcm.clone())?));
        }
        Ok(providers)
    }
}

/// The hub's offline sink: queues each message for its recipient's lookup. Never waits; a full
/// queue drops (and counts) the notification, never the message.
#[derive(Debug)]
pub struct OfflineNotifier {
    lookups: mpsc::Sender<(String, pb::Message)>,
}

impl OfflineSink for OfflineNotifier {
    fn offline(&self, user: &str, entries: &[pb::InboxEntry]) {
        for entry in entries {
            let Some(pb::inbox_entry::Body::Message(message)) = &entry.body else {
                continue;
            };
            // Someone's own message reached their inbox for their other devices: nothing to
            // wake them for.
            if message.sender_user == user {
                continue;
            }
            if self
                .lookups
                .try_send((user.to_owned(), message.clone()))
                .is_err()
            {
                metrics::counter!("im_push_dropped_total", "reason" => "lookup_queue_full")
                    .increment(1);
            }
        }
    }
}

/// Starts the dispatcher and the lookup worker; the returned sink goes on the hub (one
/// gateway: `presence` is `None`, the hub knows who is offline) or behind the logic tier
/// ([`NotifyingLogic`], with the cluster's registry as `presence`).
pub fn start<S: TimelineStore>(
    settings: &PushSettings,
    logic: Arc<Logic<S>>,
    presence: Option<PresenceReader>,
    shutdown: CancellationToken,
) -> Result<(Arc<OfflineNotifier>, PushDispatcher), im_push::ConfigError> {
    let providers = settings.providers()?;
    let (dispatcher, invalid) =
        PushDispatcher::start(settings.dispatcher.clone(), providers, shutdown.clone());
    let (lookups, queue) = mpsc::channel(LOOKUP_QUEUE);
    tokio::spawn(look_up_and_notify(
        logic.clone(),
        dispatcher.clone(),
        presence,
        queue,
        shutdown,
    ));
    tokio::spawn(forget_invalid_tokens(logic, invalid));
    Ok((Arc::new(OfflineNotifier { lookups }), dispatcher))
}

async fn look_up_and_notify<S: TimelineStore>(
    logic: Arc<Logic<S>>,
    dispatcher: PushDispatcher,
    presence: Option<PresenceReader>,
    mut queue: mpsc::Receiver<(String, pb::Message)>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = queue.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        // Whatever else is queued goes with it: one registry round trip for the lot.
        let mut batch = vec![first];
        while batch.len() < LOOKUP_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let offline = match &presence {
            None => None,
            Some(presence) => {
                let mut users: Vec<String> = batch.iter().map(|(user, _)| user.clone()).collect();
                users.sort();
                users.dedup();
                match presence.offline(&users).await {
                    Ok(offline) => Some(offline.into_iter().collect::<HashSet<String>>()),
                    Err(e) => {
                        // Better no notification than one to a user who may be online.
                        tracing::warn!(error = %e, "presence unknown: no push notifications");
                        metrics::counter!("im_push_dropped_total", "reason" => "presence_unknown")
                            .increment(batch.len() as u64);
                        continue;
                    }
                }
            }
        };
        for (user, message) in batch {
            if offline
                .as_ref()
                .is_some_and(|offline| !offline.contains(&user))
            {
                continue;
            }
            notify(&logic, &dispatcher, user, message).await;
        }
    }
}

/// Looks up `user`'s registrations for `message`'s conversation and hands the notification to
/// the dispatcher.
async fn notify<S: TimelineStore>(
    logic: &Logic<S>,
    dispatcher: &PushDispatcher,
    user: String,
    message: pb::Message,
) {
    let targets = match logic.push_targets(&user, &message.conversation_id).await {
        Ok(targets) => targets,
        Err(e) => {
            tracing::warn!(%user, code = e.code, "push registrations could not be read");
            metrics::counter!("im_push_dropped_total", "reason" => "lookup_failed").increment(1);
            return;
        }
    };
    // One notification per preview policy: each device shows what its user allowed.
    for policy in [
        PreviewPolicy::None,
        PreviewPolicy::SenderOnly,
        PreviewPolicy::Full,
    ] {
        let tokens: Vec<PushToken> = targets
            .iter()
            .filter(|t| preview_of(t.preview) == policy)
            .filter_map(|t| {
                Some(PushToken {
                    platform: platform_of(t.service)?,
                    token: t.token.clone(),
                    device: t.device.clone(),
                })
            })
            .collect();
        if tokens.is_empty() {
            continue;
        }
        dispatcher.notify(
            Notification {
                user: user.clone(),
                conversation_id: message.conversation_id.clone(),
                sender_user: message.sender_user.clone(),
                sender_name: None,
                content_type: message.content_type,
                content: message.content.clone(),
                server_msg_id: message.server_msg_id,
                conversation_seq: message.conversation_seq,
                unread: None,
            },
            tokens,
            policy,
        );
    }
}

async fn forget_invalid_tokens<S: TimelineStore>(
    logic: Arc<Logic<S>>,
    mut invalid: mpsc::Receiver<InvalidToken>,
) {
    while let Some(rejected) = invalid.recv().await {
        let InvalidToken {
            user,
            token,
            reason,
        } = rejected;
        match logic
            .forget_push_token(&user, &token.device, &token.token)
            .await
        {
            Ok(removed) => tracing::info!(
                %user,
                device = %token.device,
                platform = token.platform.as_str(),
                %reason,
                removed,
                "push token rejected by its service"
            ),
            Err(e) => {
                tracing::warn!(%user, code = e.code, "an invalid push token could not be removed")
            }
        }
    }
}

fn preview_of(preview: pb::PushPreview) -> PreviewPolicy {
    match preview {
        pb::PushPreview::None => PreviewPolicy::None,
        pb::PushPreview::Sender => PreviewPolicy::SenderOnly,
        pb::PushPreview::Full => PreviewPolicy::Full,
    }
}

fn platform_of(service: pb::PushService) -> Option<Platform> {
    match service {
        pb::PushService::Apns => Some(Platform::Apns),
        pb::PushService::Fcm => Some(Platform::Fcm),
        pb::PushService::Webhook => Some(Platform::Webhook),
        pb::PushService::Unspecified => None,
    }
}

/// The logic tier, handing every message entry a send appended to the offline notifier, which
/// asks the presence registry whether its user is connected anywhere: offline push where the
/// connections are on other processes (a logic node, or one of several gateways).
pub struct NotifyingLogic<L> {
    inner: L,
    notifier: Option<Arc<OfflineNotifier>>,
}

impl<L> NotifyingLogic<L> {
    /// `inner`, reporting to `notifier` when there is one.
    pub fn new(inner: L, notifier: Option<Arc<OfflineNotifier>>) -> NotifyingLogic<L> {
        NotifyingLogic { inner, notifier }
    }
}

impl<L: LogicApi> LogicApi for NotifyingLogic<L> {
    fn open_session(
        &self,
        caller: &Caller,
    ) -> impl std::future::Future<Output = Result<logic_api::SessionInfo, pb::Error>> + Send {
        self.inner.open_session(caller)
    }

    async fn send_batch(
        &self,
        caller: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> (Vec<SendReply>, Effects) {
        let (replies, effects) = self.inner.send_batch(caller, requests).await;
        if let Some(notifier) = &self.notifier {
            for delivery in &effects.deliveries {
                notifier.offline(&delivery.user, std::slice::from_ref(&delivery.entry));
            }
        }
        (replies, effects)
    }

    fn handle(
        &self,
        caller: &Caller,
        body: im_protocol::Body,
    ) -> impl std::future::Future<Output = (logic_api::Reply, Effects)> + Send {
        self.inner.handle(caller, body)
    }
}
