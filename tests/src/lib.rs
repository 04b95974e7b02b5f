//! Harness for moat's privileged integration tests: drives the built `moat` binary and its
//! lab (a node on the real kernel: pods with their own cgroups and namespaces, a node file
//! tree with the kubelet's credentials and pod volumes, and a stand-in kubelet).
//!
//! Every test needs root. A test that is not root fails with a message saying so; nothing
//! is skipped silently. Each [`Lab`] gets a unique short name and is torn down by `Drop`,
//! also when the test panics.
//!
//! Failures of the lab commands panic with the command line and its output: these are
//! assertions, and a test should stop at the first one.

pub mod dns;
pub mod guard;
pub mod netpol;
pub mod observe;

pub use moat_lab::node::NodeLayout;

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the lab keeps per-lab state (the agent's log is `<dir>/<name>/agent.log`).
pub const LAB_RUN_DIR: &str = "/run/moat/lab";

/// The `moat` binary under test: `$MOAT_BIN`, else `<target>/debug/moat` where `<target>`
/// is `$CARGO_TARGET_DIR` (relative paths taken from the workspace root) or, failing that,
/// the target directory this test binary was built into, or `<workspace>/target`.
///
/// Panics if it does not exist.
pub fn moat_bin() -> PathBuf {
    let candidates = bin_candidates(
        std::env::var_os("MOAT_BIN").map(PathBuf::from),
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
        std::env::current_exe().ok(),
    );
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => path.clone(),
        None => panic!(
            "the moat binary was not found (looked at {}); build it with `cargo build -p moat-agent` \
             or point MOAT_BIN at it",
            candidates.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `moat-lab` beside `moat`: where `moat lab` looks first, and where cargo builds it.
pub fn lab_bin_beside(moat: &Path) -> PathBuf {
    moat.with_file_name("moat-lab")
}

fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

fn bin_candidates(
    moat_bin: Option<PathBuf>,
    target_dir: Option<PathBuf>,
    current_exe: Option<PathBuf>,
) -> Vec<PathBuf> {
    // MOAT_BIN is taken as given, existing or not: a wrong value should fail loudly.
    if let Some(bin) = moat_bin {
        return vec![bin];
    }
    let mut candidates = Vec::new();
    if let Some(dir) = target_dir {
        candidates.push(workspace_root().join(dir).join("debug/moat"));
    }
    // Test binaries live in <target>/debug/deps/.
    if let Some(deps) = current_exe.as_deref().and_then(Path::parent) {
        if deps.file_name().is_some_and(|name| name == "deps") {
            if let Some(profile) = deps.parent() {
                candidates.push(profile.join("moat"));
            }
        }
    }
    candidates.push(workspace_root().join("target/debug/moat"));
    candidates.dedup();
    candidates
}

/// Panics unless running as root: the lab creates network namespaces, cgroups and BPF links.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert!(
        uid == 0,
        "moat integration tests need root (running as uid {uid}); run `cargo xtask test` as root \
         or `sudo -E cargo test -p moat-integration`"
    );
}

/// A lab name unique to this process and call: `t` + pid + `n` + counter (at most 20 chars).
pub fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{}n{n}", std::process::id())
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Anything else the lab reported (e.g. a timeout), verbatim.
    Other(String),
}

impl Verdict {
    pub fn parse(text: &str) -> Verdict {
        match text.trim().to_ascii_lowercase().as_str() {
            "allow" | "allowed" => Verdict::Allowed,
            "deny" | "denied" => Verdict::Denied,
            other => Verdict::Other(other.to_string()),
        }
    }
}

/// Options for [`Lab::up`].
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// `--no-agent`: pods only, no program attached.
    pub no_agent: bool,
    /// `--config FILE`: the agent's configuration.
    pub config: Option<PathBuf>,
    /// `--api-server URL`: the API server the stand-in kubelet talks to.
    pub api_server: Option<String>,
    /// `--agent-container`: the agent in a mount namespace of its own, the host's `/` at
    /// `<lab dir>/host` (`guard.hostRoot`), as the DaemonSet runs it.
    pub agent_container: bool,
}

/// `1`: every lab's agent runs as the DaemonSet runs it (`--agent-container`), so any test
/// can be run against that layout.
pub const AGENT_CONTAINER_ENV: &str = "MOAT_TEST_AGENT_CONTAINER";

/// What a command printed.
#[derive(Debug)]
pub struct Output {
    pub command: String,
    pub success: bool,
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics, showing everything, unless the command exited 0.
    pub fn ok(self) -> Output {
        if !self.success {
            panic!("{self}");
        }
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.signal {
            Some(signal) => writeln!(f, "`{}` killed by signal {signal}", self.command)?,
            None => writeln!(f, "`{}` exited with {:?}", self.command, self.code)?,
        }
        writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr\n{}", self.stderr.trim_end())
    }
}

pub(crate) fn output_of(cmd: &mut Command) -> Output {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    match cmd.output() {
        Ok(output) => Output {
            command,
            success: output.status.success(),
            code: output.status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&output.status),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        },
        Err(err) => panic!("could not start `{command}`: {err}"),
    }
}

/// A lab brought up for one test; `moat lab down` runs when it is dropped.
pub struct Lab {
    moat: PathBuf,
    name: String,
}

impl Lab {
    /// `moat lab up -f FILE... --name <unique> [--no-agent] [--config FILE] [--agent-container]`.
    pub fn up<P: AsRef<Path>>(manifest_files: &[P], options: UpOptions) -> Lab {
        // The lab exists before `up` is checked, so a half-built lab is torn down as well.
        let (lab, output) = Lab::try_up(manifest_files, options);
        output.ok();
        lab
    }

    /// Like [`Lab::up`], but returns `up`'s output whatever its status. The lab is still torn
    /// down on drop.
    pub fn try_up<P: AsRef<Path>>(manifest_files: &[P], options: UpOptions) -> (Lab, Output) {
        let lab = Lab::reserve();
        let output = lab.try_start(manifest_files, options);
        (lab, output)
    }

    /// A lab with a fresh unique name that is not up yet: its node paths ([`Lab::node`]) are
    /// known, so manifests can name them (a hostPath of the kubelet's root). Bring it up with
    /// [`Lab::start`]; it is torn down on drop either way.
    pub fn reserve() -> Lab {
        require_root();
        Lab { moat: moat_bin(), name: unique_name() }
    }

    /// `moat lab up` for a [`Lab::reserve`]d lab; panics unless it succeeds.
    pub fn start<P: AsRef<Path>>(&self, manifest_files: &[P], options: UpOptions) {
        self.try_start(manifest_files, options).ok();
    }

    /// `moat lab up` for a [`Lab::reserve`]d lab, whatever its exit status.
    pub fn try_start<P: AsRef<Path>>(&self, manifest_files: &[P], options: UpOptions) -> Output {
        let lab = self;
        let mut args: Vec<String> = vec!["up".into(), "--name".into(), lab.name.clone()];
        for file in manifest_files {
            args.push("-f".into());
            args.push(file.as_ref().display().to_string());
        }
        if options.no_agent {
            args.push("--no-agent".into());
        }
        if let Some(config) = &options.config {
            args.push("--config".into());
            args.push(config.display().to_string());
        }
        if let Some(server) = &options.api_server {
            args.push("--api-server".into());
            args.push(server.clone());
        }
        if options.agent_container || std::env::var_os(AGENT_CONTAINER_ENV).is_some_and(|v| v == "1") {
            args.push("--agent-container".into());
        }
        lab.lab(&args)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `moat lab ARGS...`, whatever its exit status. Add `--name` yourself.
    pub fn lab<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        output_of(Command::new(&self.moat).arg("lab").args(args))
    }

    /// `moat lab probe --from NS/POD --to NS/POD --port PORT[/PROTO] -o json`.
    ///
    /// A denied probe may exit non-zero; only output without a verdict fails the test.
    pub fn probe(&self, from: &str, to: &str, port: &str) -> Verdict {
        self.probe_family(from, to, port, Family::V4)
    }

    /// `moat lab probe --matrix --port PORT -o json`: (from, to, verdict) for every pair.
    pub fn matrix(&self, port: &str) -> Vec<(String, String, Verdict)> {
        let output = self
            .lab(&["probe", "--name", &self.name, "--matrix", "--port", port, "-o", "json"])
            .ok();
        match parse_matrix(&output.stdout) {
            Ok(cells) => cells,
            Err(err) => panic!("unreadable matrix ({err})\n{output}"),
        }
    }

    /// `moat lab apply --name N -f FILE...`: add or change objects in the running lab.
    pub fn apply<P: AsRef<Path>>(&self, manifest_files: &[P]) {
        let mut args: Vec<String> = vec!["apply".into(), "--name".into(), self.name.clone()];
        for file in manifest_files {
            args.push("-f".into());
            args.push(file.as_ref().display().to_string());
        }
        self.lab(&args).ok();
    }

    /// `moat lab agent start`.
    pub fn agent_start(&self) {
        self.lab(&["agent", "start", "--name", &self.name]).ok();
    }

    /// `moat lab agent stop`: a clean shutdown.
    pub fn agent_stop(&self) {
        self.lab(&["agent", "stop", "--name", &self.name]).ok();
    }

    /// `moat lab agent kill`: SIGKILL, as if the agent crashed.
    pub fn agent_kill(&self) {
        self.lab(&["agent", "kill", "--name", &self.name]).ok();
    }

    /// `moat status --lab NAME -o json`: the agent's own status (capabilities, probes,
    /// detections, events).
    pub fn agent_status(&self) -> serde_json::Value {
        let output = Command::new(&self.moat).args(["status", "--lab", &self.name, "-o", "json"]).output().expect("moat status");
        assert!(output.status.success(), "moat status: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("moat status prints JSON")
    }

    /// The lab agent's log so far (empty if it has not written one).
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("agent.log")).unwrap_or_default()
    }

    /// `/run/moat/lab/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        Path::new(LAB_RUN_DIR).join(&self.name)
    }

    /// `/run/moat/lab/<name>/manifests`: the directory the lab's agent reads.
    pub fn manifests_dir(&self) -> PathBuf {
        self.run_dir().join("manifests")
    }

    /// The agent's pin directory for this lab: `/sys/fs/bpf/moat/lab-<name>`.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/moat/lab-{}", self.name))
    }

    /// The `moat` binary under test.
    pub fn moat(&self) -> &Path {
        &self.moat
    }

    /// The `moat-lab` binary under test (what runs inside pods: `__pod-*`).
    pub fn lab_bin(&self) -> PathBuf {
        lab_bin_beside(&self.moat)
    }

    /// `moat lab status -o json`.
    pub fn status(&self) -> serde_json::Value {
        let output = self.lab(&["status", "--name", &self.name, "-o", "json"]).ok();
        serde_json::from_str(output.stdout.trim())
            .unwrap_or_else(|err| panic!("status is not JSON ({err})\n{output}"))
    }

    /// The address of `pod` (`ns/name`) in `family`, from the lab's status.
    pub fn pod_ip(&self, pod: &str, family: Family) -> IpAddr {
        let status = self.status();
        let key = match family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        status["pods"][pod][key]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("no {key} for pod {pod} in the lab's status: {status}"))
    }

    /// Like [`Lab::probe`], over `family`.
    pub fn probe_family(&self, from: &str, to: &str, port: &str, family: Family) -> Verdict {
        let output = self.lab(&[
            "probe", "--name", &self.name, "--from", from, "--to", to, "--port", port, "--family",
            family.arg(), "-o", "json",
        ]);
        match parse_probe(&output.stdout) {
            Some(verdict) => verdict,
            None => panic!("no verdict in the probe's output\n{output}"),
        }
    }

    /// Like [`Lab::matrix`], over `family`.
    pub fn matrix_family(&self, port: &str, family: Family) -> Vec<(String, String, Verdict)> {
        let output = self
            .lab(&["probe", "--name", &self.name, "--matrix", "--port", port, "--family", family.arg(), "-o", "json"])
            .ok();
        match parse_matrix(&output.stdout) {
            Ok(cells) => cells,
            Err(err) => panic!("unreadable matrix ({err})\n{output}"),
        }
    }

    /// `moat lab exec --name N POD -- ARGS...`, whatever its exit status.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, pod: &str, args: &[S]) -> Output {
        output_of(Command::new(&self.moat).args(["lab", "exec", "--name", &self.name, pod, "--"]).args(args))
    }

    /// A TCP connection from `from` to `to`'s port `port`, held open by `__pod-connect --hold`
    /// running inside `from` (via `lab exec`). Panics unless it connects.
    pub fn hold(&self, from: &str, to: &str, port: u16, family: Family) -> HeldConnection {
        let ip = self.pod_ip(to, family);
        HeldConnection::open(&self.moat, &self.name, from, ip, port)
    }

    /// A UDP session from `from` to `to`'s port `port`: one socket, held by `__pod-connect
    /// --hold --protocol udp` inside `from`; each ping is one datagram and its echo.
    pub fn hold_udp(&self, from: &str, to: &str, port: u16, family: Family) -> HeldConnection {
        let ip = self.pod_ip(to, family);
        HeldConnection::open_over(&self.moat, &self.name, from, ip, port, "udp")
    }

    /// Polls the agent's log (every 50 ms) until a line contains `pattern`; returns that line,
    /// or the log's tail when `timeout` passes.
    pub fn wait_log(&self, pattern: &str, timeout: Duration) -> Result<String, String> {
        self.wait_log_line(|line| line.contains(pattern), timeout)
            .map_err(|tail| format!("no line containing {pattern:?} in the agent's log after {timeout:?}; tail:\n{tail}"))
    }

    /// Polls the agent's log until a line satisfies `matches`. Err holds the log's tail.
    pub fn wait_log_line(&self, matches: impl Fn(&str) -> bool, timeout: Duration) -> Result<String, String> {
        let found = eventually(timeout, || self.agent_log().lines().find(|line| matches(line)).map(String::from));
        found.ok_or_else(|| {
            let log = self.agent_log();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        })
    }

    /// The agent log's lines that parse as JSON.
    pub fn agent_log_json(&self) -> Vec<serde_json::Value> {
        self.agent_log().lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// The lab's node: kubelet root, PKI, kubeconfigs, kubelet executable and cgroup, runtime
    /// binaries and sockets (known before `up`: they derive from the name).
    pub fn node(&self) -> NodeLayout {
        NodeLayout::of(&self.name)
    }

    /// `<node>/var/lib/kubelet`.
    pub fn kubelet_root(&self) -> PathBuf {
        self.node().kubelet_root
    }

    /// `<node>/var/lib/kubelet/pki`.
    pub fn pki_dir(&self) -> PathBuf {
        self.node().pki_dir
    }

    /// `<pki>/kubelet-client-current.pem`: the rotation symlink (not resolved).
    pub fn current_cert(&self) -> PathBuf {
        self.node().current_client_cert()
    }

    /// `kubelet.conf`, `bootstrap-kubelet.conf` and `<kubelet root>/kubeconfig`.
    pub fn kubeconfigs(&self) -> Vec<PathBuf> {
        self.node().kubeconfigs
    }

    /// `<node>/usr/bin/kubelet`: the stand-in kubelet's executable.
    pub fn kubelet_executable(&self) -> PathBuf {
        self.node().kubelet_executable
    }

    /// The stand-in kubelet's cgroup directory (absolute, under the cgroup2 mount).
    pub fn kubelet_cgroup(&self) -> PathBuf {
        let relative = self.node().kubelet_cgroup;
        cgroup2_mount().expect("cgroup v2 is mounted").join(relative.strip_prefix("/").unwrap_or(&relative))
    }

    /// `<node>/usr/bin/runc`: the runtime binary stand-in.
    pub fn runtime_binary(&self) -> PathBuf {
        self.node().runtime_binaries[0].clone()
    }

    /// `<node>/run/containerd/containerd.sock`: served by the stand-in kubelet.
    pub fn runtime_socket(&self) -> PathBuf {
        self.node().runtime_sockets[0].clone()
    }

    /// The stand-in kubelet's pid (from the lab's status).
    pub fn kubelet_pid(&self) -> u32 {
        let status = self.status();
        status["kubelet"]["pid"].as_u64().map(|pid| pid as u32).unwrap_or_else(|| panic!("no kubelet pid in the lab's status: {status}"))
    }

    /// `moat lab kubelet rotate`: the stand-in kubelet writes a new dated client certificate and
    /// swaps the symlink. Returns the new certificate file.
    pub fn kubelet_rotate(&self) -> PathBuf {
        let output = self.lab(&["kubelet", "rotate", "--name", &self.name]).ok();
        PathBuf::from(output.stdout.trim())
    }

    /// `moat lab kubelet read`: returns once the stand-in kubelet has read its credentials
    /// (and reached the API server, if the lab has one).
    pub fn kubelet_read(&self) {
        self.lab(&["kubelet", "read", "--name", &self.name]).ok();
    }

    /// The uid of `pod` (`ns/name`): `metadata.uid`, or the one the lab derived.
    pub fn pod_uid(&self, pod: &str) -> String {
        let status = self.status();
        status["pods"][pod]["uid"].as_str().map(String::from).unwrap_or_else(|| panic!("no uid for pod {pod}: {status}"))
    }

    /// Host pid of `pod`'s sandbox (PID 1 of its PID namespace, unless hostPID).
    pub fn sandbox_pid(&self, pod: &str) -> u32 {
        let status = self.status();
        status["pods"][pod]["sandboxPid"].as_u64().map(|pid| pid as u32).unwrap_or_else(|| panic!("no sandbox for pod {pod}: {status}"))
    }

    /// Where volume `volume` of `pod` is on the node (for a hostPath, the host path).
    pub fn pod_volume(&self, pod: &str, volume: &str) -> PathBuf {
        let status = self.status();
        let volumes = status["pods"][pod]["volumes"].as_array().cloned().unwrap_or_default();
        volumes
            .iter()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["path"].as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no volume {volume} of pod {pod}: {status}"))
    }

    /// The pod's projected service-account volume (`kube-api-access-*`), holding `token`,
    /// `ca.crt` and `namespace`.
    pub fn pod_token_volume(&self, pod: &str) -> PathBuf {
        let status = self.status();
        let volumes = status["pods"][pod]["volumes"].as_array().cloned().unwrap_or_default();
        volumes
            .iter()
            .filter_map(|v| v["path"].as_str())
            .find(|path| path.contains("/kubernetes.io~projected/kube-api-access-"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no kube-api-access volume for pod {pod}: {status}"))
    }

    /// Like [`Lab::exec`], panicking unless the command exits 0; its stdout.
    pub fn exec_ok<S: AsRef<std::ffi::OsStr>>(&self, pod: &str, args: &[S]) -> String {
        self.exec(pod, args).ok().stdout
    }
}

/// `timeout` stretched by `MOAT_TEST_TIME_SCALE` (an emulated VM of the kernel matrix runs
/// several times slower than the host; `cargo xtask vm` sets it).
pub fn scaled(timeout: Duration) -> Duration {
    let scale = std::env::var("MOAT_TEST_TIME_SCALE").ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(1);
    timeout * scale.max(1)
}

/// Calls `attempt` every 50 ms until it returns Some or `timeout` (scaled, see [`scaled`])
/// has passed (it is always called at least once, and once more at the deadline).
pub fn eventually<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Probes until `probe()` returns `want` (every 50 ms, up to `timeout`); panics with the last
/// verdict otherwise. Returns how long it took.
pub fn wait_verdict(what: &str, want: Verdict, timeout: Duration, mut probe: impl FnMut() -> Verdict) -> Duration {
    let start = Instant::now();
    let mut last = None;
    let reached = eventually(timeout, || {
        let verdict = probe();
        let done = verdict == want;
        last = Some(verdict);
        done.then_some(())
    });
    assert!(reached.is_some(), "{what}: wanted {want:?} within {timeout:?}, last verdict {last:?}");
    start.elapsed()
}

/// An address family for probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The value of `moat lab probe --family`.
    pub fn arg(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }
}

/// A long-lived TCP connection from inside a pod: `moat lab exec ... -- moat-lab __pod-connect
/// --hold`, which echoes every stdin line over the connection and answers `ok` or
/// `fail: ...`. Killed on drop.
pub struct HeldConnection {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    description: String,
}

/// How long [`HeldConnection::ping`] waits for an answer. The client's own socket timeout
/// (`--timeout-ms`) is shorter, so a lost echo is answered `fail: ...` before this.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
const HOLD_SOCKET_TIMEOUT_MS: &str = "1000";

impl HeldConnection {
    fn open(moat: &Path, lab: &str, from: &str, ip: IpAddr, port: u16) -> HeldConnection {
        HeldConnection::open_over(moat, lab, from, ip, port, "tcp")
    }

    fn open_over(moat: &Path, lab: &str, from: &str, ip: IpAddr, port: u16, protocol: &str) -> HeldConnection {
        let description = format!("held {protocol} connection {from} -> {ip} port {port}");
        let mut child = Command::new(moat)
            .args(["lab", "exec", "--name", lab, from, "--"])
            .arg(lab_bin_beside(moat))
            .args(["__pod-connect", "--to", &ip.to_string(), "--port", &port.to_string()])
            .args(["--protocol", protocol, "--hold", "--timeout-ms", HOLD_SOCKET_TIMEOUT_MS])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("{description}: could not start `moat lab exec`: {err}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let held = HeldConnection { child, stdin, lines, description };
        match held.lines.recv_timeout(PING_TIMEOUT) {
            Ok(line) if line.contains("\"verdict\":\"allow\"") => held,
            other => panic!("{}: did not connect: {other:?}", held.description),
        }
    }

    /// Sends one line over the connection and waits for the echo: Ok, or what went wrong.
    pub fn ping(&mut self) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(b"ping\n")
            .and_then(|()| stdin.flush())
            .map_err(|err| format!("{}: writing to the client: {err}", self.description))?;
        match self.lines.recv_timeout(PING_TIMEOUT) {
            Ok(line) if line == "ok" => Ok(()),
            Ok(line) => Err(line),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("{}: no answer in {PING_TIMEOUT:?}", self.description)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!("{}: the client exited", self.description)),
        }
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything of lab `name` that exists: its run directory, cgroup, pins, network
/// namespaces, mounts (pod volumes) and processes (sandboxes, kubelet). Empty once `moat lab
/// down` has run (or when `up` failed cleanly).
pub fn leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let run_dir = Path::new(LAB_RUN_DIR).join(name);
    let mut paths = vec![
        run_dir.clone(),
        PathBuf::from(format!("/run/moat/lab-{name}")),
        PathBuf::from(format!("/sys/fs/bpf/moat/lab-{name}")),
    ];
    if let Some(cgroup2) = cgroup2_mount() {
        paths.push(cgroup2.join(format!("moat-lab-{name}")));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if let Some(point) = line.split(' ').nth(4).filter(|point| Path::new(point).starts_with(&run_dir)) {
            found.push(format!("mount {point}"));
        }
    }
    // Processes whose command line names the lab's directory (sandboxes, the kubelet, its agent).
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let prefix = format!("{}/", run_dir.display());
        if pid != own && cmdline.contains(&prefix) && !cmdline.contains(" lab down ") {
            found.push(format!("process {pid}: {}", cmdline.trim()));
        }
    }
    found.extend(paths.into_iter().filter(|path| path.exists()).map(|path| path.display().to_string()));
    let prefix = format!("moat-{name}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let netns = entry.file_name().to_string_lossy().into_owned();
            if netns.starts_with(&prefix) {
                found.push(format!("netns {netns}"));
            }
        }
    }
    found
}

/// Where cgroup v2 is mounted (from /proc/self/mountinfo).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split_whitespace().nth(4)?;
        (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        let output = output_of(Command::new(&self.moat).args(["lab", "down", "--name", &self.name]));
        if !output.success {
            eprintln!("warning: tearing down lab {}: {output}", self.name);
        }
    }
}

/// The verdict in `moat lab probe -o json` output: `{"verdict":"allow",...}`.
/// `moat lab probe` prints a report, `{"port":..,"protocol":..,"results":[{"from":..,"to":..,
/// "verdict":..}]}`: the verdict of its single result.
fn parse_probe(stdout: &str) -> Option<Verdict> {
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).ok()?;
    let verdict = match value.get("results") {
        Some(results) => match results.as_array()?.as_slice() {
            [single] => single.get("verdict")?,
            _ => return None,
        },
        None => value.get("verdict")?,
    };
    verdict.as_str().map(Verdict::parse)
}

/// The cells of `moat lab probe --matrix -o json` output: either an array of
/// `{"from":..,"to":..,"verdict":..}` or an object holding such an array. An endpoint is
/// `"ns/pod"` or `{"namespace":..,"name":..}`.
pub(crate) fn parse_matrix(stdout: &str) -> Result<Vec<(String, String, Verdict)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|err| format!("not JSON: {err}"))?;
    let cells = match &value {
        serde_json::Value::Array(cells) => cells,
        serde_json::Value::Object(fields) => fields
            .values()
            .find_map(|field| field.as_array())
            .ok_or("no array of cells in the object")?,
        _ => return Err("neither an array nor an object".into()),
    };
    cells
        .iter()
        .map(|cell| {
            let from = endpoint(&cell["from"]).ok_or_else(|| format!("cell without \"from\": {cell}"))?;
            let to = endpoint(&cell["to"]).ok_or_else(|| format!("cell without \"to\": {cell}"))?;
            let verdict = cell["verdict"]
                .as_str()
                .map(Verdict::parse)
                .ok_or_else(|| format!("cell without \"verdict\": {cell}"))?;
            Ok((from, to, verdict))
        })
        .collect()
}

fn endpoint(value: &serde_json::Value) -> Option<String> {
    if let Some(text) = value.as_str() {
        return Some(text.to_string());
    }
    let namespace = value.get("namespace")?.as_str()?;
    let name = value.get("name").or_else(|| value.get("pod"))?.as_str()?;
    Some(format!("{namespace}/{name}"))
}

/// Manifest files for one test, in a temporary directory removed on drop.
pub struct Manifests {
    dir: tempfile::TempDir,
}

impl Manifests {
    pub fn new() -> Manifests {
        let dir = tempfile::Builder::new()
            .prefix("moat-test-")
            .tempdir()
            .unwrap_or_else(|err| panic!("creating a temporary directory: {err}"));
        Manifests { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `yaml` to `<dir>/<file_name>` and returns the path.
    pub fn write(&self, file_name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(file_name);
        std::fs::write(&path, yaml).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        path
    }
}

impl Default for Manifests {
    fn default() -> Self {
        Self::new()
    }
}

/// A `v1/Namespace` manifest.
pub fn namespace_yaml(name: &str, labels: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{}",
        labels_yaml("  ", labels)
    )
}

/// A `v1/Pod` manifest with one container serving `ports` (`(port, "TCP" | "UDP")`).
pub fn pod_yaml(namespace: &str, name: &str, labels: &[(&str, &str)], ports: &[(u16, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{}",
        labels_yaml("  ", labels)
    );
    yaml.push_str("spec:\n  containers:\n    - name: app\n      image: registry.k8s.io/e2e-test-images/agnhost:2.53\n");
    if !ports.is_empty() {
        yaml.push_str("      ports:\n");
        for (port, protocol) in ports {
            yaml.push_str(&format!("        - containerPort: {port}\n          protocol: {protocol}\n"));
        }
    }
    yaml
}

/// A `v1/Service` manifest with `cluster_ips` (one per family; none: headless).
pub fn service_yaml(namespace: &str, name: &str, cluster_ips: &[&str]) -> String {
    let ips = if cluster_ips.is_empty() { vec!["None"] } else { cluster_ips.to_vec() };
    let list = ips.iter().map(|ip| format!("{ip:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  clusterIP: {:?}\n  clusterIPs: [{list}]\n  ports:\n    - port: 53\n",
        ips[0]
    )
}

/// Like [`pod_yaml`], with the lab role annotation `lab.moat.dev/role: ROLE` (`external`,
/// `hidden` or `pod`).
pub fn pod_yaml_with_role(
    namespace: &str,
    name: &str,
    role: &str,
    labels: &[(&str, &str)],
    ports: &[(u16, &str)],
) -> String {
    pod_yaml(namespace, name, labels, ports).replacen(
        "metadata:\n",
        &format!("metadata:\n  annotations:\n    lab.moat.dev/role: {role}\n"),
        1,
    )
}

/// Runs `command`, killing it if it has not exited after `timeout`; Output of what it printed.
pub fn output_within(command: &mut Command, timeout: Duration) -> Output {
    let description = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("could not start `{description}`: {err}"));
    let exited = eventually(timeout, || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap_or_else(|err| panic!("waiting for `{description}`: {err}"));
    Output {
        command: description,
        success: output.status.success(),
        code: output.status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&output.status),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned()
            + if exited.is_none() { "\n(killed: still running after the timeout)" } else { "" },
    }
}

fn labels_yaml(indent: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut yaml = format!("{indent}labels:\n");
    for (key, value) in labels {
        yaml.push_str(&format!("{indent}  {key}: {value:?}\n"));
    }
    yaml
}

/// Joins manifests into one multi-document YAML file body.
pub fn documents(manifests: &[String]) -> String {
    manifests.iter().map(|doc| doc.trim_end()).collect::<Vec<_>>().join("\n---\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_short_and_distinct() {
        let (a, b) = (unique_name(), unique_name());
        assert_ne!(a, b);
        assert!(a.starts_with('t') && a.len() <= 20, "{a}");
        // Even with the largest pid Linux hands out and a large counter.
        assert!(format!("t{}n{}", 4_194_304, 99_999).len() <= 20);
    }

    #[test]
    fn moat_bin_prefers_moat_bin_then_target_dir_then_the_test_binary_location() {
        let explicit = bin_candidates(Some("/x/moat".into()), Some("/t".into()), None);
        assert_eq!(explicit, vec![PathBuf::from("/x/moat")]);
        let found = bin_candidates(None, Some("/t".into()), Some("/b/debug/deps/lab_smoke-123".into()));
        assert_eq!(found[0], PathBuf::from("/t/debug/moat"));
        assert_eq!(found[1], PathBuf::from("/b/debug/moat"));
        assert_eq!(found[2], workspace_root().join("target/debug/moat"));
        let relative = bin_candidates(None, Some("tgt".into()), None);
        assert_eq!(relative[0], workspace_root().join("tgt/debug/moat"));
    }

    #[test]
    fn parses_probe_output() {
        assert_eq!(parse_probe(r#"{"from":"a/x","to":"b/y","verdict":"allowed"}"#), Some(Verdict::Allowed));
        assert_eq!(parse_probe(r#"{"verdict":"DENY"}"#), Some(Verdict::Denied));
        assert_eq!(parse_probe(r#"{"verdict":"timeout"}"#), Some(Verdict::Other("timeout".into())));
        assert_eq!(parse_probe("allowed"), None);
        let report = r#"{"port":80,"protocol":"TCP","results":[{"from":"x/a","to":"y/b","verdict":"deny"}]}"#;
        assert_eq!(parse_probe(report), Some(Verdict::Denied));
        assert_eq!(parse_probe(r#"{"port":80,"protocol":"TCP","results":[]}"#), None);
    }

    #[test]
    fn parses_matrix_output() {
        let flat = r#"[{"from":"a/x","to":"b/y","verdict":"allow"},
                       {"from":{"namespace":"b","name":"y"},"to":"a/x","verdict":"deny"}]"#;
        assert_eq!(
            parse_matrix(flat).unwrap(),
            vec![
                ("a/x".into(), "b/y".into(), Verdict::Allowed),
                ("b/y".into(), "a/x".into(), Verdict::Denied)
            ]
        );
        let wrapped = r#"{"port":"80/TCP","cells":[{"from":"a/x","to":"a/x","verdict":"allow"}]}"#;
        assert_eq!(parse_matrix(wrapped).unwrap().len(), 1);
        assert!(parse_matrix(r#"[{"from":"a/x"}]"#).is_err());
        assert!(parse_matrix("a/x -> b/y allow").is_err());
    }

    #[test]
    fn writes_manifests() {
        let manifests = Manifests::new();
        let body = documents(&[
            namespace_yaml("smoke", &[("tenant", "a")]),
            pod_yaml("smoke", "web", &[("app", "web")], &[(80, "TCP")]),
        ]);
        let path = manifests.write("smoke.yaml", &body);
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("kind: Namespace\nmetadata:\n  name: smoke\n  labels:\n    tenant: \"a\"\n---\n"));
        assert!(text.contains("        - containerPort: 80\n          protocol: TCP\n"));
    }
}
pub mod kube;

/// GET `http://ADDRESS/PATH` (HTTP/1.1, connection closed after): (status code, body).
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("sending the request");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}
