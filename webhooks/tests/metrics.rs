//! The metric names and labels the server's dashboards rely on, read through a recorder
//! installed for this test binary (its own process, so the global recorder is ours alone).

mod receiver;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use im_webhooks::{
    AfterEvent, BeforeSend, BeforeSendDecision, FailurePolicy, WebhookConfig, Webhooks,
};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use receiver::{Receiver, Reply, eventually, init_tracing};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Every metric's latest value (counters: total; gauges: last set; histograms: sample count),
/// keyed `name{label=value,...}` with labels sorted.
type Values = Arc<Mutex<BTreeMap<String, f64>>>;

struct Recording {
    values: Values,
}

struct Handle {
    key: String,
    values: Values,
}

impl Handle {
    fn update(&self, change: impl FnOnce(&mut f64)) {
        let mut values = self.values.lock().unwrap();
        change(values.entry(self.key.clone()).or_insert(0.0));
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.update(|v| *v += value as f64);
    }
    fn absolute(&self, value: u64) {
        self.update(|v| *v = value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.update(|v| *v += value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| *v -= value);
    }
    fn set(&self, value: f64) {
        self.update(|v| *v = value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, _value: f64) {
        self.update(|v| *v += 1.0);
    }
}

impl Recording {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Handle {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            values: self.values.clone(),
        })
    }
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

fn recorded() -> Values {
    static VALUES: OnceLock<Values> = OnceLock::new();
    VALUES
        .get_or_init(|| {
            let values = Values::default();
            metrics::set_global_recorder(Recording {
                values: values.clone(),
            })
            .expect("the only recorder of this test binary");
            values
        })
        .clone()
}

fn value(values: &Values, key: &str) -> f64 {
    values.lock().unwrap().get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn requests_drops_queue_depth_and_latency_are_recorded_with_their_labels() {
    init_tracing();
    let values = recorded();
    let receiver = Receiver::answering(|index| match index {
        // before-send: allowed, then a 503 (the open policy lets it through).
        0 => Reply::json(json!({"action": "allow"})),
        1 => Reply::status(503),
        // The after-event: a 500, then accepted.
        2 => Reply::status(500),
        3 => Reply::status(200),
        // The second after-event: refused for good.
        _ => Reply::status(404),
    })
    .await;
    let mut config =
        WebhookConfig::new(&receiver.url, b"metrics-secret-0123456789".to_vec()).unwrap();
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(20);
    config.timeout = Duration::from_secs(10);
    config.before_send_failure = FailurePolicy::Open;
    config.max_in_flight = 1;
    let hooks = Webhooks::start(config, CancellationToken::new()).unwrap();
    let message = BeforeSend {
        sender_user: "alice".into(),
        sender_device: "d1".into(),
        conversation_id: "d:alice:bob".into(),
        to_user: Some("bob".into()),
        to_group: None,
        client_msg_id: "m-1".into(),
        content_type: 0,
        content: b"hi".to_vec(),
    };

    assert_eq!(hooks.before_send(&message).await, BeforeSendDecision::Allow);
    assert_eq!(hooks.before_send(&message).await, BeforeSendDecision::Allow);
    let online = AfterEvent::UserOnline {
        user: "alice".into(),
        device: "d1".into(),
    };
    hooks.after(online.clone());
    eventually("the first event is delivered", || {
        hooks.stats().delivered == 1
    })
    .await;
    hooks.after(online);
    eventually("the second event is given up", || {
        hooks.stats().dropped_gave_up == 1
    })
    .await;
    hooks.close(Duration::from_secs(30)).await;
    hooks.after(AfterEvent::UserOffline {
        user: "alice".into(),
        device: "d1".into(),
    });

    let expected = [
        ("im_webhook_requests_total{hook=before_send,result=ok}", 1.0),
        (
            "im_webhook_requests_total{hook=before_send,result=rejected_status}",
            1.0,
        ),
        ("im_webhook_requests_total{hook=user_online,result=ok}", 1.0),
        (
            "im_webhook_requests_total{hook=user_online,result=rejected_status}",
            2.0,
        ),
        (
            "im_webhook_before_send_decisions_total{decision=allow}",
            1.0,
        ),
        (
            "im_webhook_before_send_decisions_total{decision=failed_open}",
            1.0,
        ),
        (
            "im_webhook_dropped_total{event=user_online,reason=gave_up}",
            1.0,
        ),
        (
            "im_webhook_dropped_total{event=user_offline,reason=shutdown}",
            1.0,
        ),
        ("im_webhook_latency_seconds{hook=before_send}", 2.0),
        ("im_webhook_latency_seconds{hook=user_online}", 3.0),
        ("im_webhook_queue_depth{}", 0.0),
    ];
    for (key, want) in expected {
        assert_eq!(
            value(&values, key),
            want,
            "{key} in {:#?}",
            values.lock().unwrap()
        );
    }
    assert!(
        values
            .lock()
            .unwrap()
            .contains_key("im_webhook_queue_depth{}")
    );
}
