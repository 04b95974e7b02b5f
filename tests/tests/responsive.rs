//! The agent stays responsive under an event storm and under abuse of its admin socket and
//! metrics server: a crowd of idle clients, endless request lines, observers that never
//! read, a crowd of status requests. Through all of it `moat status`, `/healthz` and
//! `/metrics` answer, abusive clients get a clear refusal, and the agent's memory does not
//! grow with what the clients send.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use moat_integration::{documents, http_get, namespace_yaml, pod_yaml, Family, Lab, Manifests, UpOptions};

/// How long a client waits for any one answer: generous, this is about answering at all.
const ANSWER: Duration = Duration::from_secs(30);
/// Bytes each endless-line client sends (the agent accepts 64 KiB).
const ENDLESS_BYTES: usize = 32 << 20;

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}


fn status(lab: &Lab) -> serde_json::Value {
    let output = Command::new(lab.moat()).args(["status", "--lab", lab.name(), "-o", "json"]).output().expect("moat status");
    assert!(output.status.success(), "moat status: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

#[test]
fn status_health_and_metrics_answer_under_a_storm_and_socket_abuse() {
    let manifests = Manifests::new();
    let file = manifests.write(
        "cluster.yaml",
        &documents(&[
            namespace_yaml("a1", &[("tenant", "a")]),
            namespace_yaml("b1", &[("tenant", "b")]),
            pod_yaml("a1", "p1", &[], &[(80, "TCP")]),
            pod_yaml("b1", "p2", &[], &[(80, "TCP")]),
        ]),
    );
    let lab = Lab::up(&[file], UpOptions::default());
    let socket = lab.run_dir().join("admin.sock");
    let pid = lab.status()["agent"]["pid"].as_i64().expect("agent pid") as i32;
    let metrics = lab.status()["agent"]["metricsAddress"].as_str().map(String::from).expect("metrics address");
    let target = lab.pod_ip("b1/p2", Family::V4).to_string();

    // The storm: a denied connect flood to distinct ports, for the whole test.
    let mut storm = Command::new(lab.moat())
        .args(["lab", "exec", "--name", lab.name(), "a1/p1", "--"])
        .arg(lab.lab_bin())
        .args(["__pod-burst", "--protocol", "tcp", "--to", &target, "--port", "1024", "--ports", "60000"])
        .args(["--count", &u64::MAX.to_string(), "--seconds", "60"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the storm");
    let rss_before = rss_kib(pid);

    // A crowd of clients that connect and send nothing: more than the agent serves at once.
    let idle: Vec<UnixStream> = (0..100).map(|_| UnixStream::connect(&socket).expect("connecting")).collect();
    // Observers that never read a byte of what they asked for.
    let mut deaf: Vec<UnixStream> = Vec::new();
    for _ in 0..5 {
        let mut stream = UnixStream::connect(&socket).expect("connecting");
        let _ = stream.write_all(b"{\"observe\":{}}\n");
        deaf.push(stream);
    }
    // Endless request lines, each sent until the agent closes the connection.
    let endless: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut stream = UnixStream::connect(&socket).expect("connecting");
                stream.set_write_timeout(Some(ANSWER)).expect("write timeout");
                let chunk = vec![b'x'; 64 << 10];
                let mut sent = 0;
                while sent < ENDLESS_BYTES {
                    match stream.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
                stream.set_read_timeout(Some(ANSWER)).expect("read timeout");
                let mut answer = String::new();
                let _ = BufReader::new(&stream).read_line(&mut answer);
                (sent, answer)
            })
        })
        .collect();
    // A crowd of status requests at once.
    let crowd: Vec<_> = (0..20).map(|_| Command::new(lab.moat()).args(["status", "--lab", lab.name(), "-o", "json"]).output()).collect();

    // Through all of it: status, health and metrics answer.
    let report = status(&lab);
    assert_eq!(report["ready"], true, "{report}");
    assert_eq!(http_get(&metrics, "/healthz").0, 200);
    let (code, body) = http_get(&metrics, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("moat_events_lost_total"), "{body}");
    // A new client pushes out the idle one waiting longest: every status request is served.
    for (i, output) in crowd.into_iter().enumerate() {
        let output = output.expect("moat status ran");
        assert!(output.status.success(), "status #{i}: {}", String::from_utf8_lossy(&output.stderr));
    }
    for handle in endless {
        let (sent, answer) = handle.join().expect("endless client");
        assert!(sent < ENDLESS_BYTES || answer.contains("longer than") || answer.contains("too many clients"), "the agent stopped reading an endless line ({sent} bytes sent): {answer:?}");
        assert!(answer.contains("longer than") || answer.contains("too many clients"), "an endless line is refused with a reason: {answer:?}");
    }
    let rss_after = rss_kib(pid);
    eprintln!("agent RSS: {rss_before} KiB before the abuse, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the agent's memory does not grow with what clients send: {rss_before} KiB before, {rss_after} KiB after"
    );

    // Idle clients are told why they are closed: pushed out, or past the request deadline.
    for mut client in idle {
        client.set_read_timeout(Some(ANSWER)).expect("read timeout");
        let mut answer = String::new();
        let _ = BufReader::new(&mut client).read_line(&mut answer);
        assert!(answer.contains("too many clients") || answer.contains("no request line within"), "{answer:?}");
    }
    drop(deaf);
    let refused = http_get(&metrics, "/metrics").1;
    assert!(refused.contains("moat_requests_refused_total{server=\"admin-socket\",reason=\"too-many-clients\"}"), "{refused}");
    let _ = storm.kill();
    let _ = storm.wait();
}
