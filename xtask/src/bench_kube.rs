//! Bench section `kube`: the API server source at scale. `moat-test-apiserver` serves 1,000
//! namespaces, 10,000 pods and 2,000 NetworkPolicies; `moat agent --kubeconfig` syncs them
//! over a lab's (empty) cgroup root. Reported: the agent's memory after the sync (VmRSS,
//! VmHWM), and the time from a namespace relabel (the API write) to the agent's `applied`
//! log line, written right after the kernel map writes (p50, p99 over 200 relabels).

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::bench::{Context, Section};
use crate::util::{target_dir, workspace_root, Lab};

const NAMESPACES: usize = 1_000;
const PODS: usize = 10_000;
const POLICIES: usize = 2_000;
const RELABELS: usize = 200;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn kube(ctx: &Context) -> Result<Section> {
    const LAB: &str = "benchkube";
    println!("\n== kube: {NAMESPACES} namespaces, {PODS} pods, {POLICIES} NetworkPolicies");
    let lab = Lab::up(&ctx.moat, LAB, &[workspace_root().join("xtask/bench")], &["--no-agent"])?;
    let dir = target_dir()?.join("bench-kube");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let state = dir.join("state.json");
    std::fs::write(&state, cluster().to_string()).context("writing the bench state")?;
    let (port_file, kubeconfig) = (dir.join("port"), dir.join("kubeconfig"));
    let _ = std::fs::remove_file(&port_file);
    let apiserver = ctx.moat.with_file_name("moat-test-apiserver");
    let _server = Killed(
        Command::new(&apiserver)
            .args(["--listen", "127.0.0.1:0", "--history", "100000"])
            .arg("--load")
            .arg(&state)
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", apiserver.display()))?,
    );
    let port: u16 = wait(Duration::from_secs(60), || std::fs::read_to_string(&port_file).ok()?.trim().parse().ok())
        .context("the test API server wrote no port")?;

    let cgroup_root = cgroup2()?.join(format!("moat-lab-{LAB}/pods"));
    let config = dir.join("agent.yaml");
    std::fs::write(&config, format!("instance: lab-{LAB}\ncgroupRoot: {}\ncgroupLayout: lab\n", cgroup_root.display()))?;
    let (log, ready) = (dir.join("agent.log"), dir.join("agent.ready"));
    let _ = std::fs::remove_file(&ready);
    let log_file = std::fs::File::create(&log)?;
    let started = Instant::now();
    let agent = Killed(
        Command::new(&ctx.moat)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting moat agent")?,
    );
    wait(Duration::from_secs(300), || ready.exists().then_some(())).context("the agent did not get ready in 300 s")?;
    let sync = started.elapsed();
    let (rss, hwm) = memory(agent.0.id())?;

    let mut latencies = Vec::new();
    let mut reader = std::fs::File::open(&log)?;
    reader.seek(SeekFrom::End(0))?;
    for i in 0..RELABELS {
        let tenant = if i % 2 == 0 { "other" } else { "t0" };
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns0", "labels": {"tenant": tenant}}});
        let sent = Instant::now();
        let rv = put(port, "/api/v1/namespaces/ns0", &body)?;
        let seen = wait(Duration::from_secs(30), || applied_at_least(&mut reader, rv).then_some(()));
        seen.with_context(|| format!("no `applied` line for resourceVersion {rv}"))?;
        latencies.push(sent.elapsed());
    }
    drop(agent);
    drop(lab);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let table = format!(
        "| metric | value |\n|---|---:|\n| initial sync (start → ready) | {:.1} s |\n| watch event → map write, p50 | {:.1} ms |\n| watch event → map write, p99 | {:.1} ms |\n| agent VmRSS after sync | {:.0} MiB |\n| agent VmHWM after sync | {:.0} MiB |\n",
        sync.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    Ok(Section {
        id: "kube",
        title: "API server source at scale",
        columns: ["", ""],
        rows: Vec::new(),
        method: String::new(),
        notes: String::new(),
        table: Some(table),
    })
}

/// ns<i> (tenant t<i % 100>) with 10 pods each, and 2 NetworkPolicies each.
fn cluster() -> Value {
    let mut items = Vec::new();
    for n in 0..NAMESPACES {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{n}"), "labels": {"tenant": format!("t{}", n % 100)}}}));
        for p in 0..PODS / NAMESPACES {
            let i = n * (PODS / NAMESPACES) + p;
            let ip = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
            items.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod{p}"), "namespace": format!("ns{n}"), "uid": format!("00000000-0000-4000-8000-{i:012}"), "labels": {"app": format!("app{}", p % 3)}},
                "spec": {"nodeName": format!("node{}", i % 50), "containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            }));
        }
        for k in 0..POLICIES / NAMESPACES {
            items.push(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("np{k}"), "namespace": format!("ns{n}")},
                "spec": {"podSelector": {"matchLabels": {"app": format!("app{k}")}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 8080}]}]}
            }));
        }
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Whether a new `applied` line with resource_version ≥ `rv` was logged since the last read.
fn applied_at_least(reader: &mut std::fs::File, rv: u64) -> bool {
    let mut text = String::new();
    if reader.read_to_string(&mut text).is_err() {
        return false;
    }
    text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).any(|line| {
        line["message"] == "applied" && line["resource_version"].as_u64().is_some_and(|seen| seen >= rv)
    })
}

/// PUT; returns the object's new resourceVersion.
fn put(port: u16, path: &str, body: &Value) -> Result<u64> {
    let body = body.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to the test API server")?;
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let json_start = response.find("{\"").context("no JSON in the response")?;
    let json_end = response.rfind('}').context("no JSON in the response")?;
    let object: Value = serde_json::from_str(&response[json_start..=json_end]).context("response JSON")?;
    match object["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()) {
        Some(rv) => Ok(rv),
        None => bail!("PUT {path}: {object}"),
    }
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok())
    };
    Ok((field("VmRSS:").context("no VmRSS")?, field("VmHWM:").context("no VmHWM")?))
}

fn cgroup2() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2").then(|| Path::new(point).to_path_buf())
        })
        .context("no cgroup v2 mount")
}

fn wait<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
