//! The state the admin socket, the HTTP server and the agent loop share: what is attached, how
//! the sync goes, the kernel's latest reading. The servers read it; `observability.rs`, above
//! them, creates it and writes what the agent reports.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat_common::maps::{DIRECTION_INGRESS, VERDICT_ALLOW};
use moat_common::verdict::Reason;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::dns_status::DnsStatus;
use crate::compiler::Index;
use crate::config::Config;
use crate::events::losses::{Losses, Named};
use crate::events::record::Event;
use crate::guard::DetectionStatus;
use crate::kernel::guard_probes::ProbeStatus;
use crate::kernel::loader::Attached;
use crate::kernel::stats::{Fill, KernelStats};
use crate::kernel::tc_pods::TcStatus;
use crate::kernel::capabilities::Capabilities;
use crate::sinks::metrics::{self, Metrics, VerdictLabels};
use crate::sources::unenforced::Unenforced;

/// Observers that fall further behind than this many events miss events (counted).
const HUB_CAPACITY: usize = 4096;
/// The maps are walked at most this often for metrics and status.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncState {
    /// The first complete state reached the kernel (the agent is ready).
    pub first_sync_done: bool,
    pub first_sync_unix_ms: Option<u64>,
    /// When the kernel was last known to match the inputs (an apply, or a check that found
    /// nothing to change).
    pub last_success_unix_ms: Option<u64>,
    #[serde(skip)]
    pub last_success: Option<Instant>,
    pub generation: u64,
    pub failures: u64,
}

impl SyncState {
    pub fn staleness_seconds(&self) -> Option<f64> {
        self.last_success.map(|at| at.elapsed().as_secs_f64())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramStatus {
    pub program: &'static str,
    pub hook: &'static str,
    pub attached: bool,
    pub pinned: bool,
    pub pin: PathBuf,
}

/// State shared by the HTTP server, the admin socket and the agent loop.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub hub: broadcast::Sender<Arc<Event>>,
    pub losses: Arc<Losses>,
    pub sync: Mutex<SyncState>,
    pub attached: Mutex<Vec<Attached>>,
    /// The ICMP program on pod interfaces.
    pub tc: Mutex<Option<TcStatus>>,
    pub kernel: Mutex<Option<KernelStats>>,
    pub index: Mutex<Option<watch::Receiver<Arc<Index>>>>,
    pub capabilities: Mutex<Capabilities>,
    /// The runtime guard's detections and their effective modes on this kernel.
    pub guard: Mutex<Vec<DetectionStatus>>,
    /// The guard's probes: how each is attached on this kernel, and why not better.
    pub probes: Mutex<Vec<ProbeStatus>>,
    pub metrics_url: Mutex<Option<String>>,
    /// Policy objects the source saw and moat does not enforce; None before the first report.
    pub unenforced: Mutex<Option<Unenforced>>,
    /// The last reading of the maps, and when it was taken.
    refreshed: Mutex<Option<(Instant, KernelReading)>>,
    pub instance: String,
    pub admin_socket: PathBuf,
    /// Tenant DNS isolation as configured (read at start only), and what is inspected.
    pub dns: Mutex<DnsStatus>,
}


pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A point-in-time reading of the kernel side, for metrics and status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelReading {
    pub maps: Vec<Fill>,
    pub events_lost_kernel: u64,
}

impl Shared {
    /// Nothing attached, not synced, the kernel not read yet.
    pub fn new(config: &Config, capabilities: Capabilities, guard: Vec<DetectionStatus>) -> Self {
        let (hub, _) = broadcast::channel(HUB_CAPACITY);
        Shared {
            metrics: Arc::new(Metrics::new()),
            hub,
            losses: Arc::new(Losses::default()),
            sync: Mutex::new(SyncState::default()),
            attached: Mutex::new(Vec::new()),
            tc: Mutex::new(None),
            kernel: Mutex::new(None),
            index: Mutex::new(None),
            capabilities: Mutex::new(capabilities),
            guard: Mutex::new(guard),
            probes: Mutex::new(Vec::new()),
            metrics_url: Mutex::new(None),
            unenforced: Mutex::new(None),
            refreshed: Mutex::new(None),
            instance: config.instance.clone(),
            admin_socket: config.admin_socket_path(),
            dns: Mutex::new(DnsStatus::of(config)),
        }
    }

    pub fn ready(&self) -> bool {
        lock(&self.sync).first_sync_done
    }

    pub fn sync_state(&self) -> SyncState {
        lock(&self.sync).clone()
    }

    pub fn programs(&self) -> Vec<ProgramStatus> {
        lock(&self.attached)
            .iter()
            .map(|a| ProgramStatus { program: a.program, hook: a.hook.name(), attached: true, pinned: a.pin.exists(), pin: a.pin.clone() })
            .collect()
    }

    pub fn tc(&self) -> Option<TcStatus> {
        lock(&self.tc).clone()
    }

    pub fn capabilities(&self) -> Capabilities {
        lock(&self.capabilities).clone()
    }

    /// The names behind the state the kernel enforces (None before the first sync).
    pub fn index(&self) -> Option<Arc<Index>> {
        lock(&self.index).as_ref().map(|rx| rx.borrow().clone())
    }

    pub fn metrics_url(&self) -> Option<String> {
        lock(&self.metrics_url).clone()
    }

    /// Reads the pinned maps and brings every metric up to date. Walks the maps: blocking.
    /// Done at most once per `MIN_REFRESH_INTERVAL`, however many scrapes and status requests
    /// come: concurrent callers wait for the one walk and share it.
    pub fn refresh(&self) -> KernelReading {
        let mut last = lock(&self.refreshed);
        if let Some((at, reading)) = last.as_ref() {
            if at.elapsed() < MIN_REFRESH_INTERVAL {
                return reading.clone();
            }
        }
        let reading = self.refresh_now();
        *last = Some((Instant::now(), reading.clone()));
        reading
    }

    fn refresh_now(&self) -> KernelReading {
        let sync = self.sync_state();
        let m = &self.metrics;
        m.sync_ready.set(i64::from(sync.first_sync_done));
        m.policy_generation.set(i64::try_from(sync.generation).unwrap_or(i64::MAX));
        metrics::raise_to(&m.sync_failures, sync.failures);
        m.sync_staleness.set(sync.staleness_seconds().unwrap_or(0.0));
        m.programs_attached.set(i64::try_from(lock(&self.attached).len()).unwrap_or(0));
        let index = self.index();
        self.losses.poll_kernel();
        for (labels, total) in loss_series(&self.losses, index.as_deref()) {
            metrics::raise_to(&m.events_lost.get_or_create(&labels), total);
        }
        let kernel = lock(&self.kernel);
        let Some(stats) = kernel.as_ref() else { return KernelReading::default() };
        let mut tenants_seen = std::collections::HashSet::new();
        for (key, counter) in stats.counters() {
            let mut tenant = match (key.tenant, &index) {
                (0, _) => "none".to_string(),
                (id, Some(index)) => index.tenants.get(&id).map(|t| t.to_string()).unwrap_or_else(|| "unknown".into()),
                (_, None) => "unknown".into(),
            };
            if tenants_seen.len() >= metrics::MAX_TENANT_LABELS && !tenants_seen.contains(&tenant) {
                tenant = "other".into();
            }
            tenants_seen.insert(tenant.clone());
            let labels = VerdictLabels {
                direction: if key.direction == DIRECTION_INGRESS { "ingress" } else { "egress" }.into(),
                verdict: if key.verdict == VERDICT_ALLOW { "allow" } else { "deny" }.into(),
                tenant,
                reason: Reason::from_u8(key.reason).map(Reason::name).unwrap_or("unknown").into(),
            };
            metrics::raise_to(&m.verdict_packets.get_or_create(&labels), counter.packets);
            metrics::raise_to(&m.verdict_bytes.get_or_create(&labels), counter.bytes);
        }
        let events_lost_kernel = stats.events_lost().unwrap_or_else(|error| {
            tracing::warn!(%error, "reading EVENTS_LOST failed");
            0
        });
        let maps = stats.fill();
        for fill in &maps {
            let labels = metrics::MapLabels { map: fill.map.into() };
            m.map_entries.get_or_create(&labels).set(i64::try_from(fill.entries).unwrap_or(i64::MAX));
            m.map_capacity.get_or_create(&labels).set(i64::try_from(fill.capacity).unwrap_or(i64::MAX));
        }
        KernelReading { maps, events_lost_kernel }
    }
}

/// Loss totals summed per metric label set; tenants beyond the label cap are `other`.
pub fn loss_series(losses: &Losses, index: Option<&Index>) -> Vec<(metrics::LostLabels, u64)> {
    let mut series: std::collections::BTreeMap<(String, String, String, String), u64> = Default::default();
    let mut tenants = std::collections::HashSet::new();
    for (key, total) in losses.totals() {
        let named = Named::new(&key, index);
        let mut tenant = named.tenant.unwrap_or_default();
        if tenants.len() >= metrics::MAX_TENANT_LABELS && !tenants.contains(&tenant) {
            tenant = "other".into();
        }
        tenants.insert(tenant.clone());
        *series.entry((named.stage.into(), named.reason.into(), tenant, named.events.into())).or_default() += total;
    }
    series
        .into_iter()
        .map(|((stage, reason, tenant, kind), total)| (metrics::LostLabels { stage, reason, tenant, kind }, total))
        .collect()
}
