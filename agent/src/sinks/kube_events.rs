//! Kubernetes Events on the offending pod, for detections only (flows are too many).
//! Rate-limited twice: one Event per pod and detection id within `minIntervalSeconds`, and at
//! most `maxPerMinute` in all. Posting runs on its own task behind a bounded queue, so a slow
//! API server never stalls the pipeline; what the queue cannot take is counted as lost.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;

use crate::config::KubeEventsConfig;
use crate::events::losses::Losses;
use crate::events::pipeline::Sink;
use crate::events::record::{Detection, Event, Payload};

const QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum KubeEventsError {
    #[error("kubeEvents.apiServer {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("Kubernetes client for Events: {0}")]
    Client(String),
}

/// Decides which detections become Events.
pub struct RateLimit {
    min_interval: Duration,
    max_per_minute: usize,
    last: HashMap<(String, String, String), Instant>,
    recent: VecDeque<Instant>,
}

impl RateLimit {
    pub fn new(min_interval: Duration, max_per_minute: u32) -> Self {
        Self { min_interval, max_per_minute: max_per_minute as usize, last: HashMap::new(), recent: VecDeque::new() }
    }

    pub fn allow(&mut self, namespace: &str, pod: &str, id: &str, now: Instant) -> bool {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.recent.pop_front();
        }
        let min_interval = self.min_interval;
        self.last.retain(|_, at| now.duration_since(*at) < min_interval);
        let key = (namespace.to_string(), pod.to_string(), id.to_string());
        if self.last.contains_key(&key) || self.recent.len() >= self.max_per_minute {
            return false;
        }
        self.last.insert(key, now);
        self.recent.push_back(now);
        true
    }
}

/// The sink half: queues detections that name a pod.
pub struct KubeEventsSink {
    tx: mpsc::Sender<(Detection, u64)>,
    losses: Arc<Losses>,
}

impl Sink for KubeEventsSink {
    fn emit(&mut self, event: &Event) {
        if let Payload::Detection(detection) = &event.payload {
            if detection.namespace.is_some() && detection.pod.is_some() && self.tx.try_send((detection.clone(), event.count)).is_err() {
                self.losses.sink_dropped();
            }
        }
    }
}

/// A client for `config.apiServer` (plain HTTP works), or the in-cluster/kubeconfig one.
pub async fn client(config: &KubeEventsConfig) -> Result<kube::Client, KubeEventsError> {
    let config = match &config.api_server {
        Some(url) => {
            let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| KubeEventsError::Url {
                url: url.clone(),
                message: e.to_string(),
            })?;
            kube::Config::new(uri)
        }
        None => kube::Config::infer().await.map_err(|e| KubeEventsError::Client(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| KubeEventsError::Client(e.to_string()))
}

/// Starts the posting task; returns the sink to put in the pipeline.
pub fn start(client: kube::Client, config: &KubeEventsConfig, node: Option<String>, losses: Arc<Losses>) -> KubeEventsSink {
    let (tx, mut rx) = mpsc::channel::<(Detection, u64)>(QUEUE);
    let mut limit = RateLimit::new(Duration::from_secs(config.min_interval_seconds), config.max_per_minute);
    tokio::spawn(async move {
        while let Some((detection, count)) = rx.recv().await {
            let (Some(namespace), Some(pod)) = (detection.namespace.clone(), detection.pod.clone()) else { continue };
            if !limit.allow(&namespace, &pod, &detection.id, Instant::now()) {
                tracing::debug!(id = %detection.id, %namespace, %pod, "Kubernetes Event rate-limited");
                continue;
            }
            let api: Api<KubeEvent> = Api::namespaced(client.clone(), &namespace);
            let event = kube_event(&detection, &namespace, &pod, count, node.as_deref());
            if let Err(error) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(%error, id = %detection.id, %namespace, %pod, "posting a Kubernetes Event failed");
            }
        }
    });
    KubeEventsSink { tx, losses }
}

/// The core/v1 Event for a detection on `namespace/pod`.
pub fn kube_event(detection: &Detection, namespace: &str, pod: &str, count: u64, node: Option<&str>) -> KubeEvent {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let millis = crate::events::record::now_unix_ms();
    KubeEvent {
        metadata: ObjectMeta {
            name: Some(format!("{pod}.moat-{millis:x}")),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            namespace: Some(namespace.into()),
            ..ObjectReference::default()
        },
        reason: Some(format!("MoatDetection:{}", detection.id)),
        message: Some(format!("{} (mode {}): {}", detection.id, detection.mode, detection.message)),
        type_: Some("Warning".into()),
        count: Some(i32::try_from(count).unwrap_or(i32::MAX)),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        reporting_component: Some("moat".into()),
        reporting_instance: node.map(String::from),
        source: Some(EventSource { component: Some("moat".into()), host: node.map(String::from) }),
        ..KubeEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_pod_and_overall() {
        let start = Instant::now();
        let mut limit = RateLimit::new(Duration::from_secs(60), 3);
        assert!(limit.allow("n", "p", "x", start));
        assert!(!limit.allow("n", "p", "x", start + Duration::from_secs(1)), "same pod and id within the interval");
        assert!(limit.allow("n", "p", "y", start));
        assert!(limit.allow("n", "q", "x", start));
        assert!(!limit.allow("n", "r", "x", start), "max per minute reached");
        assert!(limit.allow("n", "p", "x", start + Duration::from_secs(61)), "a minute later");
    }

    #[tokio::test]
    async fn posts_a_rate_limited_event_to_the_api_server() {
        let server = moat_testapi::TestServer::start(moat_testapi::Store::new()).await.expect("test API server");
        let config = KubeEventsConfig {
            enabled: true,
            api_server: Some(format!("http://{}", server.addr)),
            min_interval_seconds: 3600,
            max_per_minute: 10,
        };
        let client = client(&config).await.unwrap();
        let mut sink = start(client.clone(), &config, Some("node-1".into()), Arc::new(Losses::default()));
        let detection = Detection {
            id: "exec-shell".into(),
            mode: "audit".into(),
            tenant: Some("alpha".into()),
            namespace: Some("team-a".into()),
            pod: Some("web".into()),
            message: "sh started".into(),
            ..Detection::default()
        };
        for _ in 0..5 {
            sink.emit(&Event::new(Payload::Detection(detection.clone())));
        }
        let api: Api<KubeEvent> = Api::namespaced(client, "team-a");
        let deadline = Instant::now() + Duration::from_secs(10);
        let events = loop {
            let list = api.list(&Default::default()).await.unwrap();
            if !list.items.is_empty() || Instant::now() > deadline {
                break list.items;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Let the queue drain fully, then check nothing more was posted.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events_after = api.list(&Default::default()).await.unwrap().items;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events_after.len(), 1, "rate-limited to one per pod and id: {events_after:?}");
        let event = &events_after[0];
        assert_eq!(event.involved_object.name.as_deref(), Some("web"));
        assert_eq!(event.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(event.reason.as_deref(), Some("MoatDetection:exec-shell"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
    }
}
