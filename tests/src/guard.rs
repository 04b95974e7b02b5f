//! Support for runtime-guard tests: a lab whose pods alias the node's kubelet root, runtime
//! binary and socket through hostPath volumes (as an escaped tenant would), an observer of
//! every detection, `moat-attack` run inside pods, and a marker that proves silence.

use std::path::PathBuf;
use std::time::Duration;

use crate::{eventually, moat_bin, namespace_yaml, Lab, Manifests, Output, UpOptions};

pub const DEADLINE: Duration = Duration::from_secs(30);

/// Where pods see the node through hostPath (`/host/...`).
pub const HOST_KUBELET: &str = "/host/var/lib/kubelet";
pub const HOST_RUN: &str = "/host/run";
pub const HOST_BIN: &str = "/host/usr/bin";

/// `moat-attack`, built next to the agent binary. Checked here: a missing one would only
/// show as detections that never arrive (the exec inside the pod fails every try).
pub fn attack_bin() -> PathBuf {
    let bin = moat_bin().with_file_name("moat-attack");
    assert!(bin.is_file(), "{} was not found; build it beside `moat` with `cargo build -p moat-integration --bin moat-attack`", bin.display());
    bin
}

/// How a test pod is made.
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    pub namespace: &'static str,
    pub name: &'static str,
    pub host_pid: bool,
    /// hostPath aliases of the node's kubelet root, /run and /usr/bin at `/host/...`.
    pub host_paths: bool,
}

impl PodSpec {
    pub fn new(namespace: &'static str, name: &'static str) -> Self {
        Self { namespace, name, ..Self::default() }
    }

    pub fn host_pid(mut self) -> Self {
        self.host_pid = true;
        self
    }

    pub fn host_paths(mut self) -> Self {
        self.host_paths = true;
        self
    }

    fn yaml(&self, lab: &Lab) -> String {
        let root = node_root(lab);
        let mut spec = String::new();
        if self.host_pid {
            spec.push_str("  hostPID: true\n");
        }
        let mut mounts = String::new();
        if self.host_paths {
            spec.push_str("  volumes:\n");
            for (name, path, at) in [
                ("kubelet", lab.kubelet_root(), HOST_KUBELET),
                ("run", root.join("run"), HOST_RUN),
                ("bin", root.join("usr/bin"), HOST_BIN),
            ] {
                spec.push_str(&format!("    - name: {name}\n      hostPath:\n        path: {}\n", path.display()));
                mounts.push_str(&format!("        - name: {name}\n          mountPath: {at}\n"));
            }
        }
        let mut yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n{spec}  containers:\n    - name: app\n      image: registry.k8s.io/e2e-test-images/agnhost:2.53\n",
            self.name, self.namespace
        );
        if !mounts.is_empty() {
            yaml.push_str(&format!("      volumeMounts:\n{mounts}"));
        }
        yaml
    }
}

/// The lab's node directory (`<run dir>/node`).
fn node_root(lab: &Lab) -> PathBuf {
    lab.run_dir().join("node")
}

/// A lab with tenants and pods for guard tests, an agent with `config` (YAML, optional) and
/// an observer of every detection.
pub struct GuardLab {
    pub lab: Lab,
    pub observer: Observer,
    config: Option<PathBuf>,
    manifests: Manifests,
    /// Every document the lab was given, for [`GuardLab::add_pods`].
    docs: Vec<String>,
}

impl GuardLab {
    /// `tenants`: (namespace, tenant). The namespace `marker` (tenant `marker`) with pod
    /// `marker/m` is added for [`GuardLab::quiet_since`].
    pub fn up(tenants: &[(&str, &str)], pods: &[PodSpec], config: Option<&str>, api_server: Option<String>) -> GuardLab {
        GuardLab::start(tenants, pods, config, UpOptions { api_server, ..UpOptions::default() })
    }

    /// As [`GuardLab::up`], the agent run as the DaemonSet runs it (`--agent-container`): the
    /// node's files hidden at their own paths, reachable only below `guard.hostRoot`.
    pub fn up_in_container(tenants: &[(&str, &str)], pods: &[PodSpec]) -> GuardLab {
        GuardLab::start(tenants, pods, None, UpOptions { agent_container: true, ..UpOptions::default() })
    }

    fn start(tenants: &[(&str, &str)], pods: &[PodSpec], config: Option<&str>, options: UpOptions) -> GuardLab {
        let manifests = Manifests::new();
        let lab = Lab::reserve();
        let mut docs: Vec<String> = tenants.iter().map(|(ns, tenant)| namespace_yaml(ns, &[("tenant", tenant)])).collect();
        docs.push(namespace_yaml("marker", &[("tenant", "marker")]));
        docs.extend(pods.iter().map(|p| p.yaml(&lab)));
        docs.push(PodSpec::new("marker", "m").yaml(&lab));
        let file = manifests.write("cluster.yaml", &crate::documents(&docs));
        let config = config.map(|c| manifests.write("moat.yaml", c));
        lab.start(&[file], UpOptions { config: config.clone(), ..options });
        let observer = Observer::start(&lab);
        let guard = GuardLab { lab, observer, config, manifests, docs };
        guard.marker();
        guard
    }

    /// Starts `pods` on the running lab (`moat lab apply` with every document so far and
    /// theirs: apply makes the lab match what it is given).
    pub fn add_pods(&mut self, pods: &[PodSpec]) {
        self.docs.extend(pods.iter().map(|p| p.yaml(&self.lab)));
        let file = self.manifests.write("cluster.yaml", &crate::documents(&self.docs));
        self.lab.apply(&[file]);
    }

    /// Replaces the running agent's configuration (`moat lab agent config`: the file is
    /// written aside and renamed over, as a ConfigMap volume swaps its files).
    pub fn rewrite_config(&self, text: &str) {
        let path = self.config.as_ref().expect("the lab was started with a config file");
        std::fs::write(path, text).expect("writing the new config");
        let output = std::process::Command::new(self.lab.moat())
            .args(["lab", "agent", "config", "--name", self.lab.name()])
            .arg(path)
            .output()
            .expect("moat lab agent config");
        assert!(output.status.success(), "moat lab agent config: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// `moat status --lab NAME -o json`: capabilities, probes, detections.
    pub fn status(&self) -> serde_json::Value {
        self.lab.agent_status()
    }

    /// `moat-attack ARGS...` inside `pod` (`NS/NAME`).
    pub fn attack(&self, pod: &str, args: &[&str]) -> Output {
        let bin = attack_bin();
        let mut all = vec![bin.to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        self.lab.exec(pod, &all)
    }

    /// Performs a marker detection (`bpf()` from `marker/m`) and waits until the observer
    /// has it: every detection caused before is then in too (one ordered pipeline).
    /// Returns how many marker detections have been seen.
    pub fn marker(&self) -> usize {
        let before = self.observer.matching(|e| e["pod"] == "m" && e["namespace"] == "marker").len();
        let seen = eventually(DEADLINE, || {
            self.attack("marker/m", &["bpf"]);
            let now = self.observer.matching(|e| e["pod"] == "m" && e["namespace"] == "marker").len();
            (now > before).then_some(now)
        });
        seen.unwrap_or_else(|| panic!("the marker detection never arrived; agent log:\n{}", self.lab.agent_log()))
    }

    /// Runs `action`, then a marker; returns the detections (marker excluded) the agent
    /// received from the start of `action` on. For asserting silence (empty) or an exact set.
    ///
    /// Events are taken by the agent's receive time, not by their position in the observer's
    /// output (a line still being written when the window opens would otherwise slip in). An
    /// aggregated report (the agent's end-of-window count of identical events) of an event
    /// seen before the window is not new either.
    pub fn during(&self, action: impl FnOnce()) -> Vec<serde_json::Value> {
        let key = |e: &serde_json::Value| (e["id"].clone(), e["pod"].clone(), e["namespace"].clone(), e["evidence"].clone(), e["pid"].clone());
        let start_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let before = self.observer.events();
        let earlier: Vec<_> = before.iter().map(key).collect();
        action();
        self.marker();
        // An event already seen is not the action's, even when stamped in the millisecond the
        // action started (the time filter alone let one through: a CI flake).
        self.observer
            .events()
            .into_iter()
            .filter(|e| !before.contains(e))
            .filter(|e| e["time_unix_ms"].as_u64().is_some_and(|t| t >= start_ms))
            .filter(|e| !(e["pod"] == "m" && e["namespace"] == "marker"))
            .filter(|e| !(e["aggregated"] == true && earlier.contains(&key(e))))
            .collect()
    }

    /// Waits for a detection matching `want` (panics with the agent log if none comes).
    pub fn expect(&self, what: &str, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let found = eventually(DEADLINE, || self.observer.matching(&want).into_iter().next());
        found.unwrap_or_else(|| {
            panic!("no detection: {what}\nseen: {:#?}\nagent log:\n{}", self.observer.events(), self.lab.agent_log())
        })
    }
}

/// How the lab's agent attached each guard probe on this kernel (`moat status`).
pub struct Probes(serde_json::Value);

impl Probes {
    pub fn of(guard: &GuardLab) -> Probes {
        Probes(guard.status())
    }

    /// `lsm`, `fentry`, `tracepoint`, `raw-tracepoint`; empty when not attached.
    pub fn kind(&self, probe: &str) -> String {
        let probes = self.0["probes"].as_array().cloned().unwrap_or_default();
        let entry = probes.iter().find(|p| p["probe"] == probe).unwrap_or_else(|| panic!("moat status lists no probe {probe}: {}", self.0));
        entry["kind"].as_str().unwrap_or_default().to_string()
    }

    /// Whether what `probe` sees is refused in block mode (it runs as BPF LSM).
    pub fn refuses(&self, probe: &str) -> bool {
        self.kind(probe) == "lsm"
    }

    /// Whether `probe` runs at security hooks (BPF LSM or fentry), which see the kernel's
    /// view of a call rather than the system call itself.
    pub fn at_security_hooks(&self, probe: &str) -> bool {
        matches!(self.kind(probe).as_str(), "lsm" | "fentry")
    }

    /// The action a block-mode detection that `probe` sees reports.
    pub fn action(&self, probe: &str) -> &'static str {
        if self.refuses(probe) {
            "blocked"
        } else {
            "detected"
        }
    }
}

/// Asserts a detection names `id`, the pod, its tenant and the action.
pub fn assert_detection(event: &serde_json::Value, id: &str, pod: &str, tenant: &str, action: &str) {
    let (namespace, name) = pod.split_once('/').expect("NS/POD");
    assert_eq!(event["type"], "detection", "{event}");
    assert_eq!(event["id"], id, "{event}");
    assert_eq!(event["namespace"], namespace, "{event}");
    assert_eq!(event["pod"], name, "{event}");
    assert_eq!(event["tenant"], tenant, "{event}");
    assert_eq!(event["action"], action, "{event}");
    assert!(event["pid"].as_u64().is_some_and(|p| p > 0), "{event}");
    assert!(event["executable"].is_string(), "{event}");
    assert!(event["evidence"].is_string(), "{event}");
}

/// `moat observe --lab NAME -o json`, its detections; killed on drop.
pub struct Observer(crate::observe::Observer);

impl Observer {
    pub fn start(lab: &Lab) -> Observer {
        Observer(crate::observe::Observer::start(&["--lab", lab.name()]))
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.0.events().into_iter().filter(|e| e["type"] == "detection").collect()
    }

    pub fn matching(&self, want: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        self.events().into_iter().filter(|e| want(e)).collect()
    }
}
