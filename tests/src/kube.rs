//! The API server side of the integration tests: `moat-test-apiserver` as a process, a tiny
//! HTTP client for it, and `moat agent --kubeconfig` run against it over a lab's pods.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{eventually, moat_bin, Lab};

/// `moat-test-apiserver`: `$MOAT_TEST_APISERVER_BIN`, else next to the `moat` binary.
pub fn apiserver_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MOAT_TEST_APISERVER_BIN") {
        return PathBuf::from(bin);
    }
    let moat = moat_bin();
    let bin = moat.with_file_name("moat-test-apiserver");
    assert!(
        bin.is_file(),
        "{} was not found; build it with `cargo build -p moat-testapi` or set MOAT_TEST_APISERVER_BIN",
        bin.display()
    );
    bin
}

/// A `moat-test-apiserver` process, killed on drop. Its files live in a temporary directory.
pub struct ApiServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl ApiServer {
    /// Starts a server loaded with `load` (files or directories), its versions from `start_rv`.
    pub fn start(load: &[&Path], start_rv: u64) -> ApiServer {
        let dir = tempfile::Builder::new().prefix("moat-apiserver-").tempdir().expect("temporary directory");
        let mut server = ApiServer { child: None, dir, port: 0 };
        server.spawn(load, start_rv, "127.0.0.1:0");
        server
    }

    fn spawn(&mut self, load: &[&Path], start_rv: u64, listen: &str) {
        let port_file = self.dir.path().join("port");
        let _ = std::fs::remove_file(&port_file);
        let mut command = Command::new(apiserver_bin());
        command
            .args(["--listen", listen, "--start-resource-version", &start_rv.to_string()])
            .arg("--kubeconfig-out")
            .arg(self.kubeconfig())
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for path in load {
            command.arg("--load").arg(path);
        }
        self.child = Some(command.spawn().unwrap_or_else(|err| panic!("starting moat-test-apiserver: {err}")));
        let port = eventually(Duration::from_secs(20), || std::fs::read_to_string(&port_file).ok()?.trim().parse().ok());
        self.port = port.expect("moat-test-apiserver wrote no port file within 20 s");
    }

    /// Kills the server (SIGKILL): the API server is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with a new state and versions from `start_rv`.
    pub fn restart(&mut self, load: &[&Path], start_rv: u64) {
        self.kill();
        let listen = format!("127.0.0.1:{}", self.port);
        self.spawn(load, start_rv, &listen);
    }

    /// `http://127.0.0.1:<port>`, e.g. for `UpOptions::api_server`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// One request; (status, body as JSON or as a JSON string).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to the test API server");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("sending the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("reading the response");
        let (head, rest) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        let rest = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
        (status, serde_json::from_str(&rest).unwrap_or(Value::String(rest)))
    }

    /// Creates or replaces `object` (PUT, or POST when absent); panics unless it succeeds.
    pub fn apply(&self, object: &Value) -> Value {
        let path = object_path(object);
        let (status, body) = self.request("GET", &path, None);
        let (status, body) = if status == 200 {
            let mut object = object.clone();
            object["metadata"]["resourceVersion"] = body["metadata"]["resourceVersion"].clone();
            self.request("PUT", &path, Some(&object))
        } else {
            let collection = path.rsplit_once('/').map(|(c, _)| c.to_string()).unwrap_or_default();
            self.request("POST", &collection, Some(object))
        };
        assert!((200..300).contains(&status), "applying {path}: {status} {body}");
        body
    }

    pub fn delete(&self, object: &Value) {
        let path = object_path(object);
        let (status, body) = self.request("DELETE", &path, None);
        assert!((200..300).contains(&status), "deleting {path}: {status} {body}");
    }

    /// The server's current resourceVersion (from a namespace list).
    pub fn resource_version(&self) -> u64 {
        let (_, body) = self.request("GET", "/api/v1/namespaces", None);
        body["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).expect("list resourceVersion")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// `/api/v1/namespaces/NS/pods/NAME` and the like.
fn object_path(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default");
    match kind {
        "Namespace" => format!("/api/v1/namespaces/{name}"),
        "Node" => format!("/api/v1/nodes/{name}"),
        "Pod" => format!("/api/v1/namespaces/{namespace}/pods/{name}"),
        "NetworkPolicy" => format!("/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"),
        "ClusterNetworkPolicy" => format!("/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies/{name}"),
        "GlobalNetworkPolicy" => format!("/apis/crd.projectcalico.org/v1/globalnetworkpolicies/{name}"),
        other => panic!("no path for kind {other:?}"),
    }
}

/// The objects of the lab's `cluster.json` (namespaces and pods with their assigned IPs).
pub fn lab_objects(lab: &Lab) -> Vec<Value> {
    let path = lab.manifests_dir().join("cluster.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let list: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The object of `kind` named `name` (`ns/pod` for pods) among `objects`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            let meta = &o["metadata"];
            let full = match meta["namespace"].as_str() {
                Some(ns) if kind != "Namespace" => format!("{ns}/{}", meta["name"].as_str().unwrap_or_default()),
                _ => meta["name"].as_str().unwrap_or_default().to_string(),
            };
            o["kind"] == kind && full == name
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in the lab's cluster"))
}

/// Writes objects as a List to `path`.
pub fn write_list(path: &Path, objects: &[Value]) {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(path, list.to_string()).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
}

/// `moat agent --kubeconfig` over a lab's pods (lab layout, the lab's cgroup root, the lab's
/// pin instance so `moat lab down` removes its pins). Killed on drop.
pub struct KubeAgent {
    child: Option<Child>,
    pub log: PathBuf,
    config: PathBuf,
    ready: PathBuf,
    kubeconfig: PathBuf,
}

impl KubeAgent {
    /// Starts the agent and waits (60 s) for its ready file.
    pub fn start(lab: &Lab, server: &ApiServer) -> KubeAgent {
        KubeAgent::start_with(lab, server, "")
    }

    /// Like [`KubeAgent::start`], with `extra` (YAML lines, e.g. `nodeName: n1\n`) added to
    /// the agent's configuration.
    pub fn start_with(lab: &Lab, server: &ApiServer, extra: &str) -> KubeAgent {
        let status = lab.status();
        let cgroup_root = status["cgroupRoot"]
            .as_str()
            .or_else(|| status["cgroup_root"].as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| lab_cgroup_root(lab));
        let dir = lab.run_dir();
        let config = dir.join("kube-agent.yaml");
        // Tests run in parallel: a free loopback metrics port and a socket of the lab's own.
        let text = format!(
            "instance: lab-{}\ncgroupRoot: {}\ncgroupLayout: lab\nmetricsAddress: 127.0.0.1:0\nadminSocket: {}\n",
            lab.name(),
            cgroup_root.display(),
            dir.join("kube-agent.sock").display()
        ) + extra;
        std::fs::write(&config, text).unwrap_or_else(|err| panic!("{}: {err}", config.display()));
        let mut agent = KubeAgent {
            child: None,
            log: dir.join("kube-agent.log"),
            config,
            ready: dir.join("kube-agent.ready"),
            kubeconfig: server.kubeconfig(),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.ready);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("agent log");
        let child = Command::new(moat_bin())
            .arg("agent")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--config")
            .arg(&self.config)
            .arg("--ready-file")
            .arg(&self.ready)
            .env("MOAT_LOG", "info,moat_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("starting moat agent: {err}"));
        self.child = Some(child);
        let ready = eventually(Duration::from_secs(60), || {
            if self.ready.exists() {
                return Some(true);
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            exited.map(|_| false)
        });
        assert_eq!(ready, Some(true), "the agent did not get ready; log:\n{}", self.log_text());
    }

    /// SIGTERM (a clean stop; pins stay), waiting up to 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if eventually(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Starts it again with the same configuration.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_json(&self) -> Vec<Value> {
        self.log_text().lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Waits until a log line satisfies `matches`.
    pub fn wait_log(&self, what: &str, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let found = eventually(timeout, || self.log_json().into_iter().find(|line| matches(line)));
        found.unwrap_or_else(|| panic!("{what}: no such agent log line within {timeout:?}; log:\n{}", self.log_text()))
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `<cgroup2>/moat-lab-<name>/pods`, where `moat lab up` puts the pods.
fn lab_cgroup_root(lab: &Lab) -> PathBuf {
    crate::cgroup2_mount().expect("cgroup v2 is mounted").join(format!("moat-lab-{}/pods", lab.name()))
}
