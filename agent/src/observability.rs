//! Wires the event pipeline, the sinks, the metrics HTTP server and the admin socket, so the
//! agent loop (`runtime.rs`) only reports what happened: loaded, applied, failed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use moat_common::maps::{DIRECTION_INGRESS, VERDICT_ALLOW};
use moat_common::verdict::Reason;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::admin::{self, AdminError};
use crate::compiler::Index;
use crate::config::Config;
use crate::events::losses::{Losses, Named};
use crate::events::pipeline::{self, Sink, Submitter};
use crate::events::record::Event;
use crate::kernel::bpffs::PinDirs;
use crate::kernel::event_budgets::BudgetReader;
use crate::kernel::loader::Attached;
use crate::kernel::maps::ApplyStats;
use crate::kernel::stats::{Fill, KernelStats};
use crate::kernel::tc_pods::TcStatus;
use crate::kernel::KernelError;
use crate::guard::hooks::GuardHooks;
use crate::guard::{self, DetectionStatus};
use crate::kernel::guard_probes::ProbeStatus;
use crate::node::capabilities::{self, Capabilities};
use crate::sinks::file::{FileSink, RotatingFile};
use crate::sinks::metrics::{self, Metrics, MetricsSink, VerdictLabels};
use crate::sinks::{kube_events, log::LogSink};
use crate::sources::unenforced::Unenforced;

/// Observers that fall further behind than this many events miss events (counted).
const HUB_CAPACITY: usize = 4096;
/// The maps are walked at most this often for metrics and status.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    File(#[from] crate::sinks::file::FileSinkError),
}

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
    pub dns: Mutex<crate::admin::status::DnsStatus>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A point-in-time reading of the kernel side, for metrics and status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelReading {
    pub maps: Vec<Fill>,
    pub events_lost_kernel: u64,
}

impl Shared {
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

/// The agent's handle on everything observable.
pub struct Observability {
    pub shared: Arc<Shared>,
    config: Config,
}

impl Drop for Observability {
    /// The agent is leaving (stopped, or failed at start-up): take the admin socket, and its
    /// directory if nothing else is in it, with it. Enforcement itself stays pinned.
    fn drop(&mut self) {
        let socket = &self.shared.admin_socket;
        let _ = std::fs::remove_file(socket);
        if let Some(dir) = socket.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Observability {
    /// Starts the metrics HTTP server and the admin socket (not ready yet) and probes the
    /// kernel's capabilities.
    pub async fn start(config: &Config) -> Result<Self, ObservabilityError> {
        let (hub, _) = broadcast::channel(HUB_CAPACITY);
        let probed = capabilities::probe();
        // Until the agent has planned the guard's hooks, nothing is attached.
        let guard = guard::statuses(&config.guard, &guard::Attached::default());
        let shared = Arc::new(Shared {
            metrics: Arc::new(Metrics::new()),
            hub,
            losses: Arc::new(Losses::default()),
            sync: Mutex::new(SyncState::default()),
            attached: Mutex::new(Vec::new()),
            tc: Mutex::new(None),
            kernel: Mutex::new(None),
            index: Mutex::new(None),
            capabilities: Mutex::new(probed),
            guard: Mutex::new(guard),
            probes: Mutex::new(Vec::new()),
            metrics_url: Mutex::new(None),
            unenforced: Mutex::new(None),
            refreshed: Mutex::new(None),
            instance: config.instance.clone(),
            admin_socket: config.admin_socket_path(),
            dns: Mutex::new(crate::admin::status::DnsStatus::of(config)),
        });
        let addr = admin::http::start(&config.metrics_address, shared.clone()).await?;
        *lock(&shared.metrics_url) = Some(format!("http://{addr}/metrics"));
        admin::server::start(&shared.admin_socket, shared.clone())?;
        tracing::info!(metrics = %format!("http://{addr}/metrics"), admin_socket = %shared.admin_socket.display(), "observability up");
        Ok(Self { shared, config: config.clone() })
    }

    /// A program failed to load or attach (the agent is about to exit with the error).
    pub fn kernel_failed(&self, error: &KernelError) {
        let (program, stage) = match error {
            KernelError::Program { program, message, .. } => {
                (*program, if message.starts_with("load") { "load" } else { "attach" })
            }
            KernelError::Load { .. } => ("object", "load"),
            _ => return,
        };
        let labels = metrics::ProgramLabels { program: program.into(), stage: stage.into() };
        self.shared.metrics.program_failures.get_or_create(&labels).inc();
    }

    /// The guard's hooks are planned: what each detection does, how each probe is attached,
    /// what the kernel offers.
    pub fn guard_planned(&self, statuses: &[DetectionStatus], hooks: &GuardHooks) {
        *lock(&self.shared.guard) = statuses.to_vec();
        *lock(&self.shared.probes) = hooks.probe_statuses();
        // cgroup/connect_unix comes and goes with the runtime-socket mode.
        {
            let mut attached = lock(&self.shared.attached);
            attached.retain(|program| program.program != crate::kernel::unix_connect::PROGRAM);
            if let Ok(Some(program)) = hooks.connect_unix() {
                attached.push(program.clone());
            }
        }
        let connect_unix = match hooks.connect_unix() {
            Ok(Some(_)) => "attached".to_string(),
            Ok(None) => "not needed".to_string(),
            Err(error) => format!("unavailable: {error}"),
        };
        lock(&self.shared.capabilities).guard(&hooks.kernel(), connect_unix);
    }

    /// The first complete state is enforced: programs attached, maps written. Ready.
    pub fn enforcing(&self, dirs: &PinDirs, attached: &[Attached], stats: &ApplyStats) {
        *lock(&self.shared.attached) = attached.to_vec();
        lock(&self.shared.capabilities).cgroup_hooks = "available (programs attached)".into();
        match KernelStats::open(&dirs.maps) {
            Ok(kernel) => *lock(&self.shared.kernel) = Some(kernel),
            Err(error) => tracing::error!(%error, "opening the pinned maps for metrics failed; map metrics stay empty"),
        }
        match BudgetReader::open(&dirs.maps) {
            Ok(reader) => self.shared.losses.attach_kernel(reader),
            Err(error) => tracing::error!(%error, "opening the event budgets failed; losses in the kernel are not counted per tenant"),
        }
        self.applied(stats);
        let mut sync = lock(&self.shared.sync);
        sync.first_sync_done = true;
        sync.first_sync_unix_ms = sync.last_success_unix_ms;
    }

    pub fn applied(&self, stats: &ApplyStats) {
        let mut sync = lock(&self.shared.sync);
        sync.generation = stats.generation;
        sync.last_success = Some(Instant::now());
        sync.last_success_unix_ms = Some(crate::events::record::now_unix_ms());
    }

    /// The inputs did not change and nothing is pending: the kernel is in step.
    pub fn in_sync(&self) {
        let mut sync = lock(&self.shared.sync);
        sync.last_success = Some(Instant::now());
        sync.last_success_unix_ms = Some(crate::events::record::now_unix_ms());
    }

    /// Whether the TCP DNS programs are attached (`Err`: why not), for `moat status`.
    pub fn dns_tcp(&self, attached: Result<(), String>) {
        lock(&self.shared.dns).with_tcp(attached);
    }

    /// Where the ICMP program is attached; its attach failures feed `moat_program_failures_total`.
    pub fn tc_pods(&self, status: TcStatus) {
        let labels = metrics::ProgramLabels { program: status.program.into(), stage: "attach".into() };
        metrics::raise_to(&self.shared.metrics.program_failures.get_or_create(&labels), status.attach_failures);
        *lock(&self.shared.tc) = Some(status);
    }

    /// What the source sees and moat does not enforce: logged when it changes (a warning
    /// while any exist), counted in `moat_unenforced_policies`, shown by `moat status`.
    pub fn unenforced(&self, now: &Unenforced) {
        let mut last = lock(&self.shared.unenforced);
        if last.as_ref() == Some(now) {
            return;
        }
        crate::sources::unenforced::log_change(last.as_ref(), now);
        self.shared.metrics.unenforced(last.as_ref(), now);
        *last = Some(now.clone());
    }

    pub fn apply_failed(&self) {
        lock(&self.shared.sync).failures += 1;
    }

    /// Starts the pipeline with its sinks; returns where the ring-buffer reader submits.
    pub async fn pipeline(&self, index: watch::Receiver<Arc<Index>>) -> Result<Submitter, ObservabilityError> {
        *lock(&self.shared.index) = Some(index.clone());
        let shared = &self.shared;
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(LogSink), Box::new(MetricsSink(shared.metrics.clone()))];
        if let Some(file) = &self.config.events.file {
            sinks.push(Box::new(FileSink::new(RotatingFile::open(file)?, shared.losses.clone())));
        }
        if self.config.kube_events.enabled {
            match kube_events::client(&self.config.kube_events).await {
                Ok(client) => sinks.push(Box::new(kube_events::start(
                    client,
                    &self.config.kube_events,
                    self.config.node_name.clone(),
                    shared.losses.clone(),
                ))),
                Err(error) => tracing::error!(%error, "Kubernetes Events sink disabled"),
            }
        }
        let events = &self.config.events;
        let window = Duration::from_millis(events.aggregation_window_ms);
        let settings = pipeline::Settings {
            buffer: events.buffer,
            detection_buffer: events.detection_buffer,
            window,
            flood_threshold: events.flood_threshold,
            summary_period: window.max(Duration::from_secs(1)),
        };
        let (pipeline, submitter) = pipeline::new(settings, index, sinks, shared.hub.clone(), shared.losses.clone());
        tokio::spawn(pipeline.run());
        Ok(submitter)
    }
}

/// Seconds since the Unix epoch, for status output.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
