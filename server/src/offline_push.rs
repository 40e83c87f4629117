//! Offline push (SPEC §13.11): message entries for a user with no connection become push
//! notifications to the devices the user registered, through the providers the operator
//! configured (APNs, FCM, a webhook). Who is offline is known where the connections are: with
//! one gateway its hub reports such entries ([`OfflineNotifier`] is its offline sink); in a
//! cluster the logic tier hands every new message entry over ([`NotifyingLogic`]) and the
//! worker asks the presence registry. The worker then looks up the user's registrations and
//! mutes and hands the message to the [`PushDispatcher`], which folds, rate-limits and
//! delivers. Tokens a push service rejects for good are deleted.

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
        let (user, message) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = queue.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        if let Some(presence) = &presence {
            match presence.offline(std::slice::from_ref(&user)).await {
                Ok(offline) if offline.is_empty() => continue,
                Ok(_) => {}
                Err(e) => {
                    // Better no notification than one to a user who may be online.
                    tracing::warn!(%user, error = %e, "presence unknown: no push notification");
                    metrics::counter!("im_push_dropped_total", "reason" => "presence_unknown")
                        .increment(1);
                    continue;
                }
            }
        }
        let targets = match logic.push_targets(&user, &message.conversation_id).await {
            Ok(targets) => targets,
            Err(e) => {
                tracing::warn!(%user, code = e.code, "push registrations could not be read");
                metrics::counter!("im_push_dropped_total", "reason" => "lookup_failed")
                    .increment(1);
                continue;
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
