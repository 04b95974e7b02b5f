//! Bench section `kube`: the API server source at scale, release builds. For 10k, 30k and
//! 100k pods (a tenth as many namespaces, a fifth as many NetworkPolicies; see `cluster.rs`)
//! `moat-test-apiserver` serves the cluster and `moat agent --kubeconfig` syncs it as the
//! node `lab-node`, to which 50 of the pods are scheduled, with cgroups on the lab. Reported per size: start →
//! ready; the time from each API write to the agent's `applied` log line, written right after
//! the kernel map writes (p50 / p99 / max), for namespace relabels that move local pods
//! between tenants, pod adds elsewhere, new local pods (cgroup first, then the watch event),
//! NetworkPolicy adds and deletes; VmRSS after the sync and after the events, and VmHWM. The
//! figure `docs/kube-scale.svg` is written from the same run.
//! `MOAT_BENCH_KUBE_CLUSTER_POLICIES=N` adds N ClusterNetworkPolicies (`cluster.rs`) to the
//! cluster, with their CRD served.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::bench_run::{Context, Section};
use crate::util::{cargo, run, target_dir, workspace_root, Lab};

mod cluster;
mod plot;

/// Cluster sizes (pods); namespaces are a tenth, NetworkPolicies a fifth.
const SIZES: [usize; 3] = [10_000, 30_000, 100_000];
/// Pods with a cgroup on the lab node, in the first namespaces.
const LOCAL_NAMESPACES: usize = 5;
const RELABELS: usize = 100;
const POD_ADDS: usize = 100;
const LOCAL_POD_ADDS: usize = 20;
const POLICY_CHANGES: usize = 100;
/// NetworkPolicies added to every namespace without local pods, in one more run at the
/// smallest size: what a policy that selects no pod of this node costs.
const EXTRA_POLICIES_PER_NAMESPACE: usize = 10;
/// The agent's cgroup scan interval in the bench (a new local pod's cgroup is seen within it).
const POLL_MS: u64 = 100;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Cgroup directories the bench made for local pods; removed even when the bench fails.
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Cgroups {
    fn make(&mut self, dir: PathBuf) -> Result<()> {
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.0.push(dir);
        Ok(())
    }
}

/// Latencies of one kind of event, sorted.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn pct(&self, p: f64) -> f64 {
        let index = ((self.0.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(self.0.len() - 1);
        self.0[index].as_secs_f64() * 1000.0
    }
    fn cells(&self) -> String {
        format!(
            "{:.1} / {:.1} / {:.1}",
            self.pct(0.50),
            self.pct(0.99),
            self.pct(1.0)
        )
    }
}

struct Run {
    pods: usize,
    sync: Duration,
    rss_synced: u64,
    rss_after: u64,
    hwm: u64,
    relabels: Latencies,
    pod_adds: Latencies,
    local_adds: Latencies,
    policy_adds: Latencies,
    policy_deletes: Latencies,
    /// The agent's own part of each event: its `took_us`, wake-up to the last map write.
    agent_own: Latencies,
}

impl Run {
    /// Every event's latency, for the overall percentiles.
    fn all(&self) -> Latencies {
        let mut all: Vec<Duration> = [
            &self.relabels,
            &self.pod_adds,
            &self.local_adds,
            &self.policy_adds,
            &self.policy_deletes,
        ]
        .iter()
        .flat_map(|l| l.0.iter().copied())
        .collect();
        all.sort();
        Latencies(all)
    }
}

pub fn kube(ctx: &Context) -> Result<Section> {
    const LAB: &str = "benchkube";
    let moat = ctx.moat_release()?;
    run(cargo().args(["build", "--release", "-p", "moat-testapi"]))?;
    let apiserver = moat.with_file_name("moat-test-apiserver");
    let lab = Lab::up(
        &ctx.moat,
        LAB,
        &[workspace_root().join("xtask/bench")],
        &["--no-agent"],
    )?;
    let dir = target_dir()?.join("bench-kube");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cgroup_root = cgroup2()?.join(format!("moat-lab-{LAB}/pods"));
    let mut runs = Vec::new();
    for pods in sizes()? {
        println!(
            "\n== kube: {} namespaces, {pods} pods, {} NetworkPolicies, {} ClusterNetworkPolicies",
            pods / 10,
            pods / 5,
            cluster_policies()?
        );
        runs.push(measure(&moat, &apiserver, pods, 0, &dir, &cgroup_root, LAB)?);
    }
    // The smallest size again, with many more NetworkPolicies none of which selects a pod of
    // this node: their memory each, and whether they slow the events.
    let extra = match runs.first() {
        Some(base) => {
            let policies = (base.pods / cluster::PODS_PER_NAMESPACE - LOCAL_NAMESPACES) * EXTRA_POLICIES_PER_NAMESPACE;
            println!("\n== kube: {} pods, {policies} more NetworkPolicies selecting no pod of this node", base.pods);
            Some((policies, measure(&moat, &apiserver, base.pods, EXTRA_POLICIES_PER_NAMESPACE, &dir, &cgroup_root, LAB)?))
        }
        None => None,
    };
    drop(lab);

    let mut table = String::from("| pods / namespaces / NetworkPolicies | initial sync | relabel p50 / p99 / max | pod add | local pod add | policy add | policy delete | all events p99 | agent's own p50 / p99 / max | RSS synced → after events | peak (VmHWM) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &runs {
        let _ = writeln!(
            table,
            "| {}k / {}k / {}k | {:.2} s | {} ms | {} ms | {} ms | {} ms | {} ms | {:.1} ms | {} ms | {:.0} → {:.0} MiB | {:.0} MiB |",
            r.pods / 1000, r.pods / 10_000, r.pods / 5000,
            r.sync.as_secs_f64(), r.relabels.cells(), r.pod_adds.cells(), r.local_adds.cells(), r.policy_adds.cells(), r.policy_deletes.cells(),
            r.all().pct(0.99), r.agent_own.cells(), mib(r.rss_synced), mib(r.rss_after), mib(r.hwm)
        );
    }
    // Memory per pod (with its tenth of a namespace and fifth of a policy): the slope of
    // RSS between the smallest and the largest cluster.
    if let (Some(first), Some(last)) = (runs.first(), runs.last()) {
        if last.pods > first.pods {
            let per_pod = (last.rss_synced as f64 - first.rss_synced as f64) * 1024.0
                / (last.pods - first.pods) as f64;
            let _ = writeln!(table, "\nMemory per pod (with a tenth of a namespace and a fifth of a NetworkPolicy), RSS slope {}k → {}k pods: {per_pod:.0} bytes.", first.pods / 1000, last.pods / 1000);
        }
    }
    if let (Some(base), Some((policies, with))) = (runs.first(), &extra) {
        let per_policy = (with.rss_synced as f64 - base.rss_synced as f64) * 1024.0 / *policies as f64;
        let _ = writeln!(
            table,
            "\nWith {policies} more NetworkPolicies that select no pod of this node ({EXTRA_POLICIES_PER_NAMESPACE} in each namespace without local pods) at {}k pods: initial sync {:.2} s ({:.2} s), all events p99 {:.1} ms ({:.1} ms), agent's own p99 {:.1} ms ({:.1} ms), RSS synced {:.0} MiB ({:.0} MiB): {per_policy:.0} bytes per NetworkPolicy.",
            base.pods / 1000, with.sync.as_secs_f64(), base.sync.as_secs_f64(), with.all().pct(0.99), base.all().pct(0.99),
            with.agent_own.pct(0.99), base.agent_own.pct(0.99), mib(with.rss_synced), mib(base.rss_synced)
        );
    }
    let points: Vec<plot::Point> = runs
        .iter()
        .map(|r| plot::Point {
            pods: r.pods,
            p50_ms: r.all().pct(0.5),
            p99_ms: r.all().pct(0.99),
            rss_mib: mib(r.rss_after),
            peak_mib: mib(r.hwm),
        })
        .collect();
    let figure = workspace_root().join("docs/kube-scale.svg");
    std::fs::write(
        &figure,
        plot::svg(
            &points,
            &[(10_000, 5.0), (100_000, 20.0)],
            &[(10_000, 64.0), (100_000, 256.0)],
        ),
    )
    .with_context(|| format!("writing {}", figure.display()))?;
    table.push_str("\n![watch event → map write latency and agent memory against cluster size](kube-scale.svg)\n");
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

/// `MOAT_BENCH_KUBE_PODS=10000,30000` measures only those sizes (a quick look at one size;
/// the table's per-pod slope then spans what was run).
fn sizes() -> Result<Vec<usize>> {
    match std::env::var("MOAT_BENCH_KUBE_PODS") {
        Ok(list) => parse_sizes(&list),
        Err(_) => Ok(SIZES.to_vec()),
    }
}

/// The fewest pods a size may have: namespaces of local pods and as many elsewhere (the pods
/// added and the extra policies go there).
const MIN_PODS: usize = 2 * LOCAL_NAMESPACES * cluster::PODS_PER_NAMESPACE;

fn parse_sizes(list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|size| {
            let pods: usize = size
                .trim()
                .parse()
                .with_context(|| format!("MOAT_BENCH_KUBE_PODS: {size:?} is not a pod count"))?;
            anyhow::ensure!(pods >= MIN_PODS, "MOAT_BENCH_KUBE_PODS: {pods} pods is fewer than the bench needs ({MIN_PODS})");
            Ok(pods)
        })
        .collect()
}

/// `MOAT_BENCH_KUBE_CLUSTER_POLICIES=N`: ClusterNetworkPolicies in the cluster (0 by default).
fn cluster_policies() -> Result<usize> {
    match std::env::var("MOAT_BENCH_KUBE_CLUSTER_POLICIES") {
        Err(_) => Ok(0),
        Ok(text) => text.trim().parse().with_context(|| format!("MOAT_BENCH_KUBE_CLUSTER_POLICIES: {text:?} is not a count")),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn measure(
    moat: &Path,
    apiserver: &Path,
    pods: usize,
    extra_policies: usize,
    dir: &Path,
    cgroup_root: &Path,
    lab: &str,
) -> Result<Run> {
    let namespaces = pods / cluster::PODS_PER_NAMESPACE;
    let state = dir.join("state.json");
    let cluster_policies = cluster_policies()?;
    std::fs::write(&state, cluster::cluster(pods, cluster_policies, extra_policies, LOCAL_NAMESPACES).to_string())
        .context("writing the bench state")?;
    let (port_file, kubeconfig) = (dir.join("port"), dir.join("kubeconfig"));
    let _ = std::fs::remove_file(&port_file);
    let _server = Killed(
        Command::new(apiserver)
            .args(["--listen", "127.0.0.1:0", "--history", "100000"])
            .args(["--crd", "clusternetworkpolicies.policy.networking.k8s.io"])
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
    let port: u16 = wait(Duration::from_secs(300), || {
        std::fs::read_to_string(&port_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .context("the test API server wrote no port")?;

    // This node's pods: cgroups in the lab's layout (`<namespace>_<pod>`).
    let mut cgroups = Cgroups(Vec::new());
    for n in 0..LOCAL_NAMESPACES {
        for p in 0..cluster::PODS_PER_NAMESPACE {
            cgroups.make(cgroup_root.join(format!("ns{n}_pod{p}")))?;
        }
    }
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "instance: lab-{lab}\nnodeName: {}\ncgroupRoot: {}\ncgroupLayout: lab\npollIntervalMs: {POLL_MS}\nclusterCidrs: [10.0.0.0/8]\n",
            cluster::LAB_NODE,
            cgroup_root.display()
        ),
    )?;
    let (log, ready) = (
        dir.join(format!("agent-{pods}.log")),
        dir.join("agent.ready"),
    );
    let _ = std::fs::remove_file(&ready);
    let log_file = std::fs::File::create(&log)?;
    let started = Instant::now();
    let agent = Killed(
        Command::new(moat)
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
    wait(Duration::from_secs(600), || ready.exists().then_some(()))
        .context("the agent did not get ready in 600 s")?;
    let sync = started.elapsed();
    // Let the first rounds after ready (guard, tc) settle before memory and latency.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_synced, _) = memory(agent.0.id())?;
    let mut tail = LogTail::open(&log)?;
    let mut agent_own = Vec::new();
    let mut timed = |method: &str, path: &str, body: Option<&Value>| -> Result<Duration> {
        let sent = Instant::now();
        let rv = request(port, method, path, body)?;
        let took = wait(Duration::from_secs(60), || tail.applied_at_least(rv))
            .with_context(|| format!("{method} {path}: no `applied` line for resourceVersion {rv}"))?;
        agent_own.push(took);
        Ok(sent.elapsed())
    };

    let mut relabels = Vec::new();
    for i in 0..RELABELS {
        // Moves a namespace with local pods between tenants and back.
        let n = i % LOCAL_NAMESPACES;
        let tenant = if (i / LOCAL_NAMESPACES).is_multiple_of(2) {
            "moved".to_string()
        } else {
            cluster::tenant_of(n)
        };
        relabels.push(timed(
            "PUT",
            &format!("/api/v1/namespaces/ns{n}"),
            Some(&cluster::namespace(n, &tenant)),
        )?);
    }
    let mut pod_adds = Vec::new();
    for i in 0..POD_ADDS {
        let n = (i * 37 + LOCAL_NAMESPACES) % namespaces;
        let pod = cluster::pod(n, &format!("extra{i}"), pods + i, false);
        pod_adds.push(timed(
            "POST",
            &format!("/api/v1/namespaces/ns{n}/pods"),
            Some(&pod),
        )?);
    }
    let mut local_adds = Vec::new();
    for i in 0..LOCAL_POD_ADDS {
        // The cgroup first (the runtime starts the sandbox), then the watch event.
        let n = i % LOCAL_NAMESPACES;
        cgroups.make(cgroup_root.join(format!("ns{n}_local{i}")))?;
        std::thread::sleep(Duration::from_millis(3 * POLL_MS));
        let pod = cluster::pod(n, &format!("local{i}"), pods + POD_ADDS + i, true);
        local_adds.push(timed(
            "POST",
            &format!("/api/v1/namespaces/ns{n}/pods"),
            Some(&pod),
        )?);
    }
    let mut policy_adds = Vec::new();
    let mut policy_deletes = Vec::new();
    let targets: Vec<usize> = (0..POLICY_CHANGES).map(|i| (i * 53) % namespaces).collect();
    for (i, n) in targets.iter().enumerate() {
        let policy = cluster::added_policy(*n, &format!("bench{i}"));
        policy_adds.push(timed(
            "POST",
            &format!("/apis/networking.k8s.io/v1/namespaces/ns{n}/networkpolicies"),
            Some(&policy),
        )?);
    }
    for (i, n) in targets.iter().enumerate() {
        policy_deletes.push(timed(
            "DELETE",
            &format!("/apis/networking.k8s.io/v1/namespaces/ns{n}/networkpolicies/bench{i}"),
            None,
        )?);
    }
    let (rss_after, hwm) = memory(agent.0.id())?;
    drop(agent);
    let sorted = |mut v: Vec<Duration>| {
        v.sort();
        Latencies(v)
    };
    Ok(Run {
        pods,
        sync,
        rss_synced,
        rss_after,
        hwm,
        relabels: sorted(relabels),
        pod_adds: sorted(pod_adds),
        local_adds: sorted(local_adds),
        policy_adds: sorted(policy_adds),
        policy_deletes: sorted(policy_deletes),
        agent_own: sorted(agent_own),
    })
}

/// The agent's log from where it was opened, read as it grows; a line the agent is still
/// writing stays pending until complete.
struct LogTail {
    file: std::fs::File,
    pending: String,
}

impl LogTail {
    fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            pending: String::new(),
        })
    }

    /// The agent's own time (`took_us`) of a new `applied` line with resource_version ≥
    /// `rv` logged since the last read, if there is one.
    fn applied_at_least(&mut self, rv: u64) -> Option<Duration> {
        self.file.read_to_string(&mut self.pending).ok()?;
        let end = self.pending.rfind('\n')?;
        let complete: String = self.pending.drain(..=end).collect();
        complete
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| {
                line["message"] == "applied"
                    && line["resource_version"]
                        .as_u64()
                        .is_some_and(|seen| seen >= rv)
            })
            .map(|line| Duration::from_micros(line["took_us"].as_u64().unwrap_or(0)))
    }
}

/// One API request; returns the resourceVersion of the object in the answer.
fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<u64> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).context("connecting to the test API server")?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let json_start = response.find("{\"").context("no JSON in the response")?;
    let json_end = response.rfind('}').context("no JSON in the response")?;
    let object: Value =
        serde_json::from_str(&response[json_start..=json_end]).context("response JSON")?;
    match object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
    {
        Some(rv) => Ok(rv),
        None => bail!("{method} {path}: {object}"),
    }
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|line| {
            line.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    Ok((
        field("VmRSS:").context("no VmRSS")?,
        field("VmHWM:").context("no VmHWM")?,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_pod_counts_large_enough_for_the_bench() {
        assert_eq!(parse_sizes("10000, 30000").unwrap(), [10_000, 30_000]);
        let error = parse_sizes("10000,40").unwrap_err().to_string();
        assert!(error.contains("40 pods is fewer than the bench needs (100)"), "{error}");
        let error = parse_sizes("ten").unwrap_err().to_string();
        assert!(error.contains("\"ten\" is not a pod count"), "{error}");
    }
}
