//! The DNS isolation tests' tools: `moat-dns` (built next to the agent) serving as the lab's
//! cluster DNS, and asking questions from inside pods.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{moat_bin, Lab};

/// `moat-dns`, built next to the agent binary.
pub fn dns_bin() -> PathBuf {
    moat_bin().with_file_name("moat-dns")
}

/// `moat-dns serve DATA` running in a pod; killed on drop.
pub struct DnsServer {
    child: Child,
}

impl DnsServer {
    /// Starts the server in `pod` and waits until it has bound its sockets.
    pub fn start(lab: &Lab, pod: &str, data: &std::path::Path) -> DnsServer {
        let mut child = Command::new(lab.moat())
            .args(["lab", "exec", "--name", lab.name(), pod, "--"])
            .arg(dns_bin())
            .arg("serve")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("starting moat-dns serve in {pod}: {err}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let server = DnsServer { child };
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("serving") => server,
            other => panic!("moat-dns serve in {pod} did not start: {other:?}"),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One question from `pod` to `server` (`moat-dns query NAME --server IP EXTRA...`): the
/// JSON line it printed.
pub fn query(lab: &Lab, pod: &str, server: IpAddr, name: &str, extra: &[&str]) -> serde_json::Value {
    let bin = dns_bin();
    let server = server.to_string();
    let mut args = vec![bin.to_str().expect("UTF-8 path"), "query", name, "--server", &server];
    args.extend_from_slice(extra);
    let output = lab.exec(pod, &args);
    serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|err| panic!("moat-dns query {name} from {pod}: unreadable output ({err})\n{output}"))
}
