//! The `moat-test-apiserver` binary: manifests in, kubeconfig out, kube-rs through it.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moat-testapi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    dir
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: team-a, labels: {app: web}}
spec: {nodeName: worker-1, containers: [{name: c, image: nginx}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {tenant: a}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: worker-1}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny, namespace: team-a}
  spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

fn start(dir: &Path, extra: &[&str]) -> (Killed, PathBuf, String) {
    let kubeconfig = dir.join("kubeconfig");
    let port_file = dir.join("port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat-test-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--load"])
        .arg(dir.join("manifests"))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .arg("--port-file")
        .arg(&port_file)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn moat-test-apiserver");
    let stdout = child.stdout.take().expect("stdout");
    let child = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read stdout");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    let port = std::fs::read_to_string(&port_file).unwrap();
    assert!(url.ends_with(&format!(":{}", port.trim())));
    (child, kubeconfig, url)
}

async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_loads_manifests_and_writes_kubeconfig() {
    let dir = temp_dir("bin");
    std::fs::write(dir.join("manifests/cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(dir.join("manifests/ignored.txt"), "not a manifest").unwrap();
    let (_child, kubeconfig, url) = start(&dir, &["--start-resource-version", "5000"]);
    assert!(url.starts_with("http://127.0.0.1:"));
    let client = client_from(&kubeconfig).await;

    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(namespaces.items.len(), 1);
    let rv: u64 = namespaces
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv > 5000, "continues above --start-resource-version");
    let pods = Api::<Pod>::namespaced(client.clone(), "team-a")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1);
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(nodes.items[0].metadata.name.as_deref(), Some("worker-1"));
    let np = Api::<NetworkPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(np.items.len(), 1);
    // The default namespace of the kubeconfig context is "default".
    assert!(Api::<Pod>::default_namespaced(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_rejects_bad_manifests() {
    let dir = temp_dir("bad");
    std::fs::write(
        dir.join("manifests/bad.yaml"),
        "apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moat-test-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--load"])
        .arg(dir.join("manifests"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Gadget"));
    let _ = std::fs::remove_dir_all(&dir);
}
