//! What a pod manifest asks of its node besides networking: its uid, `hostPID`, and its
//! volumes with where its containers mount them. Pure: reading the manifests' Secrets and
//! ConfigMaps for volume contents, no I/O. Errors name the field.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where Kubernetes mounts a pod's service-account token.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNode {
    pub uid: String,
    pub host_pid: bool,
    pub service_account: String,
    pub volumes: Vec<Volume>,
    pub mounts: Vec<Mount>,
    /// Volumes and mounts the lab does not model, said once at `up`.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub kind: VolumeKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeKind {
    /// A tmpfs of its own under the kubelet's root, filled with `files`:
    /// `kubernetes.io~<plugin>/<name>`.
    Tmpfs { plugin: String, files: Vec<VolumeFile> },
    /// A plain directory under the kubelet's root (`emptyDir` on disk).
    Dir { plugin: String },
    /// A path of the host; `create` (`Directory` or `File`) when the type says `...OrCreate`.
    HostPath { path: PathBuf, create: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeFile {
    /// Relative path inside the volume.
    pub path: PathBuf,
    pub content: FileContent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileContent {
    Bytes(Vec<u8>),
    /// The pod's service-account token (rendered by the node, which knows the lab).
    Token { audience: String },
    /// The cluster's CA bundle (the lab's CA).
    ClusterCa,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub volume: String,
    /// Absolute path inside the pod.
    pub path: PathBuf,
    #[serde(default)]
    pub sub_path: Option<PathBuf>,
    pub read_only: bool,
}

/// The uid of a pod without `metadata.uid`: UUID-shaped (version 8, RFC 9562) from a
/// SHA-256 of namespace and name, so every `up` and `apply` derives the same one.
pub fn derived_uid(namespace: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("moat-lab-pod\0{namespace}\0{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The pod's uid: `metadata.uid`, else [`derived_uid`]. It names a directory, so it must be
/// a plain name.
pub fn uid_of(pod: &Value, namespace: &str, name: &str) -> Result<String, String> {
    match pod["metadata"].get("uid") {
        None | Some(Value::Null) => Ok(derived_uid(namespace, name)),
        Some(Value::String(uid)) if uid.is_empty() => Ok(derived_uid(namespace, name)),
        Some(Value::String(uid)) if plain_name(uid) => Ok(uid.clone()),
        Some(other) => Err(format!(
            "field metadata.uid: {other} is not a uid (want 1-64 characters of [A-Za-z0-9._-], not starting with .)"
        )),
    }
}

fn plain_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && !text.starts_with('.')
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A relative path that stays inside its volume.
fn inside(text: &str) -> bool {
    let path = Path::new(text);
    !text.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Secrets and ConfigMaps of the manifests, by (kind, namespace, name), as key → bytes.
#[derive(Default)]
pub struct Objects {
    data: BTreeMap<(String, String, String), BTreeMap<String, Vec<u8>>>,
}

impl Objects {
    pub fn from_items<'a>(items: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut objects = Self::default();
        for item in items {
            let kind = item["kind"].as_str().unwrap_or_default();
            if kind != "Secret" && kind != "ConfigMap" {
                continue;
            }
            let namespace = item["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            let name = item["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let mut data = BTreeMap::new();
            for (field, base64) in [("data", kind == "Secret"), ("stringData", false), ("binaryData", true)] {
                for (key, value) in item[field].as_object().into_iter().flatten() {
                    let text = value.as_str().unwrap_or_default();
                    let bytes = if base64 {
                        base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_else(|_| text.as_bytes().to_vec())
                    } else {
                        text.as_bytes().to_vec()
                    };
                    data.insert(key.clone(), bytes);
                }
            }
            objects.data.insert((kind.to_string(), namespace, name), data);
        }
        objects
    }

    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.data.get(&(kind.into(), namespace.into(), name.into()))
    }
}

/// Reads uid, hostPID, volumes and mounts of a Pod object in `namespace`.
pub fn parse(pod: &Value, namespace: &str, name: &str, objects: &Objects) -> Result<PodNode, String> {
    let uid = uid_of(pod, namespace, name)?;
    let spec = &pod["spec"];
    let host_pid = spec["hostPID"].as_bool().unwrap_or(false);
    let service_account = spec["serviceAccountName"]
        .as_str()
        .or(spec["serviceAccount"].as_str())
        .unwrap_or("default")
        .to_string();
    let mut notes = Vec::new();
    let mut volumes = Vec::new();
    for (i, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let volume_name = volume["name"]
            .as_str()
            .filter(|n| plain_name(n))
            .ok_or_else(|| format!("field {field}.name: {} is not a volume name", volume["name"]))?;
        match volume_kind(volume, &field, namespace, name, &uid, objects)? {
            Some(kind) => volumes.push(Volume { name: volume_name.into(), kind }),
            None => notes.push(format!("volume {volume_name}: this kind of volume is not modelled by the lab; not mounted")),
        }
    }
    let mut mounts: Vec<Mount> = Vec::new();
    for (c, container) in spec["containers"].as_array().into_iter().flatten().enumerate() {
        for (m, mount) in container["volumeMounts"].as_array().into_iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].volumeMounts[{m}]");
            let volume = mount["name"].as_str().ok_or_else(|| format!("field {field}.name: missing"))?;
            let path = mount["mountPath"]
                .as_str()
                .filter(|p| p.starts_with('/'))
                .ok_or_else(|| format!("field {field}.mountPath: {} is not an absolute path", mount["mountPath"]))?;
            let sub_path = match mount["subPath"].as_str().filter(|s| !s.is_empty()) {
                Some(sub) if inside(sub) => Some(PathBuf::from(sub)),
                Some(sub) => return Err(format!("field {field}.subPath: {sub:?} leaves the volume")),
                None => None,
            };
            if !spec["volumes"].as_array().into_iter().flatten().any(|v| v["name"] == volume) {
                return Err(format!("field {field}.name: no volume {volume:?} in spec.volumes"));
            }
            if !volumes.iter().any(|v| v.name == volume) {
                continue; // not modelled: noted above
            }
            let wanted = Mount {
                volume: volume.into(),
                path: PathBuf::from(path),
                sub_path,
                read_only: mount["readOnly"].as_bool().unwrap_or(false),
            };
            // Containers share the lab pod's one mount namespace: the first mount of a path wins.
            match mounts.iter().find(|m| m.path == wanted.path) {
                Some(first) if *first != wanted => {
                    notes.push(format!("{field}: {path} is already mounted from volume {}; skipped", first.volume))
                }
                Some(_) => {}
                None => mounts.push(wanted),
            }
        }
    }
    let automount = spec["automountServiceAccountToken"].as_bool().unwrap_or(true);
    if automount && !mounts.iter().any(|m| m.path == Path::new(TOKEN_MOUNT)) {
        // As the ServiceAccount admission plugin does: kube-api-access-<5 characters>.
        let volume = format!("kube-api-access-{}", &suffix(&uid));
        volumes.push(Volume { name: volume.clone(), kind: api_access() });
        mounts.push(Mount { volume, path: TOKEN_MOUNT.into(), sub_path: None, read_only: true });
    }
    Ok(PodNode { uid, host_pid, service_account, volumes, mounts, notes }.with_namespace(namespace))
}

/// Five characters of [a-z0-9] from the uid.
fn suffix(uid: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    Sha256::digest(uid.as_bytes())[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// The projected volume the ServiceAccount admission plugin adds.
fn api_access() -> VolumeKind {
    let file = |path: &str, content| VolumeFile { path: path.into(), content };
    VolumeKind::Tmpfs {
        plugin: "kubernetes.io~projected".into(),
        files: vec![
            file("token", FileContent::Token { audience: String::new() }),
            file("ca.crt", FileContent::ClusterCa),
            // Filled in with the pod's namespace: see `with_namespace`.
            file("namespace", FileContent::Bytes(Vec::new())),
        ],
    }
}

fn volume_kind(
    volume: &Value,
    field: &str,
    namespace: &str,
    pod: &str,
    uid: &str,
    objects: &Objects,
) -> Result<Option<VolumeKind>, String> {
    let tmpfs = |plugin: &str, files| Ok(Some(VolumeKind::Tmpfs { plugin: plugin.into(), files }));
    if let Some(host) = volume.get("hostPath") {
        let path = host["path"]
            .as_str()
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| format!("field {field}.hostPath.path: {} is not an absolute path", host["path"]))?;
        let create = match host["type"].as_str().unwrap_or_default() {
            "DirectoryOrCreate" => Some("Directory".to_string()),
            "FileOrCreate" => Some("File".to_string()),
            _ => None,
        };
        return Ok(Some(VolumeKind::HostPath { path: path.into(), create }));
    }
    if let Some(secret) = volume.get("secret") {
        let name = secret["secretName"].as_str().unwrap_or_default();
        let files = keyed_files(objects.get("Secret", namespace, name), &secret["items"], &format!("{field}.secret.items"))?;
        return tmpfs("kubernetes.io~secret", files);
    }
    if let Some(config) = volume.get("configMap") {
        let name = config["name"].as_str().unwrap_or_default();
        let files = keyed_files(objects.get("ConfigMap", namespace, name), &config["items"], &format!("{field}.configMap.items"))?;
        return tmpfs("kubernetes.io~configmap", files);
    }
    if let Some(projected) = volume.get("projected") {
        let mut files = Vec::new();
        for (s, source) in projected["sources"].as_array().into_iter().flatten().enumerate() {
            let field = format!("{field}.projected.sources[{s}]");
            if let Some(token) = source.get("serviceAccountToken") {
                let path = token["path"].as_str().unwrap_or("token");
                check_inside(path, &format!("{field}.serviceAccountToken.path"))?;
                let audience = token["audience"].as_str().unwrap_or_default().to_string();
                files.push(VolumeFile { path: path.into(), content: FileContent::Token { audience } });
            } else if let Some(config) = source.get("configMap") {
                let name = config["name"].as_str().unwrap_or_default();
                let items_field = format!("{field}.configMap.items");
                match objects.get("ConfigMap", namespace, name) {
                    None if name == "kube-root-ca.crt" => {
                        for (path, _) in item_paths(&config["items"], &items_field, &["ca.crt".into()])? {
                            files.push(VolumeFile { path, content: FileContent::ClusterCa });
                        }
                    }
                    data => files.extend(keyed_files(data, &config["items"], &items_field)?),
                }
            } else if let Some(secret) = source.get("secret") {
                let name = secret["name"].as_str().unwrap_or_default();
                files.extend(keyed_files(objects.get("Secret", namespace, name), &secret["items"], &format!("{field}.secret.items"))?);
            } else if let Some(downward) = source.get("downwardAPI") {
                for (i, item) in downward["items"].as_array().into_iter().flatten().enumerate() {
                    let path = item["path"].as_str().unwrap_or_default();
                    check_inside(path, &format!("{field}.downwardAPI.items[{i}].path"))?;
                    let value = match item["fieldRef"]["fieldPath"].as_str().unwrap_or_default() {
                        "metadata.namespace" => namespace,
                        "metadata.name" => pod,
                        "metadata.uid" => uid,
                        _ => "",
                    };
                    files.push(VolumeFile { path: path.into(), content: FileContent::Bytes(value.as_bytes().to_vec()) });
                }
            }
        }
        return tmpfs("kubernetes.io~projected", files);
    }
    if let Some(empty) = volume.get("emptyDir") {
        return Ok(Some(if empty["medium"] == "Memory" {
            VolumeKind::Tmpfs { plugin: "kubernetes.io~empty-dir".into(), files: Vec::new() }
        } else {
            VolumeKind::Dir { plugin: "kubernetes.io~empty-dir".into() }
        }));
    }
    Ok(None)
}

fn check_inside(path: &str, field: &str) -> Result<(), String> {
    if inside(path) {
        Ok(())
    } else {
        Err(format!("field {field}: {path:?} is not a relative path inside the volume"))
    }
}

/// `(path, key)` for each of `items`, or for every key when there are none.
fn item_paths(items: &Value, field: &str, keys: &[String]) -> Result<Vec<(PathBuf, String)>, String> {
    let Some(items) = items.as_array() else {
        return Ok(keys.iter().map(|k| (PathBuf::from(k), k.clone())).collect());
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = item["key"].as_str().unwrap_or_default();
        let path = item["path"].as_str().unwrap_or(key);
        check_inside(path, &format!("{field}[{i}].path"))?;
        out.push((path.into(), key.to_string()));
    }
    Ok(out)
}

/// Files of a Secret or ConfigMap volume. A missing object gives an empty volume: the lab
/// has no API server to wait for it.
fn keyed_files(data: Option<&BTreeMap<String, Vec<u8>>>, items: &Value, field: &str) -> Result<Vec<VolumeFile>, String> {
    let Some(data) = data else { return Ok(Vec::new()) };
    let keys: Vec<String> = data.keys().filter(|k| inside(k)).cloned().collect();
    Ok(item_paths(items, field, &keys)?
        .into_iter()
        .filter_map(|(path, key)| {
            let bytes = data.get(&key)?.clone();
            Some(VolumeFile { path, content: FileContent::Bytes(bytes) })
        })
        .collect())
}

impl PodNode {
    /// Fills in what only the pod's namespace knows (the token volume's `namespace` file).
    fn with_namespace(mut self, namespace: &str) -> Self {
        for volume in &mut self.volumes {
            if let VolumeKind::Tmpfs { files, .. } = &mut volume.kind {
                for file in files.iter_mut() {
                    if file.path == Path::new("namespace") && file.content == FileContent::Bytes(Vec::new()) {
                        file.content = FileContent::Bytes(namespace.as_bytes().to_vec());
                    }
                }
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uids_are_taken_or_derived() {
        let uid = derived_uid("x", "a");
        assert_eq!(uid, derived_uid("x", "a"));
        assert_ne!(uid, derived_uid("x", "b"));
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "8");
        assert_eq!(uid_of(&json!({"metadata": {"uid": "abc-1"}}), "x", "a"), Ok("abc-1".into()));
        assert_eq!(uid_of(&json!({"metadata": {}}), "x", "a"), Ok(uid));
        let error = uid_of(&json!({"metadata": {"uid": "../etc"}}), "x", "a").unwrap_err();
        assert!(error.contains("metadata.uid"), "{error}");
    }

    #[test]
    fn token_secret_and_host_path_volumes() {
        let pod = json!({"spec": {
            "volumes": [
                {"name": "creds", "secret": {"secretName": "db"}},
                {"name": "kubelet", "hostPath": {"path": "/var/lib/kubelet", "type": "Directory"}},
                {"name": "claim", "persistentVolumeClaim": {"claimName": "c"}},
            ],
            "containers": [{"name": "app", "volumeMounts": [
                {"name": "creds", "mountPath": "/etc/creds"},
                {"name": "kubelet", "mountPath": "/host/var/lib/kubelet", "readOnly": true},
                {"name": "claim", "mountPath": "/data"},
            ]}, {"name": "side", "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}]}]
        }});
        let secret = json!({"kind": "Secret", "metadata": {"name": "db", "namespace": "x"}, "data": {"password": "c2VjcmV0"}, "stringData": {"user": "me"}});
        let objects = Objects::from_items([&secret]);
        let node = parse(&pod, "x", "a", &objects).unwrap();
        assert!(!node.host_pid);
        let names: Vec<&str> = node.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names[..2], ["creds", "kubelet"]);
        assert!(names[2].starts_with("kube-api-access-") && names[2].len() == "kube-api-access-".len() + 5, "{names:?}");
        let VolumeKind::Tmpfs { plugin, files } = &node.volumes[0].kind else { panic!("{:?}", node.volumes[0]) };
        assert_eq!(plugin, "kubernetes.io~secret");
        assert_eq!(files[0], VolumeFile { path: "password".into(), content: FileContent::Bytes(b"secret".to_vec()) });
        assert_eq!(files[1].path, Path::new("user"));
        let paths: Vec<&Path> = node.mounts.iter().map(|m| m.path.as_path()).collect();
        assert_eq!(paths, [Path::new("/etc/creds"), Path::new("/host/var/lib/kubelet"), Path::new(TOKEN_MOUNT)]);
        assert!(node.mounts[1].read_only && node.mounts[2].read_only);
        assert_eq!(node.notes.len(), 1, "{:?}", node.notes);
        let VolumeKind::Tmpfs { files, .. } = &node.volumes[2].kind else { panic!() };
        assert_eq!(files[2].content, FileContent::Bytes(b"x".to_vec()));
    }

    #[test]
    fn bad_fields_are_named() {
        let objects = Objects::default();
        let unknown = json!({"spec": {"containers": [{"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}});
        let error = parse(&unknown, "x", "a", &objects).unwrap_err();
        assert!(error.contains("spec.containers[0].volumeMounts[0].name"), "{error}");
        let relative = json!({"spec": {"volumes": [{"name": "h", "hostPath": {"path": "var"}}]}});
        let error = parse(&relative, "x", "a", &objects).unwrap_err();
        assert!(error.contains("spec.volumes[0].hostPath.path"), "{error}");
        let escape = json!({"spec": {"volumes": [{"name": "s", "secret": {"secretName": "s", "items": [{"key": "k", "path": "../k"}]}}]}});
        let objects = Objects::from_items([&json!({"kind": "Secret", "metadata": {"name": "s", "namespace": "x"}, "stringData": {"k": "v"}})]);
        let error = parse(&escape, "x", "a", &objects).unwrap_err();
        assert!(error.contains("spec.volumes[0].secret.items[0].path"), "{error}");
        let no_token = json!({"spec": {"automountServiceAccountToken": false, "hostPID": true}});
        let node = parse(&no_token, "x", "a", &objects).unwrap();
        assert!(node.host_pid && node.volumes.is_empty() && node.mounts.is_empty());
    }
}
