//! TEMPORARY minimal manifest reader for `moat lab` (same signatures as the real one being
//! written on the `sources` branch, which replaces this file on merge).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::model::{Cluster, ContainerPort, Namespace, Pod, PodKey, Protocol};

pub struct Origin {
    pub file: PathBuf,
    pub document: usize,
    pub item: Option<usize>,
}

pub struct Document {
    pub origin: Origin,
    pub value: Value,
}

pub struct Loaded {
    pub cluster: Cluster,
    pub skipped: BTreeMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl ToString) -> ManifestError {
    ManifestError::Invalid {
        path: path.into(),
        message: message.to_string(),
    }
}

pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| invalid(path, e))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| invalid(&file, e))?;
        for (document, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de).map_err(|e| invalid(&file, e))?;
            if value.is_null() {
                continue;
            }
            if value["kind"] == "List" {
                for (item, value) in value["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    documents.push(Document {
                        origin: Origin {
                            file: file.clone(),
                            document,
                            item: Some(item),
                        },
                        value,
                    });
                }
            } else {
                documents.push(Document {
                    origin: Origin {
                        file: file.clone(),
                        document,
                        item: None,
                    },
                    value,
                });
            }
        }
    }
    Ok(documents)
}

pub fn build_cluster(documents: &[Document]) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded {
        cluster: Cluster::default(),
        skipped: BTreeMap::new(),
    };
    for document in documents {
        let v = &document.value;
        let labels = || -> BTreeMap<String, String> {
            serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
        };
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match v["kind"].as_str().unwrap_or_default() {
            "Namespace" => {
                loaded.cluster.namespaces.insert(
                    name.clone(),
                    Namespace {
                        name,
                        labels: labels(),
                    },
                );
            }
            "Pod" => {
                let namespace = v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string();
                let mut ips: Vec<std::net::IpAddr> = Vec::new();
                for ip in v["status"]["podIPs"].as_array().into_iter().flatten() {
                    ips.extend(
                        ip["ip"]
                            .as_str()
                            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok()),
                    );
                }
                if let Some(ip) = v["status"]["podIP"].as_str().and_then(|ip| ip.parse().ok()) {
                    if !ips.contains(&ip) {
                        ips.insert(0, ip);
                    }
                }
                let mut ports = Vec::new();
                for container in v["spec"]["containers"].as_array().into_iter().flatten() {
                    for port in container["ports"].as_array().into_iter().flatten() {
                        let number = port["containerPort"].as_u64().unwrap_or(0);
                        let protocol = Protocol::parse(port["protocol"].as_str().unwrap_or("TCP"))
                            .ok_or_else(|| invalid(&document.origin.file, "bad protocol"))?;
                        let port = u16::try_from(number)
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| invalid(&document.origin.file, "bad containerPort"))?;
                        ports.push(ContainerPort {
                            name: None,
                            port,
                            protocol,
                        });
                    }
                }
                let key = PodKey::new(namespace, name);
                let pod = Pod {
                    key: key.clone(),
                    uid: None,
                    labels: labels(),
                    ips,
                    node_name: None,
                    host_network: v["spec"]["hostNetwork"].as_bool().unwrap_or(false),
                    ports,
                };
                loaded.cluster.pods.insert(key, pod);
            }
            kind => *loaded.skipped.entry(kind.to_string()).or_default() += 1,
        }
    }
    Ok(loaded)
}

pub fn load(paths: &[PathBuf]) -> Result<Loaded, ManifestError> {
    build_cluster(&read_documents(paths)?)
}
