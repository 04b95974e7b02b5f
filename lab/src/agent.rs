//! The lab's agent: `moat agent` over the lab's manifests and cgroup tree, detached, with
//! its own instance (so its pins never meet another agent's).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use super::desired::manifests_dir;
use super::node::{self, NodeLayout};
use super::fsutil::{current_exe, tail, write_atomic};
use super::state::{AgentState, LabState};
use super::{lab_dir, mounts, process, sys, LabError, NameArg};
use moat_agent::cli::lab::{admin_socket, find_binary, AGENT_BIN_ENV};
use moat_agent::config::Config;

mod container;

/// How long `lab up` waits for the agent; `MOAT_LAB_READY_SECS` raises it where the kernel is
/// slow to verify programs (emulated VMs of the kernel matrix).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn ready_timeout() -> Duration {
    std::env::var("MOAT_LAB_READY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(READY_TIMEOUT)
}
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// Start the lab's agent and wait until it is ready.
    Start(NameArg),
    /// Stop it gracefully (SIGTERM, then SIGKILL after 5 s).
    Stop(NameArg),
    /// SIGKILL it: enforcement must stay in place without it (fail-static).
    Kill(NameArg),
    /// Replace the agent's configuration with FILE (the lab's keys merged in, as with
    /// `lab up --config`); a running agent takes up its `guard:` section at once.
    Config(ConfigArgs),
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// The agent configuration (YAML).
    pub file: PathBuf,
}

pub fn run(command: AgentCommand) -> Result<(), LabError> {
    match command {
        AgentCommand::Start(args) => {
            let mut state = LabState::load(&args.name)?;
            if let Some(agent) = state
                .agent
                .as_ref()
                .filter(|a| process::is_alive(a.pid, &marker(&args.name)))
            {
                return Err(LabError::Usage(format!(
                    "the agent of lab {} is running (pid {})",
                    args.name, agent.pid
                )));
            }
            let config = config_path(&args.name);
            if !config.exists() {
                write_config(&state, None)?;
            }
            let agent = start(&state)?;
            println!(
                "agent started (pid {}), log {}",
                agent.pid,
                agent.log.display()
            );
            state.agent = Some(agent);
            state.save()
        }
        AgentCommand::Stop(args) => halt(&args.name, false),
        AgentCommand::Kill(args) => halt(&args.name, true),
        AgentCommand::Config(args) => {
            let state = LabState::load(&args.lab.name)?;
            let path = write_config(&state, Some(&args.file))?;
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}

fn halt(name: &str, kill: bool) -> Result<(), LabError> {
    let mut state = LabState::load(name)?;
    let Some(agent) = state.agent.take() else {
        println!("lab {name} has no agent");
        return Ok(());
    };
    let marker = marker(name);
    if kill {
        process::kill(agent.pid, &marker);
        println!("agent (pid {}) killed", agent.pid);
    } else {
        let forced = process::terminate(agent.pid, &marker, STOP_GRACE);
        println!(
            "agent (pid {}) stopped{}",
            agent.pid,
            if forced { " (SIGKILL after 5 s)" } else { "" }
        );
    }
    state.save()
}

pub fn config_path(lab: &str) -> PathBuf {
    lab_dir(lab).join("agent.yaml")
}

/// Appears in the agent's command line (its --config), and nowhere else.
pub fn marker(lab: &str) -> String {
    config_path(lab).display().to_string()
}

/// Writes agent.yaml: the user's config (a YAML mapping, or empty) with the lab's keys
/// overridden, validated as the agent would.
pub fn write_config(state: &LabState, user: Option<&Path>) -> Result<PathBuf, LabError> {
    let mut mapping = serde_yaml::Mapping::new();
    if let Some(user) = user {
        let text =
            std::fs::read_to_string(user).map_err(|e| LabError::io("reading config", user, e))?;
        if !text.trim().is_empty() {
            let value: serde_yaml::Value = serde_yaml::from_str(&text)
                .map_err(|e| LabError::Usage(format!("config {}: {e}", user.display())))?;
            match value {
                serde_yaml::Value::Mapping(user_mapping) => mapping = user_mapping,
                serde_yaml::Value::Null => {}
                _ => {
                    return Err(LabError::Usage(format!(
                        "config {}: not a YAML mapping",
                        user.display()
                    )))
                }
            }
        }
    }
    let cgroup_root = state.cgroup_root.display().to_string();
    for (key, value) in [
        ("instance", format!("lab-{}", state.name)),
        ("cgroupRoot", cgroup_root),
        ("cgroupLayout", "lab".into()),
        ("adminSocket", admin_socket(&state.name).display().to_string()),
    ] {
        mapping.insert(key.into(), value.into());
    }
    merge_guard(&mut mapping, state, user.unwrap_or(&config_path(&state.name)))?;
    // Never a fixed port: concurrent labs would collide. A free loopback port, kept in the
    // config so restarts of the lab's agent keep it.
    if !mapping.contains_key("metricsAddress") {
        let kept = Config::load(&config_path(&state.name)).ok().map(|c| c.metrics_address);
        let address = match kept {
            Some(address) => address,
            None => free_loopback_address()?,
        };
        mapping.insert("metricsAddress".into(), address.into());
    }
    let text = serde_yaml::to_string(&mapping)
        .map_err(|e| LabError::Internal(format!("agent.yaml: {e}")))?;
    let path = config_path(&state.name);
    // Errors name the user's file: that is where the fix goes.
    Config::parse(&text, user.unwrap_or(&path))?;
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Points the guard at the lab's node: every location under `guard.kubelet` and
/// `guard.runtime`, `guard.apiServers` when the lab knows one, and `guard.hostRoot` for an
/// agent in a container, unless the user's configuration set it. The node's paths stay the
/// host's: an agent in a container reads them below `guard.hostRoot`.
fn merge_guard(mapping: &mut serde_yaml::Mapping, state: &LabState, file: &Path) -> Result<(), LabError> {
    let layout = NodeLayout::of(&state.name);
    let text = |path: &Path| serde_yaml::Value::from(path.display().to_string());
    let list = |paths: &[PathBuf]| serde_yaml::Value::Sequence(paths.iter().map(|p| text(p)).collect());
    let guard = child(mapping, "guard", "guard", file)?;
    let kubelet = child(guard, "kubelet", "guard.kubelet", file)?;
    for (key, value) in [
        ("executable", text(&layout.kubelet_executable)),
        ("cgroup", text(&layout.kubelet_cgroup)),
        ("root", text(&layout.kubelet_root)),
        ("pkiDir", text(&layout.pki_dir)),
        ("kubeconfigs", list(&layout.kubeconfigs)),
    ] {
        kubelet.entry(key.into()).or_insert(value);
    }
    let runtime = child(guard, "runtime", "guard.runtime", file)?;
    runtime.entry("binaries".into()).or_insert_with(|| list(&layout.runtime_binaries));
    runtime.entry("sockets".into()).or_insert_with(|| list(&layout.runtime_sockets));
    if let Some(server) = state.api_server.as_deref().and_then(node::host_port) {
        guard.entry("apiServers".into()).or_insert_with(|| serde_yaml::Value::Sequence(vec![server.into()]));
    }
    if state.agent_container {
        guard.entry("hostRoot".into()).or_insert_with(|| text(&host_dir(&state.name)));
    }
    Ok(())
}

/// The mapping under `key` (made when absent or null); an error naming the field otherwise.
fn child<'a>(
    mapping: &'a mut serde_yaml::Mapping,
    key: &str,
    field: &str,
    file: &Path,
) -> Result<&'a mut serde_yaml::Mapping, LabError> {
    let value = mapping.entry(key.into()).or_insert(serde_yaml::Value::Null);
    if value.is_null() {
        *value = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    value
        .as_mapping_mut()
        .ok_or_else(|| LabError::Usage(format!("config {}: field {field}: not a mapping", file.display())))
}

fn free_loopback_address() -> Result<String, LabError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LabError::io("binding a free port on", "127.0.0.1:0", e))?;
    let address = listener.local_addr().map_err(|e| LabError::io("reading the address of", "127.0.0.1:0", e))?;
    Ok(address.to_string())
}

/// The bpffs root the lab's agent pins under (from agent.yaml; default if unreadable).
pub fn bpffs_root(lab: &str) -> PathBuf {
    Config::load(&config_path(lab))
        .map(|c| c.bpffs_root)
        .unwrap_or_else(|_| Config::default().bpffs_root)
}

/// Starts the agent detached (in a mount namespace of its own for `--agent-container`) and
/// waits for its ready file.
pub fn start(state: &LabState) -> Result<AgentState, LabError> {
    let lab = state.name.as_str();
    let dir = lab_dir(lab);
    let log = dir.join("agent.log");
    let ready_file = dir.join("agent.ready");
    let config = config_path(lab);
    match std::fs::remove_file(&ready_file) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(LabError::io("removing stale", &ready_file, error));
        }
        _ => {}
    }
    let exe = agent_exe()?;
    let argv: Vec<String> = vec![
        exe.display().to_string(),
        "agent".into(),
        "-f".into(),
        manifests_dir(lab).display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--ready-file".into(),
        ready_file.display().to_string(),
    ];
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| LabError::io("opening", &log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::io("opening", &log, e))?;
    let mut command = std::process::Command::new(&exe);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let namespace = if state.agent_container {
        prepare_container(lab)?;
        Some(container::prepare(lab)?)
    } else {
        None
    };
    let (entry, report) = namespace.unzip();
    // SAFETY: setsid(2) and `Entry::enter` (system calls on strings made before the fork)
    // are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            entry.as_ref().map_or(Ok(()), container::Entry::enter)
        });
    }
    let spawned = command.spawn();
    let mut child = spawned.map_err(|source| match report {
        Some(report) => report.error(source, &argv),
        None => LabError::Spawn { command: argv.join(" "), source },
    })?;
    let failed = |message: String| LabError::Agent {
        message,
        log: log.clone(),
        tail: tail(&log, 20),
    };
    let timeout = ready_timeout();
    let deadline = Instant::now() + timeout;
    loop {
        if ready_file.exists() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(format!("exited before it was ready ({status})")));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!(
                "not ready after {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let loaded = Config::load(&config).ok();
    Ok(AgentState {
        pid: child.id(),
        argv,
        log,
        ready_file,
        admin_socket: loaded.as_ref().map(Config::admin_socket_path),
        metrics_address: loaded.map(|c| c.metrics_address),
        config,
    })
}

/// `<lab dir>/host`: where an agent in a container sees the host's `/` (`guard.hostRoot`).
pub fn host_dir(lab: &str) -> PathBuf {
    lab_dir(lab).join("host")
}

/// Makes `<lab dir>/host`, and the node tree a shared mount in the host's mount namespace:
/// the host's mounts are private, and only through a shared master does a pod volume
/// mounted later below the node reach the agent's namespace. Idempotent.
pub fn prepare_container(lab: &str) -> Result<(), LabError> {
    let host = host_dir(lab);
    std::fs::create_dir_all(&host).map_err(|e| LabError::io("creating", &host, e))?;
    let node = NodeLayout::of(lab).root;
    if !mounts::is_mount_point(&node)? {
        // Recursive: volumes already mounted below stay in the host's view.
        sys::bind(&node, &node, false).map_err(|e| LabError::io("binding onto itself", &node, e))?;
    }
    sys::mount(None, &node, None, libc::MS_REC | libc::MS_SHARED, None)
        .map_err(|e| LabError::io("making a shared mount of", &node, e))
}

/// The `moat` binary the lab runs as its agent: `$MOAT_AGENT_BIN` (which `moat lab` sets to
/// itself), else `moat` beside this binary, else on PATH.
pub fn agent_exe() -> Result<PathBuf, LabError> {
    if let Some(bin) = std::env::var_os(AGENT_BIN_ENV) {
        return Ok(bin.into());
    }
    let own = current_exe()?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_binary("moat", Some(&own), &path).ok_or_else(|| {
        LabError::Usage(format!(
            "the lab's agent is the `moat` binary: not found beside {} nor on PATH \
             (build it with `cargo build -p moat-agent`, or run the lab as `moat lab`)",
            own.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard_of(state: &LabState, user: &str) -> serde_yaml::Mapping {
        let mut mapping: serde_yaml::Mapping = serde_yaml::from_str(user).unwrap();
        merge_guard(&mut mapping, state, Path::new("user.yaml")).unwrap();
        mapping["guard"].as_mapping().unwrap().clone()
    }

    #[test]
    fn an_agent_in_a_container_reads_the_node_below_the_host_root() {
        let mut state = LabState { name: "hr".into(), ..Default::default() };
        assert!(!guard_of(&state, "{}").contains_key("hostRoot"));
        state.agent_container = true;
        let guard = guard_of(&state, "{}");
        assert_eq!(guard["hostRoot"].as_str(), Some("/run/moat/lab/hr/host"));
        // Node paths stay the host's: the agent resolves them below hostRoot.
        assert_eq!(guard["kubelet"]["root"].as_str(), Some("/run/moat/lab/hr/node/var/lib/kubelet"));
        let guard = guard_of(&state, "guard: {hostRoot: /elsewhere}");
        assert_eq!(guard["hostRoot"].as_str(), Some("/elsewhere"));
    }
}
