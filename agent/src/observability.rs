//! Wires the event pipeline, the sinks, the metrics HTTP server and the admin socket, so the
//! agent loop (`runtime.rs`) only reports what happened: loaded, applied, failed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::admin::shared::{lock, Shared};
use crate::admin::{self, AdminError};
use crate::compiler::Index;
use crate::config::Config;
use crate::events::pipeline::{self, Sink, Submitter};
use crate::guard::hooks::GuardHooks;
use crate::guard::{self, DetectionStatus};
use crate::kernel::bpffs::PinDirs;
use crate::kernel::event_budgets::BudgetReader;
use crate::kernel::loader::Attached;
use crate::kernel::maps::ApplyStats;
use crate::kernel::stats::KernelStats;
use crate::kernel::tc_pods::TcStatus;
use crate::kernel::KernelError;
use crate::kernel::capabilities;
use crate::sinks::file::{FileSink, RotatingFile};
use crate::sinks::metrics::{self, MetricsSink};
use crate::sinks::{kube_events, log::LogSink};
use crate::sources::unenforced::Unenforced;

#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    File(#[from] crate::sinks::file::FileSinkError),
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
        let probed = capabilities::probe();
        // Until the agent has planned the guard's hooks, nothing is attached.
        let guard = guard::statuses(&config.guard, &guard::Attached::default());
        let shared = Arc::new(Shared::new(config, probed, guard));
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
