//! The dispatcher end to end: coalescing, rate limits, retries, invalid-token reports and
//! shutdown. Most tests use scripted in-process providers and tokio's paused clock, so windows
//! and backoffs take no real time and cannot be flaky; one drives a real webhook server.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use im_push::{
    Alert, BoxFuture, DispatcherConfig, InvalidToken, Platform, PreviewPolicy, Providers,
    PushDispatcher, PushOutcome, PushProvider, PushToken, WebhookConfig, WebhookProvider,
};
use support::{MockServer, Protocol, text_message, token};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// The script: `(token, how many times this token was sent to before) -> outcome`, where
/// `None` means the service never answers.
type Script = Box<dyn Fn(&PushToken, usize) -> Option<PushOutcome> + Send + Sync>;

/// A provider that records each call and answers from a script: `(token, how many times this
/// token was sent to before) -> outcome`.
struct ScriptedProvider {
    calls: Mutex<Vec<(Instant, Alert, PushToken)>>,
    script: Script,
}

impl ScriptedProvider {
    fn new(
        script: impl Fn(&PushToken, usize) -> Option<PushOutcome> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(ScriptedProvider {
            calls: Mutex::new(Vec::new()),
            script: Box::new(script),
        })
    }

    fn always_delivers() -> Arc<Self> {
        Self::new(|_, _| Some(PushOutcome::Delivered))
    }

    fn alerts(&self) -> Vec<Alert> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, alert, _)| alert.clone())
            .collect()
    }

    fn call_times(&self) -> Vec<Instant> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(at, _, _)| *at)
            .collect()
    }
}

impl PushProvider for ScriptedProvider {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn send<'a>(&'a self, alert: &'a Alert, token: &'a PushToken) -> BoxFuture<'a, PushOutcome> {
        let earlier = {
            let mut calls = self.calls.lock().unwrap();
            let earlier = calls
                .iter()
                .filter(|(_, _, sent_to)| sent_to == token)
                .count();
            calls.push((Instant::now(), alert.clone(), token.clone()));
            earlier
        };
        match (self.script)(token, earlier) {
            Some(outcome) => Box::pin(async move { outcome }),
            // None: the service never answers.
            None => Box::pin(std::future::pending()),
        }
    }
}

fn config() -> DispatcherConfig {
    DispatcherConfig {
        batch_window: Duration::from_secs(1),
        alerts_per_minute: 10,
        alert_burst: 3,
        retry_backoff: Duration::from_secs(1),
        ..DispatcherConfig::default()
    }
}

fn bobs_phones() -> Vec<PushToken> {
    vec![
        token(Platform::Apns, "a1a1", "iphone"),
        token(Platform::Fcm, "f1", "pixel"),
    ]
}

#[tokio::test(start_paused = true)]
async fn five_messages_within_the_window_become_one_alert_per_token_with_badge_5() {
    support::init_tracing();
    let (apns, fcm) = (
        ScriptedProvider::always_delivers(),
        ScriptedProvider::always_delivers(),
    );
    let providers = Providers::new()
        .with(Platform::Apns, apns.clone())
        .with(Platform::Fcm, fcm.clone());
    let (push, _invalid) = PushDispatcher::start(config(), providers, CancellationToken::new());

    for seq in 1..=5 {
        push.notify(
            text_message("bob", seq, &format!("message {seq}")),
            bobs_phones(),
            PreviewPolicy::Full,
        );
        sleep(Duration::from_millis(150)).await;
    }
    sleep(Duration::from_secs(5)).await;

    for provider in [&apns, &fcm] {
        let alerts = provider.alerts();
        assert_eq!(alerts.len(), 1, "one alert per token, got {alerts:?}");
        assert_eq!((alerts[0].badge, alerts[0].messages), (5, 5));
        assert_eq!(alerts[0].body, "message 5");
        assert_eq!(alerts[0].server_msg_id, 1005);
    }
    let stats = push.stats();
    assert_eq!(
        (
            stats.accepted,
            stats.coalesced,
            stats.alerts,
            stats.delivered
        ),
        (5, 4, 1, 2)
    );
    assert!(push.close(Duration::from_secs(10)).await);
}

#[tokio::test(start_paused = true)]
async fn alerts_past_the_burst_are_held_and_merged_into_the_next_allowed_one() {
    support::init_tracing();
    let phone = ScriptedProvider::always_delivers();
    let providers = Providers::new().with(Platform::Apns, phone.clone());
    let (push, _invalid) = PushDispatcher::start(config(), providers, CancellationToken::new());

    // Six messages 1.5 s apart: each would be its own alert without the rate limit.
    for seq in 1..=6 {
        push.notify(
            text_message("bob", seq, "hi"),
            vec![token(Platform::Apns, "a1a1", "iphone")],
            PreviewPolicy::None,
        );
        sleep(Duration::from_millis(1500)).await;
    }
    sleep(Duration::from_secs(60)).await;

    let alerts = phone.alerts();
    let per_alert: Vec<u32> = alerts.iter().map(|alert| alert.messages).collect();
    // The burst of 3 goes out as it comes; the 4th waits for the bucket and takes the 5th along.
    assert_eq!(per_alert, vec![1, 1, 1, 2, 1]);
    assert_eq!(
        per_alert.iter().sum::<u32>(),
        6,
        "every message is accounted for"
    );
    assert_eq!(alerts[3].body, "You have 2 new messages");
    let times = phone.call_times();
    // 10 per minute after the burst: the 4th alert comes a full 6 s after the first.
    assert!(
        times[3] - times[0] >= Duration::from_millis(5_900),
        "{:?}",
        times[3] - times[0]
    );
    assert!(
        times[4] - times[3] >= Duration::from_millis(5_900),
        "{:?}",
        times[4] - times[3]
    );
    let stats = push.stats();
    assert_eq!(stats.rate_limited, 2);
    assert_eq!(stats.coalesced, 1);
    assert_eq!(stats.dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_passing_failure_is_retried_with_backoff_until_delivered() {
    support::init_tracing();
    let flaky = ScriptedProvider::new(|_, earlier| {
        Some(match earlier {
            0 | 1 => PushOutcome::Retryable("503 ServiceUnavailable".into()),
            _ => PushOutcome::Delivered,
        })
    });
    let providers = Providers::new().with(Platform::Apns, flaky.clone());
    let (push, _invalid) = PushDispatcher::start(config(), providers, CancellationToken::new());
    push.notify(
        text_message("bob", 1, "hi"),
        vec![token(Platform::Apns, "a1a1", "iphone")],
        PreviewPolicy::None,
    );
    sleep(Duration::from_secs(30)).await;

    let stats = push.stats();
    assert_eq!(
        (
            stats.attempts,
            stats.retryable,
            stats.delivered,
            stats.dropped
        ),
        (3, 2, 1, 0)
    );
    let times = flaky.call_times();
    // Backoff of 1 s then 2 s, each shortened by at most half at random.
    assert!(times[1] - times[0] >= Duration::from_millis(500));
    assert!(times[2] - times[1] >= Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_the_last_attempt_and_the_loss_is_counted() {
    support::init_tracing();
    let down = ScriptedProvider::new(|_, _| Some(PushOutcome::Retryable("down".into())));
    let providers = Providers::new().with(Platform::Apns, down.clone());
    let config = DispatcherConfig {
        max_attempts: 3,
        ..config()
    };
    let (push, _invalid) = PushDispatcher::start(config, providers, CancellationToken::new());
    push.notify(
        text_message("bob", 1, "hi"),
        vec![token(Platform::Apns, "a1a1", "iphone")],
        PreviewPolicy::None,
    );
    sleep(Duration::from_secs(120)).await;
    let stats = push.stats();
    assert_eq!((stats.attempts, stats.delivered, stats.dropped), (3, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn tokens_the_service_rejects_are_reported_for_deletion() {
    support::init_tracing();
    let apns = ScriptedProvider::new(|token, _| {
        Some(match token.token.as_str() {
            "dead" => PushOutcome::TokenInvalid("410 Unregistered".into()),
            _ => PushOutcome::Delivered,
        })
    });
    let providers = Providers::new().with(Platform::Apns, apns.clone());
    let (push, mut invalid) = PushDispatcher::start(config(), providers, CancellationToken::new());
    let tokens = vec![
        token(Platform::Apns, "a1a1", "new-iphone"),
        token(Platform::Apns, "dead", "old-iphone"),
    ];
    push.notify(text_message("bob", 1, "hi"), tokens, PreviewPolicy::None);

    let report = tokio::time::timeout(Duration::from_secs(30), invalid.recv())
        .await
        .expect("reported within the window")
        .expect("channel open");
    assert_eq!(
        report,
        InvalidToken {
            user: "bob".into(),
            token: token(Platform::Apns, "dead", "old-iphone"),
            reason: "410 Unregistered".into(),
        }
    );
    sleep(Duration::from_secs(1)).await;
    let stats = push.stats();
    assert_eq!(
        (stats.delivered, stats.token_invalid, stats.attempts),
        (1, 1, 2),
        "an invalid token is not retried"
    );
    assert!(invalid.try_recv().is_err(), "reported once");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_new_notifications_and_counts_them() {
    support::init_tracing();
    let providers = Providers::new().with(Platform::Apns, ScriptedProvider::always_delivers());
    let config = DispatcherConfig {
        queue_capacity: 2,
        ..config()
    };
    let (push, _invalid) = PushDispatcher::start(config, providers, CancellationToken::new());
    // No await in between: the worker cannot run, so the third finds the queue full.
    for seq in 1..=3 {
        push.notify(
            text_message("bob", seq, "hi"),
            vec![token(Platform::Apns, "a1a1", "iphone")],
            PreviewPolicy::None,
        );
    }
    let stats = push.stats();
    assert_eq!((stats.accepted, stats.dropped), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn tokens_of_a_platform_without_a_provider_are_dropped_and_counted() {
    support::init_tracing();
    let apns = ScriptedProvider::always_delivers();
    let (push, _invalid) = PushDispatcher::start(
        config(),
        Providers::new().with(Platform::Apns, apns.clone()),
        CancellationToken::new(),
    );
    push.notify(
        text_message("bob", 1, "hi"),
        bobs_phones(),
        PreviewPolicy::None,
    );
    sleep(Duration::from_secs(5)).await;
    let stats = push.stats();
    assert_eq!((stats.delivered, stats.dropped), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn close_sends_open_batches_at_once_and_refuses_what_comes_after() {
    support::init_tracing();
    let phone = ScriptedProvider::always_delivers();
    let config = DispatcherConfig {
        batch_window: Duration::from_secs(3600),
        ..config()
    };
    let (push, _invalid) = PushDispatcher::start(
        config,
        Providers::new().with(Platform::Apns, phone.clone()),
        CancellationToken::new(),
    );
    push.notify(
        text_message("bob", 1, "first"),
        vec![token(Platform::Apns, "a1a1", "iphone")],
        PreviewPolicy::Full,
    );
    push.notify(
        text_message("bob", 2, "second"),
        vec![token(Platform::Apns, "a1a1", "iphone")],
        PreviewPolicy::Full,
    );
    let started = Instant::now();
    assert!(
        push.close(Duration::from_secs(10)).await,
        "finished within the deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3600),
        "did not wait for the window"
    );
    let alerts = phone.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].messages, alerts[0].body.as_str()), (2, "second"));

    push.notify(
        text_message("bob", 3, "late"),
        vec![token(Platform::Apns, "a1a1", "iphone")],
        PreviewPolicy::Full,
    );
    assert_eq!(push.stats().dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn close_abandons_deliveries_still_hanging_at_the_deadline() {
    support::init_tracing();
    let hanging = ScriptedProvider::new(|_, _| None);
    let config = DispatcherConfig {
        send_timeout: Duration::from_secs(3600),
        ..config()
    };
    let (push, _invalid) = PushDispatcher::start(
        config,
        Providers::new().with(Platform::Apns, hanging.clone()),
        CancellationToken::new(),
    );
    push.notify(
        text_message("bob", 1, "hi"),
        vec![token(Platform::Apns, "a1a1", "iphone")],
        PreviewPolicy::None,
    );
    sleep(Duration::from_secs(2)).await;
    assert_eq!(hanging.alerts().len(), 1, "the call is in flight");
    let started = Instant::now();
    assert!(
        !push.close(Duration::from_secs(5)).await,
        "reports that it gave up"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(push.stats().dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn the_servers_shutdown_token_starts_the_drain() {
    support::init_tracing();
    let phone = ScriptedProvider::always_delivers();
    let shutdown = CancellationToken::new();
    let config = DispatcherConfig {
        batch_window: Duration::from_secs(3600),
        ..config()
    };
    let (push, _invalid) = PushDispatcher::start(
        config,
        Providers::new().with(Platform::Apns, phone.clone()),
        shutdown.clone(),
    );
    push.notify(
        text_message("bob", 1, "hi"),
        vec![token(Platform::Apns, "a1a1", "iphone")],
        PreviewPolicy::None,
    );
    sleep(Duration::from_millis(10)).await;
    shutdown.cancel();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(phone.alerts().len(), 1, "the open batch was flushed");
    assert!(push.close(Duration::from_secs(5)).await);
}

/// The whole path over real sockets: dispatcher, webhook provider, a server that fails once.
#[tokio::test]
async fn a_503_from_the_webhook_is_retried_and_then_delivered() {
    support::init_tracing();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered.clone();
    let server = MockServer::start(
        Protocol::Http1,
        Arc::new(move |_| match counter.fetch_add(1, Ordering::SeqCst) {
            0 => (StatusCode::SERVICE_UNAVAILABLE, "try later".into()),
            _ => (StatusCode::OK, String::new()),
        }),
    )
    .await;
    let webhook = WebhookProvider::new(WebhookConfig {
        url: server.url(),
        secret: b"s3cret".to_vec(),
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let config = DispatcherConfig {
        batch_window: Duration::from_millis(20),
        retry_backoff: Duration::from_millis(20),
        ..DispatcherConfig::default()
    };
    let (push, _invalid) = PushDispatcher::start(
        config,
        Providers::new().with(Platform::Webhook, Arc::new(webhook)),
        CancellationToken::new(),
    );
    push.notify(
        text_message("bob", 1, "hi"),
        vec![token(Platform::Webhook, "w1", "browser")],
        PreviewPolicy::None,
    );

    // Generous: the machine may be busy; the outcome, not the timing, is what is checked.
    let deadline = Instant::now() + Duration::from_secs(30);
    while push.stats().delivered == 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
    let stats = push.stats();
    assert_eq!(
        (stats.attempts, stats.retryable, stats.delivered),
        (2, 1, 1)
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body, requests[1].body,
        "the retry sends the same alert"
    );
    assert!(push.close(Duration::from_secs(10)).await);
}
