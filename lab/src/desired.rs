//! From manifests to what the lab should look like: the normalized object list (every pod
//! dual-stack) that the lab's agent reads, and the pods to run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::addresses::{self, PodAddresses};
use super::podspec::{self, Objects, PodNode};
use super::role::{self, Role};
use super::fsutil::write_atomic;
use super::state::PortState;
use super::{lab_dir, LabError};
use moat_agent::model::PodKey;
use moat_agent::sources::manifests::{build_cluster, read_documents};

pub struct DesiredPod {
    pub key: PodKey,
    pub addresses: PodAddresses,
    pub ports: Vec<PortState>,
    pub role: Role,
    /// Uid, hostPID, volumes and mounts.
    pub node: PodNode,
}

pub struct Desired {
    /// Every object read, pods with addresses filled in.
    pub items: Vec<Value>,
    pub pods: BTreeMap<PodKey, DesiredPod>,
    /// hostNetwork pods: listed in the manifests, but not run (the lab never touches the
    /// host's network namespace).
    pub host_network: Vec<PodKey>,
}

fn is_pod(value: &Value) -> bool {
    value["kind"] == "Pod"
}

fn pod_key(value: &Value) -> Option<PodKey> {
    let name = value["metadata"]["name"].as_str()?;
    let namespace = value["metadata"]["namespace"].as_str().unwrap_or("default");
    Some(PodKey::new(namespace, name))
}

/// Addresses in a pod object's status (podIP and podIPs).
fn given_ips(value: &Value) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let status = &value["status"];
    let listed = status["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["ip"].as_str());
    for ip in status["podIP"].as_str().into_iter().chain(listed) {
        if let Ok(ip) = ip.parse() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    ips
}

/// Checks what `given_ips` would silently skip: every address in a pod's status must be an IP.
/// The error names the offending field.
fn check_ips(value: &Value) -> Result<(), String> {
    let status = &value["status"];
    if let Some(ip) = status.get("podIP").filter(|ip| !ip.is_null()) {
        if ip
            .as_str()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_none()
        {
            return Err(format!("field status.podIP: {ip} is not an IP address"));
        }
    }
    if let Some(list) = status.get("podIPs").filter(|list| !list.is_null()) {
        let Some(list) = list.as_array() else {
            return Err(format!("field status.podIPs: {list} is not a list"));
        };
        for (index, entry) in list.iter().enumerate() {
            if entry["ip"]
                .as_str()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .is_none()
            {
                return Err(format!(
                    "field status.podIPs[{index}].ip: {} is not an IP address",
                    entry["ip"]
                ));
            }
        }
    }
    Ok(())
}

/// Writes the pod's addresses into its status, keeping what the manifest gave.
fn fill(value: &mut Value, addresses: PodAddresses) {
    let mut ips = given_ips(value);
    for ip in [IpAddr::V4(addresses.v4), IpAddr::V6(addresses.v6)] {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if !value["status"].is_object() {
        value["status"] = json!({});
    }
    if value["status"]["podIP"].as_str().is_none() {
        value["status"]["podIP"] = json!(addresses.v4.to_string());
    }
    value["status"]["podIPs"] = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
}

/// Reads `paths` and computes the lab's pods; `previous` addresses are kept where possible,
/// and no pod gets a fresh address that one of them has now.
pub fn compute(
    paths: &[PathBuf],
    previous: &BTreeMap<PodKey, PodAddresses>,
) -> Result<Desired, LabError> {
    let mut documents = read_documents(paths)?;
    let objects = Objects::from_items(documents.iter().map(|d| &d.value));
    let mut given = BTreeMap::new();
    let mut roles = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for document in documents.iter().filter(|d| is_pod(&d.value)) {
        let bad = |message: String| LabError::BadObject {
            file: document.origin.file.clone(),
            object: pod_key(&document.value)
                .map(|key| format!("pod {key}"))
                .unwrap_or_else(|| "pod without metadata.name".into()),
            message,
        };
        check_ips(&document.value).map_err(bad)?;
        let role = role::role_of(&document.value).map_err(bad)?;
        if let Some(key) = pod_key(&document.value) {
            roles.insert(key, role);
        }
        if document.value["spec"]["hostNetwork"].as_bool() == Some(true) {
            continue;
        }
        if let Some(key) = pod_key(&document.value) {
            let node = podspec::parse(&document.value, &key.namespace, &key.name, &objects).map_err(bad)?;
            nodes.insert(key, node);
        }
        if let Some(key) = pod_key(&document.value) {
            given.insert(key, given_ips(&document.value));
        }
    }
    let avoid: BTreeSet<IpAddr> = previous
        .values()
        .flat_map(|a| [IpAddr::V4(a.v4), IpAddr::V6(a.v6)])
        .collect();
    let assigned = addresses::assign(&given, previous, &avoid)?;
    for document in documents.iter_mut().filter(|d| is_pod(&d.value)) {
        let Some(key) = pod_key(&document.value) else { continue };
        if let Some(addresses) = assigned.get(&key) {
            fill(&mut document.value, *addresses);
        }
        // The agent knows pods by uid (kubelet cgroup layouts): it must read the lab's.
        if let Some(node) = nodes.get(&key) {
            document.value["metadata"]["uid"] = json!(node.uid);
        }
    }
    let loaded = build_cluster(&documents)?;
    let mut pods = BTreeMap::new();
    let mut host_network = Vec::new();
    for (key, pod) in &loaded.cluster.pods {
        if pod.host_network {
            host_network.push(key.clone());
            continue;
        }
        let addresses = *assigned
            .get(key)
            .ok_or_else(|| LabError::Internal(format!("pod {key} has no lab address")))?;
        let node = nodes
            .remove(key)
            .ok_or_else(|| LabError::Internal(format!("pod {key} has no node spec")))?;
        let mut ports: Vec<PortState> = pod
            .ports
            .iter()
            .map(|p| PortState::new(p.port, p.protocol))
            .collect();
        ports.sort();
        ports.dedup();
        pods.insert(
            key.clone(),
            DesiredPod {
                key: key.clone(),
                addresses,
                ports,
                role: roles.get(key).copied().unwrap_or_default(),
                node,
            },
        );
    }
    Ok(Desired {
        items: documents.into_iter().map(|d| d.value).collect(),
        pods,
        host_network,
    })
}

impl Desired {
    /// The objects for the agent's `cluster.json`: external and hidden pods left out.
    pub fn agent_items(&self) -> Vec<Value> {
        role::agent_items(&self.items)
    }
}

pub fn manifests_dir(lab: &str) -> PathBuf {
    lab_dir(lab).join("manifests")
}

/// Atomically (re)writes `manifests/cluster.json`: a `kind: List` of every object.
pub fn write_cluster_json(lab: &str, items: &[Value]) -> Result<PathBuf, LabError> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let text = serde_json::to_string_pretty(&list)
        .map_err(|e| LabError::Internal(format!("serializing cluster.json: {e}")))?;
    let path = manifests_dir(lab).join("cluster.json");
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_keeps_given_addresses_and_adds_missing() {
        let mut pod = json!({"kind": "Pod", "metadata": {"name": "a"}, "status": {"podIPs": [{"ip": "fd00::5"}]}});
        let addresses = PodAddresses {
            v4: "10.250.0.1".parse().unwrap(),
            v6: "fd00::5".parse().unwrap(),
        };
        fill(&mut pod, addresses);
        assert_eq!(pod["status"]["podIP"], "10.250.0.1");
        assert_eq!(
            pod["status"]["podIPs"],
            json!([{"ip": "fd00::5"}, {"ip": "10.250.0.1"}])
        );
        assert_eq!(pod_key(&pod), Some(PodKey::new("default", "a")));
    }

    #[test]
    fn addresses_that_are_not_ips_name_the_field() {
        let pod =
            |status: Value| json!({"kind": "Pod", "metadata": {"name": "a"}, "status": status});
        assert_eq!(check_ips(&pod(json!(null))), Ok(()));
        assert_eq!(
            check_ips(&pod(
                json!({"podIP": "10.0.0.1", "podIPs": [{"ip": "fd00::1"}]})
            )),
            Ok(())
        );
        let error = check_ips(&pod(json!({"podIP": "not-an-ip"}))).unwrap_err();
        assert!(
            error.contains("status.podIP:") && error.contains("not-an-ip"),
            "{error}"
        );
        let error =
            check_ips(&pod(json!({"podIPs": [{"ip": "fd00::1"}, {"ip": "x"}]}))).unwrap_err();
        assert!(error.contains("status.podIPs[1].ip"), "{error}");
        assert!(check_ips(&pod(json!({"podIP": 5}))).is_err());
    }

    #[test]
    fn bad_role_or_address_fails_compute_naming_the_file() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("pods.yaml");
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\nstatus:\n  podIP: nope\n").unwrap();
        let error = compute(std::slice::from_ref(&file), &BTreeMap::new())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("pods.yaml")
                && error.contains("pod x/a")
                && error.contains("status.podIP"),
            "{error}"
        );
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\n  annotations: {lab.moat.dev/role: hidden}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  namespace: x\n").unwrap();
        let desired = compute(std::slice::from_ref(&file), &BTreeMap::new()).unwrap();
        assert_eq!(desired.pods[&PodKey::new("x", "a")].role, Role::Hidden);
        assert_eq!(desired.pods[&PodKey::new("x", "b")].role, Role::Pod);
        assert_eq!(desired.items.len(), 2);
        let kept = desired.agent_items();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["metadata"]["name"], "b");
        // Addresses are filled in for hidden pods too (the lab runs them).
        assert!(desired.items[0]["status"]["podIP"].is_string());
    }
}
