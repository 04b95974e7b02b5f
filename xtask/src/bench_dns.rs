//! `cargo xtask bench` section `dns`: DNS questions per second from a tenant pod to the cluster
//! DNS pod (`moat-dns serve`, release build), over UDP and TCP, with moat's DNS isolation
//! deciding every question against no program at all.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::bench_run::{median, Context, Measurement, Row, Section, REPEATS};
use crate::util::{cargo, check_interrupt, render, run, stdout_of, workspace_root, Lab};

const CLIENT: &str = "bench/client";
const DNS: &str = "kube-system/dns";
/// A name of the client's own namespace: decided in full (zone, namespace lookup) and answered.
const NAME: &str = "web.bench.svc.cluster.local";

pub fn dns(ctx: &Context) -> Result<Section> {
    let moat = ctx.moat_release()?;
    run(cargo().args(["build", "--release", "-p", "moat-integration", "--bin", "moat-dns"]))?;
    let dns_bin = moat.with_file_name("moat-dns");
    println!("\n== dns: lab \"bench-dns-base\" (no program) and lab \"bench-dns-moat\" (moat attached)");
    let manifests = workspace_root().join("xtask/bench-dns/dns.yaml");
    let base = Lab::up(&moat, "bench-dns-base", std::slice::from_ref(&manifests), &["--no-agent"])?;
    let attached = Lab::up(&moat, "bench-dns-moat", &[manifests], &[])?;
    let data = crate::util::target_dir()?.join("bench-dns.json");
    std::fs::write(
        &data,
        r#"{"zone":"cluster.local","services":[{"name":"web","namespace":"bench","ips":["10.96.0.11"]}]}"#,
    )
    .with_context(|| format!("writing {}", data.display()))?;
    let servers = [Server::start(&moat, &base, &dns_bin, &data)?, Server::start(&moat, &attached, &dns_bin, &data)?];
    let targets = [pod_ipv4(&moat, &base, DNS)?, pod_ipv4(&moat, &attached, DNS)?];
    let mut rows = Vec::new();
    for (metric, transport) in [("UDP questions, one in flight", &[][..]), ("TCP questions on one connection", &["--tcp"][..])] {
        let (mut baseline, mut subject) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            baseline.push(ask(&moat, &base, &dns_bin, &targets[0], transport, ctx.seconds)?);
            subject.push(ask(&moat, &attached, &dns_bin, &targets[1], transport, ctx.seconds)?);
        }
        rows.push(Row {
            metric: metric.to_string(),
            baseline: median(&mut baseline).context("no measurements")?,
            moat: median(&mut subject).context("no measurements")?,
        });
    }
    drop(servers);
    drop((base, attached));
    drop(std::fs::remove_file(&data));
    Ok(Section {
        id: "dns",
        title: "Tenant DNS isolation: questions per second to the cluster DNS pod",
        columns: ["baseline (no program)", "moat (block mode)"],
        rows,
        method: format!(
            "Two labs up at once (release builds of the agent and of `moat-dns`), measured alternately; \
             `moat-dns bench {NAME}` in {CLIENT} against `moat-dns serve` in {DNS}, IPv4, back to back; median of {REPEATS} runs each"
        ),
        notes: "Every question is the client's own namespace: read and decided in full (UDP: the cgroup egress \
                program; TCP: the sk_msg program on the connection) and answered. The server is a small \
                single-threaded Rust server, so the rates are round trips through the datapath, not CoreDNS's."
            .into(),
        table: None,
    })
}

/// `moat-dns serve` in the lab's DNS pod; killed on drop.
struct Server(Child);

impl Server {
    fn start(moat: &Path, lab: &Lab, dns_bin: &Path, data: &Path) -> Result<Server> {
        let mut cmd = Command::new(moat);
        cmd.args(["lab", "exec", "--name", lab.name(), DNS, "--"]).arg(dns_bin).arg("serve").arg(data);
        eprintln!("$ {}", render(&cmd));
        let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting moat-dns serve")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let server = Server(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("reading moat-dns serve")?;
        if !line.contains("serving") {
            bail!("moat-dns serve in {}: {line:?}", lab.name());
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.0.kill());
        drop(self.0.wait());
    }
}

fn pod_ipv4(moat: &Path, lab: &Lab, pod: &str) -> Result<String> {
    let text = stdout_of(Command::new(moat).args(["lab", "status", "--name", lab.name(), "-o", "json"]))?;
    let status: serde_json::Value = serde_json::from_str(text.trim()).context("lab status is not JSON")?;
    status["pods"][pod]["ipv4"].as_str().map(String::from).with_context(|| format!("no ipv4 for {pod} in {status}"))
}

fn ask(moat: &Path, lab: &Lab, dns_bin: &PathBuf, server: &str, transport: &[&str], seconds: u32) -> Result<Measurement> {
    check_interrupt()?;
    let mut cmd = Command::new(moat);
    cmd.args(["lab", "exec", "--name", lab.name(), CLIENT, "--"])
        .arg(dns_bin)
        .args(["bench", NAME, "--server", server, "--seconds", &seconds.to_string()])
        .args(transport);
    eprintln!("$ {}", render(&cmd));
    let text = stdout_of(&mut cmd)?;
    let value: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| format!("moat-dns bench printed {text:?}"))?;
    let rate = value["rate"].as_f64().with_context(|| format!("no rate in {value}"))?;
    eprintln!("  {}: {rate:.0} queries/s", lab.name());
    Ok(Measurement { rate, unit: "queries/s".into() })
}
