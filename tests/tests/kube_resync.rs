//! Re-lists and restarts of `moat agent --kubeconfig`: an expired watch re-lists without an
//! enforcement gap, and a restarted agent prunes what the cluster no longer has.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moat_integration::kube::{find, lab_objects, write_list, ApiServer, KubeAgent};
use moat_integration::{documents, namespace_yaml, pod_yaml, wait_verdict, Lab, Manifests, UpOptions, Verdict};

fn lab(manifests: &Manifests) -> Lab {
    let cluster = documents(&[
        namespace_yaml("x", &[("tenant", "a")]),
        namespace_yaml("z", &[("tenant", "b")]),
        pod_yaml("x", "p", &[], &[(80, "TCP")]),
        pod_yaml("x", "q", &[], &[(80, "TCP")]),
        pod_yaml("z", "r", &[], &[(80, "TCP")]),
    ]);
    Lab::up(&[manifests.write("cluster.yaml", &cluster)], UpOptions { no_agent: true, ..UpOptions::default() })
}

#[test]
fn expired_watch_relists_without_an_enforcement_gap() {
    let manifests = Manifests::new();
    let lab = lab(&manifests);
    let state = manifests.dir().join("state.json");
    write_list(&state, &lab_objects(&lab));
    let server = ApiServer::start(&[&state], 1);
    let agent = KubeAgent::start(&lab, &server);
    let lists_before = count_lines(&agent, "listed");

    // Probe both verdicts back to back while the watch expires and the agent re-lists.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = Arc::clone(&stop);
        let (moat, name) = (lab.moat().to_path_buf(), lab.name().to_string());
        std::thread::spawn(move || {
            let mut wrong = Vec::new();
            let mut probes = 0;
            while !stop.load(Ordering::Relaxed) {
                for (to, want) in [("z/r", "deny"), ("x/q", "allow")] {
                    let output = std::process::Command::new(&moat)
                        .args(["lab", "probe", "--name", &name, "--from", "x/p", "--to", to, "--port", "80", "-o", "json"])
                        .output()
                        .expect("running lab probe");
                    let text = String::from_utf8_lossy(&output.stdout).to_string();
                    probes += 1;
                    if !text.contains(&format!("\"verdict\":\"{want}\"")) {
                        wrong.push(format!("x/p -> {to}: {text}"));
                    }
                }
            }
            (probes, wrong)
        })
    };
    let (status, body) = server.request("POST", "/testapi/compact?dropWatches=true", None);
    assert!((200..300).contains(&status), "compact: {status} {body}");
    let relisted = moat_integration::eventually(Duration::from_secs(30), || {
        (count_lines(&agent, "listed") >= lists_before + 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (probes, wrong) = prober.join().expect("the prober");
    assert!(relisted.is_some(), "the agent did not re-list after the compaction; log:\n{}", agent.log_text());
    assert!(probes >= 4, "too few probes: {probes}");
    assert!(wrong.is_empty(), "verdicts changed during the re-list: {wrong:?}");
}

#[test]
fn restarted_agent_prunes_what_the_cluster_no_longer_has() {
    let manifests = Manifests::new();
    let lab = lab(&manifests);
    let objects = lab_objects(&lab);
    let state = manifests.dir().join("state.json");
    write_list(&state, &objects);
    let server = ApiServer::start(&[&state], 1);
    let mut agent = KubeAgent::start(&lab, &server);
    assert_eq!(lab.probe("x/q", "x/p", "80/TCP"), Verdict::Allowed, "same tenant");

    agent.stop();
    // While no agent runs, x/q leaves the cluster (its lab pod stays, now unknown to Kubernetes).
    server.delete(find(&objects, "Pod", "x/q"));
    assert_eq!(lab.probe("x/q", "x/p", "80/TCP"), Verdict::Allowed, "pins keep the old state while no agent runs");
    agent.restart();
    let enforcing: Vec<_> = agent.log_json().into_iter().filter(|line| line["message"] == "enforcing").collect();
    let last = enforcing.last().expect("an `enforcing` line");
    assert!(last["removals"].as_u64().is_some_and(|n| n > 0), "the restart pruned nothing: {last}");
    wait_verdict("x/q (no longer in the cluster) is pending", Verdict::Denied, Duration::from_secs(5), || {
        lab.probe("x/q", "x/p", "80/TCP")
    });
    assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied, "the rest is unchanged");
}

fn count_lines(agent: &KubeAgent, message: &str) -> usize {
    agent.log_json().iter().filter(|line| line["message"] == message).count()
}
