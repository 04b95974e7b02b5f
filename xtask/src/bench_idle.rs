//! `cargo xtask bench` section `idle`: what the agent costs the node when nothing happens —
//! its CPU time at rest with one pod on the node and with a full node's worth of pods, each
//! with a secret and a configMap volume (what the guard protects), release build. The one-pod
//! lab is the baseline: the ratio says how the cost at rest grows with the pods.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::bench_guard_agent::lab_agent_pid;
use crate::bench_run::{median, Context, Measurement, Row, Section, REPEATS};
use crate::util::{check_interrupt, target_dir, Lab};

/// Pods in the full node's lab (the kubelet's default limit is 110 a node).
const PODS: usize = 100;
/// Let the agent finish attaching and scanning after `lab up` before measuring.
const SETTLE: Duration = Duration::from_secs(5);

pub fn idle(ctx: &Context) -> Result<Section> {
    let moat = ctx.moat_release()?;
    // Long enough to hold the periodic full scans (every 10 s) several times over.
    let window = Duration::from_secs(u64::from(ctx.seconds.max(10)) * 3);
    let dir = target_dir()?.join("bench-idle");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut measured = Vec::new();
    for pods in [1, PODS] {
        let file = dir.join(format!("pods-{pods}.yaml"));
        std::fs::write(&file, manifest(pods)).with_context(|| format!("writing {}", file.display()))?;
        println!("\n== idle: lab \"bench-idle\" with {pods} pod(s), the agent's CPU over {} s, {REPEATS} times", window.as_secs());
        let lab = Lab::up(&moat, "bench-idle", &[file], &[])?;
        std::thread::sleep(SETTLE);
        let pid = lab_agent_pid(&moat, lab.name())?.context("the lab's agent is not running")?;
        let mut runs = Vec::new();
        for _ in 0..REPEATS {
            runs.push(cpu_at_rest(pid, window)?);
        }
        drop(lab);
        measured.push(median(&mut runs).context("no measurements")?);
    }
    let [one, full] = <[Measurement; 2]>::try_from(measured).map_err(|_| anyhow::anyhow!("two labs measured"))?;
    Ok(Section {
        id: "idle",
        title: "The agent at rest: its CPU time with one pod and with a full node",
        columns: ["1 pod", "full node"],
        rows: vec![Row { metric: format!("agent CPU at rest, 1 pod against {PODS} pods"), baseline: one, moat: full }],
        method: format!(
            "One lab at a time (release build, the guard at its defaults), {} s after `lab up`; the agent's CPU \
             time (user + system, all threads, from /proc/PID/stat) over {REPEATS} windows of {} s each, median",
            SETTLE.as_secs(),
            window.as_secs()
        ),
        notes: format!(
            "Nothing changes in either lab while it is measured: no API or manifest change, no pod coming or \
             going. The {PODS} pods are spread over three tenants, each pod with a secret and a configMap volume \
             (each a tmpfs mount, as the lab makes them) and its own network namespace. 10 ms of CPU a second is 1 % of one CPU."
        ),
        table: None,
    })
}

/// The agent's CPU time over `window`, in ms per second.
fn cpu_at_rest(pid: u32, window: Duration) -> Result<Measurement> {
    check_interrupt()?;
    let (before, started) = (cpu_ticks(pid)?, Instant::now());
    std::thread::sleep(window);
    let (after, elapsed) = (cpu_ticks(pid)?, started.elapsed());
    // SAFETY: sysconf takes a constant and returns a number.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ms = (after.saturating_sub(before)) as f64 * 1000.0 / ticks_per_s;
    let rate = ms / elapsed.as_secs_f64();
    eprintln!("  agent {pid}: {rate:.2} ms of CPU per s");
    Ok(Measurement { rate, unit: "ms CPU/s".into() })
}

/// utime + stime of the whole process (exited threads included), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = Path::new("/proc").join(pid.to_string()).join("stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let fields: Vec<&str> = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace().collect();
    // Fields 14 and 15 of the file: the 12th and 13th after the name.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).with_context(|| format!("no field {} in {}", i + 3, path.display()));
    Ok(field(11)? + field(12)?)
}

/// `pods` pods over three tenants, each with a secret and a configMap volume.
fn manifest(pods: usize) -> String {
    let mut docs = Vec::new();
    for t in 0..3 {
        docs.push(format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: idle-{t}, labels: {{tenant: t{t}}}}}"));
        docs.push(format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: creds, namespace: idle-{t}}}\ndata: {{token: c2VjcmV0}}"));
        docs.push(format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: idle-{t}}}\ndata: {{app.yaml: \"x: 1\"}}"));
    }
    for i in 0..pods {
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: idle-{}}}\nspec:\n  containers: [{{name: c, image: x, \
             volumeMounts: [{{name: creds, mountPath: /creds}}, {{name: settings, mountPath: /settings}}]}}]\n  volumes: \
             [{{name: creds, secret: {{secretName: creds}}}}, {{name: settings, configMap: {{name: settings}}}}]",
            i % 3
        ));
    }
    docs.join("\n---\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_holds_every_pod_and_its_volumes() {
        let text = manifest(4);
        assert_eq!(text.matches("kind: Pod").count(), 4);
        assert_eq!(text.matches("kind: Namespace").count(), 3);
        assert_eq!(text.matches("secretName: creds").count(), 4);
    }

    #[test]
    fn reads_this_process_cpu() {
        assert!(cpu_ticks(std::process::id()).is_ok());
    }
}
