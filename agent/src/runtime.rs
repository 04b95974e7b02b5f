//! `moat agent`: wires sources → model → compiler → kernel → events.
//!
//! Fail-safe behaviour: a bad manifest or config edit is reported and the last good state
//! stays enforced; the kernel is only written from a model that compiled completely. When the
//! agent stops or dies, programs and maps stay pinned and keep enforcing the last state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::RingBuf;
use moat_common::maps::names;
use tokio::sync::watch;

use crate::compiler::{CompileError, Incremental};
use crate::config::{Config, ConfigError};
use crate::config_watch::{ConfigWatch, Reloaded};
use crate::events;
use crate::kernel::tc_pods::{TcPods, TcStatus};
use crate::kernel::{bpffs, loader, maps::KernelMaps, tc, KernelError};
use crate::model::{Change, Cluster};
use crate::observability::{ObservabilityError, Observability};
use crate::node::dir_watch::DirWatch;
use crate::node::cgroups::{self, CgroupError, CgroupLayout, PodCgroups};
use crate::node::mounts::{self, MountError};
use crate::sources::kube::{KubeOptions, KubeSource};
use crate::sources::watch::ManifestWatcher;
use crate::sources::{Source, SourceError, Update};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Files or directories of Kubernetes manifests (YAML or JSON; `kubectl get -o yaml` works).
    /// Without it the agent watches the API server.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Kubeconfig for the API server; default: in-cluster, then KUBECONFIG / ~/.kube/config.
    #[arg(long, conflicts_with = "files")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (its Node's labels, which pods are local); overrides config nodeName.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Agent configuration file (YAML); every field has a default.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Created once the first complete state is enforced by the kernel.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Observability(#[from] ObservabilityError),
    #[error("starting the async runtime: {0}")]
    Tokio(std::io::Error),
    #[error("writing ready file {path}: {source}")]
    ReadyFile { path: PathBuf, source: std::io::Error },
}

pub fn run(args: AgentArgs) -> Result<(), RuntimeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RuntimeError::Tokio)?;
    runtime.block_on(run_agent(args))
}

async fn run_agent(args: AgentArgs) -> Result<(), RuntimeError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if args.node_name.is_some() {
        config.node_name = args.node_name.clone();
    }
    let observability = Observability::start(&config).await?;
    let cgroup_root = cgroups::pods_root(config.cgroup_root.as_deref(), config.cgroup_layout, &mounts::cgroup2()?)?;
    let layout = crate::node::cgroup_layout(config.cgroup_layout);
    let mut source = if args.files.is_empty() {
        let discovery_interval = Duration::from_millis(config.api_discovery_interval_ms);
        let options = KubeOptions { kubeconfig: args.kubeconfig.clone(), node_name: config.node_name.clone(), discovery_interval };
        Source::Kube(KubeSource::start(&options).await.map_err(SourceError::from)?)
    } else {
        Source::manifests(ManifestWatcher::new(args.files.clone()).for_node(config.node_name.clone()))
    };
    let mut startup = Startup::begin();
    // The kernel's side needs nothing from the cluster: it is loaded (and verified) here, on
    // this thread, while the source's tasks list the cluster on the runtime's workers.
    // Nothing is attached or written before the first compile, and a start that fails
    // before it removes the pins it created: bad input leaves the node as it was.
    let dirs = bpffs::pin_dirs(&config.bpffs_root, &config.instance);
    let fresh_pins = !dirs.instance.exists();
    let prepared = prepare_kernel(&config.bpffs_root, &dirs, &config.events.budget.kernel());
    startup.phase("loaded");
    let started = first_state(&mut source, &config, &cgroup_root, layout.as_ref(), &observability, &mut startup)
        .await
        .and_then(|compiler| Ok((prepared.inspect_err(|e| observability.kernel_failed(e))?, compiler)));
    let (prepared, mut compiler) = match started {
        Ok(started) => started,
        Err(error) => {
            if fresh_pins {
                bpffs::remove_instance(&dirs);
            }
            return Err(error);
        }
    };
    let Prepared { mut ebpf, unix_connect, layout_error, tc_program } = prepared;
    let mut maps = KernelMaps::take(&mut ebpf)?;
    // Adopt whatever an earlier agent left: reconcile from the maps' actual content, never
    // from empty, so nothing is cleared first.
    let adopted = maps.read()?;
    let stats = maps.apply(&adopted, compiler.desired())?;
    startup.phase("maps-written");
    // Modes before any program attaches, so each acts on them from its first call (and an
    // adopted, still attached program keeps refusing what it refused).
    crate::guard::write_modes(&mut ebpf, &config.guard)?;
    let api_servers = guard_api_servers(&config, &args).await;
    let mut guard = crate::guard::run::Guard::start(&mut ebpf, &config.guard, &cgroup_root, &mounts::cgroup2()?, &api_servers)?;
    if let Err(error) = guard.refresh(&compiler.desired().index, compiler.cluster(), true) {
        tracing::error!(%error, "runtime guard: writing its maps failed");
    }
    startup.phase("guard-started");
    let mut attached = loader::attach_all(&mut ebpf, &cgroup_root, &dirs).inspect_err(|e| observability.kernel_failed(e))?;
    // The guard's hooks: for what the configured detections need, the best way this kernel
    // offers (BPF LSM, fentry, syscall tracepoints), and cgroup/connect_unix.
    let run_dir = config.admin_socket_path().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/run/moat"));
    let mut hooks = crate::guard::hooks::GuardHooks::new(&dirs, &run_dir, &cgroup_root, unix_connect, guard.unix_connect_ready(), layout_error);
    startup.phase("attached");
    let statuses = hooks.plan(&mut ebpf, &config.guard);
    startup.phase("guard-hooks");
    if let Ok(Some(connect_unix)) = hooks.connect_unix() {
        attached.push(connect_unix.clone());
    }
    if config.dns.isolation != crate::config::DnsIsolation::Off {
        attach_dns_tcp(&mut ebpf, &cgroup_root, &dirs, &observability, &mut attached);
    }
    observability.guard_planned(&statuses, &hooks);
    crate::guard::log_modes(&statuses);
    observability.enforcing(&dirs, &attached, &stats);
    // ICMP echo into pods: the tc program on every pod's interfaces, before the agent says
    // it is ready; pods not ready for it yet are retried on every tick.
    // A kernel whose verifier rejects it runs without: everything else still enforces.
    let mut tc_pods = match tc_program {
        Ok(id) => Some(TcPods::new(id, tc::Mode::choose(config.tc_attach), &dirs.tc, &cgroup_root)),
        Err(error) => {
            observability.kernel_failed(&error);
            tracing::error!(%error, "ICMP echo requests into pods are not enforced on this kernel; every other hook is");
            observability.tc_pods(TcStatus::unavailable(error.to_string().lines().next().unwrap_or_default().to_string()));
            None
        }
    };
    if let Some(tc_pods) = tc_pods.as_mut() {
        tc_pods.reconcile(tc::program(&mut ebpf)?, compiler.cgroups(), &compiler.desired().index, compiler.cluster(), true);
        observability.tc_pods(tc_pods.status());
    }
    startup.phase("tc");
    tracing::info!(
        startup = %startup,
        pods = compiler.cluster().pods.len(),
        local_pods = compiler.desired().local.len(),
        adopted_entries = adopted.local.len() + adopted.remote.len(),
        writes = stats.writes,
        removals = stats.removals,
        generation = stats.generation,
        programs = attached.len(),
        cgroup_root = %cgroup_root.display(),
        pins = %dirs.instance.display(),
        "enforcing"
    );
    return_freed_memory();
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|source| RuntimeError::ReadyFile { path: path.clone(), source })?;
    }

    let (index_tx, index_rx) = watch::channel(Arc::new(compiler.desired().index.clone()));
    let ring_map = ebpf.take_map(names::EVENTS).ok_or_else(|| KernelError::map(names::EVENTS, "missing"))?;
    let ring = RingBuf::try_from(ring_map).map_err(|e| KernelError::map(names::EVENTS, e))?;
    let submitter = observability.pipeline(index_rx).await?;
    let events_task = tokio::spawn(events::reader::run(ring, submitter.clone()));
    events::foreign::report(&submitter, &Default::default(), &compiler.desired().index.foreign);

    let mut tick = tokio::time::interval(Duration::from_millis(config.poll_interval_ms));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RuntimeError::Tokio)?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(RuntimeError::Tokio)?;
    let mut config_watch = ConfigWatch::new(args.config.as_deref(), &config);
    let mut resync = false;
    let mut cgroup_watch = crate::node::cgroup_watch();
    loop {
        // The tick looks at the node (cgroups, the guard's files, manifest files), and re-reads
        // what its watches say changed; API server changes wake at once.
        let wake = tokio::select! {
            _ = tick.tick() => Wake::Tick,
            _ = source.changed() => Wake::Source,
            _ = hangup.recv() => Wake::Hangup,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        };
        let woke = std::time::Instant::now();
        if let Some(reloaded) = config_watch.check(wake == Wake::Hangup) {
            let hooks_in_force = GuardInForce { guard: &mut guard, hooks: &mut hooks, ebpf: &mut ebpf, observability: &observability };
            reconfigure(hooks_in_force, &mut config, reloaded, &args).await;
        }
        if events_task.is_finished() {
            tracing::error!("event reader stopped; enforcement continues without events");
        }
        let changes = poll(&mut source, compiler.cluster());
        // The node's cgroups are walked on the tick, or for a watch event that may be about a
        // pod of this node, and then only if inotify saw a cgroup come or go.
        let on_tick = wake != Wake::Source;
        let maybe_new_cgroup = on_tick || changes.iter().any(|change| may_run_here(change, &config));
        let cgroups = if maybe_new_cgroup && cgroup_watch.due() {
            scan_cgroups(compiler.cgroups(), &cgroup_root, layout.as_ref(), &mut cgroup_watch)
        } else {
            None
        };
        let cgroups_found = cgroups.is_some();
        let mut scan_node = match (cgroups_found, on_tick) {
            (true, _) => NodeScan::Now,
            (false, true) => NodeScan::IfChanged,
            (false, false) => NodeScan::No,
        };
        if changes.is_empty() && cgroups.is_none() && !resync {
            // Discovery runs apart from the changes: its findings are reported on every pass.
            observability.unenforced(&source.unenforced());
            // Unchanged inputs only mean "in step" while the source itself is current: with
            // the API server gone, staleness keeps growing although nothing changes.
            if source.sync_state().is_healthy() {
                observability.in_sync();
            }
            after_apply(&mut guard, &mut tc_pods, &mut ebpf, &compiler, &observability, scan_node)?;
            continue;
        }
        let old_index = compiler.desired().index.clone();
        let relisted = changes.len() > crate::compiler::incremental::LIST_BATCH;
        let delta = match compiler.apply(changes, cgroups) {
            Ok(delta) => delta,
            Err(error) => {
                tracing::error!(%error, "cluster state does not compile; last good state stays enforced");
                // The cgroups found went with the failed change: look again next round.
                if cgroups_found {
                    cgroup_watch.mark_due();
                }
                continue;
            }
        };
        observability.unenforced(&source.unenforced());
        let next = compiler.desired();
        // A pod that gained or lost its cgroup: its socket paths and interfaces now.
        if !same_pods(&old_index.pods_by_cgroup, &next.index.pods_by_cgroup) {
            scan_node = NodeScan::Now;
        }
        // Names for events decided under the old maps or the new ones, published before the
        // maps change; the exact new index follows the writes.
        let _ = index_tx.send(Arc::new(next.index.naming_also(&old_index, &delta)));
        // After a failed apply the maps hold an unknown mix: reconcile from what they hold.
        let applied = if resync { maps.read().and_then(|held| maps.apply(&held, next)) } else { maps.apply_delta(&delta, next) };
        match applied {
            Ok(stats) => {
                resync = false;
                if stats.writes + stats.removals > 0 {
                    let resource_version = source.resource_version();
                    // took_us: from the wake-up to the last map write (compile and writes).
                    let took_us = woke.elapsed().as_micros() as u64;
                    tracing::info!(writes = stats.writes, removals = stats.removals, generation = stats.generation, resource_version, took_us, "applied");
                }
                observability.applied(&stats);
                let _ = index_tx.send(Arc::new(next.index.clone()));
                events::foreign::report(&submitter, &old_index.foreign, &next.index.foreign);
                if relisted {
                    return_freed_memory();
                }
            }
            Err(error) => {
                tracing::error!(%error, "applying to the kernel failed; will reconcile from the maps' content");
                observability.apply_failed();
                resync = true;
            }
        }
        after_apply(&mut guard, &mut tc_pods, &mut ebpf, &compiler, &observability, scan_node)?;
    }
    tracing::info!("stopping; programs and maps stay pinned and keep enforcing the last state");
    Ok(())
}

/// The first complete state, compiled. For the API server: every watch has listed once, so
/// the first apply prunes whatever an earlier agent left behind against the whole cluster.
async fn first_state(
    source: &mut Source,
    config: &Config,
    cgroup_root: &Path,
    layout: &dyn CgroupLayout,
    observability: &Observability,
    startup: &mut Startup,
) -> Result<Incremental, RuntimeError> {
    let loaded = source.initial().await?;
    startup.phase("listed");
    warn_skipped(&loaded.skipped);
    observability.unenforced(&source.unenforced());
    let compiler = Incremental::new(config, loaded.cluster, cgroups::scan(cgroup_root, layout)?)?;
    startup.phase("compiled");
    Ok(compiler)
}

/// The kernel's side as far as it goes without the cluster: the object loaded (maps created
/// or adopted from their pins), the programs verified.
struct Prepared {
    ebpf: aya::Ebpf,
    unix_connect: Result<std::os::fd::OwnedFd, KernelError>,
    layout_error: Option<String>,
    tc_program: Result<u32, KernelError>,
}

fn prepare_kernel(bpffs_root: &Path, dirs: &bpffs::PinDirs, budget: &moat_common::budget::EventBudget) -> Result<Prepared, KernelError> {
    bpffs::prepare(bpffs_root, dirs)?;
    let (kernel_layout, layout_error) = crate::guard::run::kernel_layout();
    let mut ebpf = loader::load_budgeted(dirs, &kernel_layout, budget)?;
    // Before any map leaves `ebpf`: the hand-loaded program is linked against all of them.
    let unix_connect = loader::load_unix_connect(&ebpf);
    loader::load_programs(&mut ebpf)?;
    // A kernel whose verifier rejects it runs without: the caller reports it.
    let tc_program = tc::load(&mut ebpf);
    Ok(Prepared { ebpf, unix_connect, layout_error, tc_program })
}

/// TCP DNS isolation's programs; a kernel that refuses them runs without (TCP questions
/// pass unchecked, `moat status` says why), everything else still enforces.
fn attach_dns_tcp(ebpf: &mut aya::Ebpf, cgroup_root: &Path, dirs: &bpffs::PinDirs, observability: &Observability, attached: &mut Vec<loader::Attached>) {
    match crate::kernel::dns_tcp::attach(ebpf, cgroup_root, &dirs.links) {
        Ok(program) => {
            attached.push(program);
            observability.dns_tcp(Ok(()));
        }
        Err(error) => {
            observability.kernel_failed(&error);
            tracing::error!(%error, "DNS questions over TCP are not inspected on this kernel; over UDP they are");
            observability.dns_tcp(Err(error.to_string().lines().next().unwrap_or_default().to_string()));
        }
    }
}

/// Gives the memory freed after a list back to the system (its pages of API objects were
/// parsed and dropped). glibc keeps freed chunks in its arenas, and a list's parsed pages
/// leave ~20 MB of them at 30k pods: RSS would keep the list's peak for the agent's whole
/// life. Called after (re-)lists only: a trim walks the whole heap.
fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the process's own allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a configuration change at run time rewrites.
struct GuardInForce<'a> {
    guard: &'a mut crate::guard::run::Guard,
    hooks: &'a mut crate::guard::hooks::GuardHooks,
    ebpf: &'a mut aya::Ebpf,
    observability: &'a Observability,
}

/// A re-read configuration: `guard:` takes effect now — modes first, so a probe about to be
/// detached already acts on the new mode — then the probes are re-planned (attached or
/// detached); other fields wait for a restart, which is logged.
async fn reconfigure(running: GuardInForce<'_>, config: &mut Config, reloaded: Reloaded, args: &AgentArgs) {
    if !reloaded.restart_needed.is_empty() {
        tracing::warn!(fields = ?reloaded.restart_needed, "agent config changed; these fields take effect when the agent restarts");
    }
    if !reloaded.guard_changed {
        return;
    }
    let api_servers = guard_api_servers(&reloaded.config, args).await;
    if let Err(error) = running.guard.reconfigure(&reloaded.config.guard, &api_servers) {
        tracing::error!(%error, "runtime guard: rewriting its configuration maps failed");
    }
    if let Err(error) = crate::guard::write_modes(running.ebpf, &reloaded.config.guard) {
        tracing::error!(%error, "runtime guard: writing the new modes failed; probes stay as they were");
        return;
    }
    config.guard = reloaded.config.guard;
    let statuses = running.hooks.plan(running.ebpf, &config.guard);
    running.observability.guard_planned(&statuses, running.hooks);
    tracing::info!("agent config reloaded: runtime guard re-planned");
    crate::guard::log_modes(&statuses);
}

/// Where a host process must not connect after reading kubelet credentials: configured,
/// else the API server the kube source talks to.
async fn guard_api_servers(config: &Config, args: &AgentArgs) -> Vec<std::net::SocketAddr> {
    let mut servers = config.guard.api_servers.clone();
    if servers.is_empty() && args.files.is_empty() {
        if let Some(server) = crate::sources::kube::client::server_address(args.kubeconfig.as_deref()).await {
            servers.push(server);
        }
    }
    crate::guard::kernel_maps::resolve(&servers)
}

/// Why the loop woke.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    Tick,
    Source,
    Hangup,
}

/// The source's changes since the last round (a re-read of manifests as the changes from
/// the model).
fn poll(source: &mut Source, cluster: &Cluster) -> Vec<Change> {
    match source.poll() {
        Some(Ok(Update::Whole(loaded))) => {
            warn_skipped(&loaded.skipped);
            cluster.changes_to(&loaded.cluster)
        }
        Some(Ok(Update::Changes(changes))) => changes,
        Some(Err(error)) => {
            tracing::error!(%error, "manifests rejected; last good state stays enforced");
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// Whether `change` adds or changes a pod that may run on this node: its cgroup may be new.
fn may_run_here(change: &Change, config: &Config) -> bool {
    matches!(change, Change::Pod(_, Some(pod)) if crate::compiler::foreign::scheduled_here(config, pod))
}

fn same_pods(old: &imbl::OrdMap<u64, crate::model::PodKey>, new: &imbl::OrdMap<u64, crate::model::PodKey>) -> bool {
    old.ptr_eq(new) || old == new
}

/// This node's pod cgroups, if they differ from `known`.
fn scan_cgroups(known: &PodCgroups, root: &Path, layout: &dyn CgroupLayout, watch: &mut DirWatch) -> Option<PodCgroups> {
    match cgroups::scan_watched(root, layout, watch) {
        Ok(found) if found != *known => Some(found),
        Ok(_) => None,
        Err(error) => {
            tracing::error!(%error, "scanning pod cgroups failed");
            None
        }
    }
}

/// How much of the node's filesystem a round reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeScan {
    /// A watch event of nothing on this node: the model only.
    No,
    /// The tick: what the watches say may have changed, and pods still being set up.
    IfChanged,
    /// Pod cgroups came or went: everything about the pods.
    Now,
}

/// After the maps, kept off the path from a watch event to the map write: the runtime
/// guard's actors follow the model every round; what is read from the node's filesystem —
/// the guard's files, volumes and socket paths, the ICMP program on pods' interfaces — only
/// when pod cgroups changed, and on the tick where it may have changed (`NodeScan`).
fn after_apply(
    guard: &mut crate::guard::run::Guard,
    tc_pods: &mut Option<TcPods>,
    ebpf: &mut aya::Ebpf,
    compiler: &Incremental,
    observability: &Observability,
    scan_node: NodeScan,
) -> Result<(), RuntimeError> {
    let (index, cluster) = (&compiler.desired().index, compiler.cluster());
    let guarded = match scan_node {
        NodeScan::No => guard.follow_model(index, cluster),
        NodeScan::IfChanged | NodeScan::Now => guard.refresh(index, cluster, scan_node == NodeScan::Now),
    };
    if let Err(error) = guarded {
        tracing::error!(%error, "runtime guard: updating its maps failed");
    }
    if let (true, Some(tc_pods)) = (scan_node != NodeScan::No, tc_pods.as_mut()) {
        tc_pods.reconcile(tc::program(ebpf)?, compiler.cgroups(), index, cluster, scan_node == NodeScan::Now);
        observability.tc_pods(tc_pods.status());
    }
    Ok(())
}

fn warn_skipped(skipped: &std::collections::BTreeMap<String, usize>) {
    if !skipped.is_empty() {
        tracing::info!(?skipped, "objects of kinds moat does not read were skipped");
    }
}

/// How long each step of start-up took, for the "enforcing" log line.
struct Startup {
    last: std::time::Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Startup {
    fn begin() -> Self {
        Self { last: std::time::Instant::now(), phases: Vec::new() }
    }

    fn phase(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.phases.iter().enumerate() {
            write!(f, "{}{name} {} ms", if i == 0 { "" } else { ", " }, took.as_millis())?;
        }
        Ok(())
    }
}
