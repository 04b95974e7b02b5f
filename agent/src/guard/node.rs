//! What the guard protects on this node, found by identity: the kubelet's credentials and
//! executable, the runtime's binaries and sockets (file → (dev, inode)), and every pod's
//! secret/configMap/token volume (tmpfs superblock → pod; files of disk-backed volumes →
//! pod). Re-run when a directory it read changed (the caller's `before_listing` watches each
//! before it is read: `node::dir_watch`) or the mount table did, so a rotated certificate or
//! a new pod's volume is covered within one poll interval, and an idle node is not re-read.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use moat_common::guard::{
    kernel_dev, FileKey, FileRule, FILE_KUBELET_CREDENTIAL, FILE_POD_VOLUME, FILE_RUNTIME_BINARY,
    FILE_RUNTIME_SOCKET,
};

use crate::config::GuardConfig;
use crate::node::host_root::HostRoot;
use crate::model::pod_tag::pod_tag;

/// Volume plugins whose content is a credential or configuration of one pod.
const VOLUME_PLUGINS: [&str; 4] =
    ["kubernetes.io~secret", "kubernetes.io~configmap", "kubernetes.io~projected", "kubernetes.io~downward-api"];
/// Files of disk-backed volumes registered one by one; beyond this they are skipped (and
/// counted), so a huge configMap cannot exhaust `GUARD_FILES`.
const MAX_VOLUME_FILES: usize = 4096;

/// Kernel identity of a file (following symlinks).
pub fn file_key(path: &Path) -> std::io::Result<FileKey> {
    let meta = std::fs::metadata(path)?;
    Ok(FileKey { dev: kernel_dev(libc::major(meta.dev()), libc::minor(meta.dev())), ino: meta.ino() })
}

/// Everything found, and what was configured but is not there. Paths are the node's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    pub files: BTreeMap<FileKey, FileRule>,
    /// Where each protected file was found, for naming it in events.
    pub names: BTreeMap<FileKey, PathBuf>,
    /// Runtime sockets, where the agent reaches them (below the host root): their names in
    /// pods' mount namespaces are found from there.
    pub sockets: BTreeMap<FileKey, PathBuf>,
    /// tmpfs volume superblock → pod tag.
    pub volumes: BTreeMap<u64, u64>,
    pub kubelet_exe: Option<FileKey>,
    pub missing: BTreeSet<PathBuf>,
    pub skipped_volume_files: usize,
}

/// One scan: where the node is, what was found, and who is told of each directory read.
struct Scan<'a> {
    host: HostRoot,
    found: Discovered,
    before_listing: &'a mut dyn FnMut(&Path),
}

impl Scan<'_> {
    /// The node's file `path`, protected as `class` if it exists.
    fn add(&mut self, path: &Path, class: u32, owner: u64) {
        match self.host.resolve(path) {
            Ok(seen) => {
                self.add_seen(&seen, path, class, owner);
            }
            Err(_) => {
                self.found.missing.insert(path.to_path_buf());
            }
        }
    }

    /// A file the agent reaches at `seen`, named `name` on the node; its key if it exists.
    fn add_seen(&mut self, seen: &Path, name: &Path, class: u32, owner: u64) -> Option<FileKey> {
        match file_key(seen) {
            Ok(key) => {
                self.found.files.insert(key, FileRule { class, _pad: 0, owner });
                self.found.names.entry(key).or_insert_with(|| name.to_path_buf());
                Some(key)
            }
            Err(_) => {
                self.found.missing.insert(name.to_path_buf());
                None
            }
        }
    }

    /// The directory holding the node's `path`: a file replaced, created or removed there is
    /// a change.
    fn watch_parent(&mut self, path: &Path) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.watch_dir(parent);
        }
    }

    /// The node's `dir`, or where it does not exist (yet), the nearest directory above it:
    /// its making is then the change to see.
    fn watch_dir(&mut self, dir: &Path) {
        if let Some(existing) = self.host.existing_dir(dir) {
            (self.before_listing)(&existing);
        }
    }

    /// A directory the agent reaches at `seen`, about to be read.
    fn watch_seen(&mut self, seen: &Path) {
        (self.before_listing)(seen);
    }
}

/// Everything to protect, from the node's filesystem below `config.host_root` and the
/// agent's mount table. `before_listing` is called with every directory (as the agent
/// reaches it) whose entries, or their files' content, the result depends on, before it is
/// read.
pub fn discover(config: &GuardConfig, mountinfo: &str, before_listing: &mut dyn FnMut(&Path)) -> Discovered {
    let mut scan = Scan { host: HostRoot::new(&config.host_root), found: Discovered::default(), before_listing };
    kubelet_credentials(config, &mut scan);
    for path in &config.runtime.binaries {
        scan.watch_parent(path);
        scan.add(path, FILE_RUNTIME_BINARY, 0);
    }
    for path in &config.runtime.sockets {
        scan.watch_parent(path);
        let seen = scan.host.resolve(path).ok().filter(|seen| std::fs::metadata(seen).is_ok_and(|m| m.file_type().is_socket()));
        let Some(seen) = seen else {
            scan.found.missing.insert(path.clone());
            continue;
        };
        if let Some(key) = scan.add_seen(&seen, path, FILE_RUNTIME_SOCKET, 0) {
            scan.found.sockets.entry(key).or_insert(seen);
        }
    }
    scan.watch_parent(&config.kubelet.executable);
    scan.found.kubelet_exe = scan.host.resolve(&config.kubelet.executable).and_then(|seen| file_key(&seen)).ok();
    if scan.found.kubelet_exe.is_none() {
        scan.found.missing.insert(config.kubelet.executable.clone());
    }
    volumes(config, mountinfo, &mut scan);
    scan.found
}

/// Every file in the PKI directory (symlinks followed, so both the rotation link's target
/// and older dated files are covered), the kubeconfigs, and the certificate and key files
/// the kubeconfigs point at.
fn kubelet_credentials(config: &GuardConfig, scan: &mut Scan<'_>) {
    let pki = &config.kubelet.pki_dir;
    scan.watch_dir(pki);
    match scan.host.resolve(pki).and_then(std::fs::read_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                // Named by the file itself (the dated one behind `-current`), which rotation
                // changes and which an event should show.
                let Ok(seen) = scan.host.resolve(&pki.join(entry.file_name())) else { continue };
                let name = scan.host.node_path(&seen);
                if name.parent() != Some(pki.as_path()) {
                    scan.watch_parent(&name);
                }
                if seen.is_file() {
                    scan.add_seen(&seen, &name, FILE_KUBELET_CREDENTIAL, 0);
                }
            }
        }
        Err(_) => {
            scan.found.missing.insert(pki.clone());
        }
    }
    for kubeconfig in &config.kubelet.kubeconfigs {
        scan.watch_parent(kubeconfig);
        scan.add(kubeconfig, FILE_KUBELET_CREDENTIAL, 0);
        for referenced in kubeconfig_files(&scan.host, kubeconfig) {
            scan.watch_parent(&referenced);
            scan.add(&referenced, FILE_KUBELET_CREDENTIAL, 0);
        }
    }
}

/// `client-certificate` / `client-key` paths in a kubeconfig (node paths; relative ones
/// taken from the kubeconfig's directory).
fn kubeconfig_files(host: &HostRoot, kubeconfig: &Path) -> Vec<PathBuf> {
    let Ok(text) = host.resolve(kubeconfig).and_then(std::fs::read_to_string) else { return Vec::new() };
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) else { return Vec::new() };
    let base = kubeconfig.parent().unwrap_or(Path::new("/"));
    let users = doc.get("users").and_then(|u| u.as_sequence()).cloned().unwrap_or_default();
    users
        .iter()
        .filter_map(|u| u.get("user"))
        .flat_map(|user| ["client-certificate", "client-key"].map(|k| user.get(k).and_then(|v| v.as_str()).map(str::to_string)))
        .flatten()
        .map(|p| base.join(p))
        .collect()
}

/// Pod volumes below `<kubelet root>/pods/<uid>/volumes/<plugin>/<name>`: a mount of its own
/// (tmpfs for secrets and tokens) is matched by superblock; a plain directory (configMaps
/// on the node's disk) file by file. Mount points are the agent's (`mountinfo` is its own),
/// so the pods directory is taken as the agent reaches it.
fn volumes(config: &GuardConfig, mountinfo: &str, scan: &mut Scan<'_>) {
    let pods_on_node = config.kubelet.root.join("pods");
    // A volume mounted later is a change of the mount table, which the caller watches; a
    // pod or volume directory made later is a change of a directory watched here.
    scan.watch_dir(&pods_on_node);
    let Ok(pods) = scan.host.resolve(&pods_on_node) else { return };
    let mut mounted = BTreeSet::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) else { continue };
        let point = PathBuf::from(unescape(point));
        let Some(uid) = volume_owner(&pods, &point) else { continue };
        let Some((major, minor)) = dev.split_once(':') else { continue };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else { continue };
        scan.found.volumes.insert(kernel_dev(major, minor), pod_tag(Some(&uid), "", ""));
        mounted.insert(point);
    }
    let Ok(pod_dirs) = std::fs::read_dir(&pods) else { return };
    let mut budget = MAX_VOLUME_FILES;
    for pod in pod_dirs.flatten() {
        let uid = pod.file_name().to_string_lossy().into_owned();
        let tag = pod_tag(Some(&uid), "", "");
        for plugin in VOLUME_PLUGINS {
            let plugin_dir = pod.path().join("volumes").join(plugin);
            // The pod's directory exists: its `volumes` or the plugin's may be made later.
            match plugin_dir.ancestors().find(|d| d.is_dir()) {
                Some(existing) => scan.watch_seen(existing),
                None => continue,
            }
            let Ok(volumes) = std::fs::read_dir(&plugin_dir) else { continue };
            for volume in volumes.flatten() {
                if mounted.contains(&volume.path()) {
                    continue;
                }
                register_tree(&volume.path(), tag, scan, &mut budget, 0);
            }
        }
    }
}

/// Files below `dir` (as the agent reaches it; entries are not followed through symlinks).
fn register_tree(dir: &Path, tag: u64, scan: &mut Scan<'_>, budget: &mut usize, depth: usize) {
    scan.watch_seen(dir);
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() && depth < 4 {
            register_tree(&entry.path(), tag, scan, budget, depth + 1);
        } else if kind.is_file() {
            if *budget == 0 {
                scan.found.skipped_volume_files += 1;
                continue;
            }
            *budget -= 1;
            let name = scan.host.node_path(&entry.path());
            scan.add_seen(&entry.path(), &name, FILE_POD_VOLUME, tag);
        }
    }
}

/// The pod uid when `point` is `<pods>/<uid>/volumes/<plugin>/<name>` for a credential plugin.
fn volume_owner(pods: &Path, point: &Path) -> Option<String> {
    let rest = point.strip_prefix(pods).ok()?;
    let parts: Vec<_> = rest.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [uid, volumes, plugin, _name] if volumes == "volumes" && VOLUME_PLUGINS.contains(&plugin.as_str()) => Some(uid.clone()),
        _ => None,
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_owner_is_the_uid_of_credential_plugins_only() {
        let pods = Path::new("/var/lib/kubelet/pods");
        let secret = Path::new("/var/lib/kubelet/pods/1234/volumes/kubernetes.io~secret/db");
        assert_eq!(volume_owner(pods, secret).as_deref(), Some("1234"));
        let empty_dir = Path::new("/var/lib/kubelet/pods/1234/volumes/kubernetes.io~empty-dir/x");
        assert_eq!(volume_owner(pods, empty_dir), None);
        assert_eq!(volume_owner(pods, Path::new("/var/lib/kubelet/pods/1234")), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/tmp\011x"), "/tmp\tx");
    }

    #[test]
    fn discovers_files_volumes_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kubelet");
        let pki = root.join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::write(pki.join("kubelet-client-2026.pem"), "cert").unwrap();
        std::os::unix::fs::symlink(pki.join("kubelet-client-2026.pem"), pki.join("kubelet-client-current.pem")).unwrap();
        let kubeconfig = dir.path().join("kubelet.conf");
        std::fs::write(dir.path().join("client.key"), "key").unwrap();
        std::fs::write(&kubeconfig, "users:\n- name: k\n  user:\n    client-key: client.key\n").unwrap();
        let cm = root.join("pods/uid-1/volumes/kubernetes.io~configmap/settings");
        std::fs::create_dir_all(&cm).unwrap();
        std::fs::write(cm.join("app.yaml"), "x: 1").unwrap();
        let mut config = GuardConfig::default();
        config.kubelet.root = root.clone();
        config.kubelet.pki_dir = pki.clone();
        config.kubelet.kubeconfigs = vec![kubeconfig.clone(), dir.path().join("absent.conf")];
        config.runtime.binaries = vec![dir.path().join("no-runc")];
        config.runtime.sockets = vec![kubeconfig.clone()];
        let root_canonical = std::fs::canonicalize(&root).unwrap();
        let mountinfo = format!("40 1 0:99 / {}/pods/uid-2/volumes/kubernetes.io~secret/tok rw - tmpfs tmpfs rw\n", root_canonical.display());
        let mut listed = Vec::new();
        let found = discover(&config, &mountinfo, &mut |dir: &Path| listed.push(dir.to_path_buf()));
        let credentials = found.files.values().filter(|r| r.class == FILE_KUBELET_CREDENTIAL).count();
        // The dated cert (once, though reached through the link too), the kubeconfig, the key.
        assert_eq!(credentials, 3);
        let volume_files: Vec<_> = found.files.values().filter(|r| r.class == FILE_POD_VOLUME).collect();
        assert_eq!(volume_files.len(), 1);
        assert_eq!(volume_files[0].owner, pod_tag(Some("uid-1"), "", ""));
        assert_eq!(found.volumes.get(&kernel_dev(0, 99)), Some(&pod_tag(Some("uid-2"), "", "")));
        assert!(found.missing.contains(&dir.path().join("absent.conf")));
        assert!(found.missing.contains(&dir.path().join("no-runc")));
        // Not a socket: refused as a runtime socket.
        assert!(found.missing.contains(&kubeconfig));
        for dir in [&pki, &root_canonical.join("pods"), &root_canonical.join("pods/uid-1/volumes/kubernetes.io~configmap/settings"), &dir.path().to_path_buf()] {
            assert!(listed.contains(dir), "{} watched; listed: {listed:?}", dir.display());
        }
    }

    /// The DaemonSet's layout: the node's `/` below a directory, configured paths and the
    /// node's own symlinks and kubeconfig entries naming node paths, and a mount table whose
    /// points are the agent's. Every file is found there, never at the node path itself, and
    /// named by its node path.
    #[test]
    fn discovers_the_node_below_its_host_root() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        let pki = host.join("var/lib/kubelet/pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::create_dir_all(host.join("etc/kubernetes")).unwrap();
        std::fs::create_dir_all(host.join("run/containerd")).unwrap();
        std::fs::create_dir_all(host.join("usr/bin")).unwrap();
        std::fs::write(pki.join("kubelet-client-2026.pem"), "cert").unwrap();
        symlink("/var/lib/kubelet/pki/kubelet-client-2026.pem", pki.join("kubelet-client-current.pem")).unwrap();
        std::fs::write(
            host.join("etc/kubernetes/kubelet.conf"),
            "users:\n- name: k\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        )
        .unwrap();
        symlink("/run", host.join("var/run")).unwrap();
        let socket = std::os::unix::net::UnixListener::bind(host.join("run/containerd/containerd.sock")).unwrap();
        std::fs::write(host.join("usr/bin/kubelet"), "elf").unwrap();
        let cm = host.join("var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~configmap/settings");
        std::fs::create_dir_all(&cm).unwrap();
        std::fs::write(cm.join("app.yaml"), "x: 1").unwrap();
        let config = GuardConfig {
            host_root: host.clone(),
            runtime: crate::config::guard::RuntimeConfig {
                binaries: vec!["/usr/bin/runc".into()],
                sockets: vec!["/var/run/containerd/containerd.sock".into()],
            },
            ..GuardConfig::default()
        };
        let secret = host.join("var/lib/kubelet/pods/uid-2/volumes/kubernetes.io~secret/tok");
        let mountinfo = format!("40 1 0:99 / {} rw - tmpfs tmpfs rw\n", secret.display());
        let mut listed = Vec::new();
        let found = discover(&config, &mountinfo, &mut |dir: &Path| listed.push(dir.to_path_buf()));
        drop(socket);

        let name_of = |seen: &Path| found.names.get(&file_key(seen).unwrap()).cloned();
        let dated = Path::new("/var/lib/kubelet/pki/kubelet-client-2026.pem");
        assert_eq!(name_of(&pki.join("kubelet-client-2026.pem")).as_deref(), Some(dated));
        assert_eq!(name_of(&host.join("etc/kubernetes/kubelet.conf")).as_deref(), Some(Path::new("/etc/kubernetes/kubelet.conf")));
        assert_eq!(found.files.values().filter(|r| r.class == FILE_KUBELET_CREDENTIAL).count(), 2);
        let socket_key = file_key(&host.join("run/containerd/containerd.sock")).unwrap();
        assert_eq!(found.files.get(&socket_key).map(|r| r.class), Some(FILE_RUNTIME_SOCKET));
        assert_eq!(found.names.get(&socket_key).map(PathBuf::as_path), Some(Path::new("/var/run/containerd/containerd.sock")));
        assert_eq!(found.sockets.get(&socket_key), Some(&host.join("run/containerd/containerd.sock")));
        assert_eq!(found.kubelet_exe, file_key(&host.join("usr/bin/kubelet")).ok());
        let volume = file_key(&cm.join("app.yaml")).unwrap();
        assert_eq!(found.names.get(&volume).map(PathBuf::as_path), Some(Path::new("/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~configmap/settings/app.yaml")));
        assert_eq!(found.volumes.get(&kernel_dev(0, 99)), Some(&pod_tag(Some("uid-2"), "", "")));
        let missing: Vec<_> = found.missing.iter().map(PathBuf::as_path).collect();
        assert_eq!(missing, [Path::new("/etc/kubernetes/bootstrap-kubelet.conf"), Path::new("/usr/bin/runc"), Path::new("/var/lib/kubelet/kubeconfig")]);
        // Watched where the agent reaches them.
        for watched in [pki.clone(), host.join("etc/kubernetes"), host.join("run/containerd"), host.join("usr/bin"), host.join("var/lib/kubelet/pods"), cm] {
            assert!(listed.contains(&watched), "{} watched; listed: {listed:?}", watched.display());
        }
        assert!(listed.iter().all(|d| d.starts_with(&host)), "{listed:?}");
    }

    /// What the scan read is watched: an idle node needs no new scan; a rotated certificate,
    /// a configMap's update, a new pod's directory each make one due.
    #[test]
    fn a_scan_is_due_again_only_after_something_it_read_changed() {
        use crate::node::dir_watch::{DirWatch, ENTRIES_AND_CONTENT};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kubelet");
        let pki = root.join("pki");
        let cm = root.join("pods/uid-1/volumes/kubernetes.io~configmap/settings");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::create_dir_all(&cm).unwrap();
        std::fs::write(pki.join("kubelet-client-1.pem"), "cert").unwrap();
        std::fs::write(cm.join("app.yaml"), "x: 1").unwrap();
        let mut config = GuardConfig::default();
        config.kubelet.root = root.clone();
        config.kubelet.pki_dir = pki.clone();
        config.kubelet.kubeconfigs = vec![];
        config.runtime.binaries = vec![];
        config.runtime.sockets = vec![];
        config.kubelet.executable = dir.path().join("bin/kubelet");
        let mut watch = DirWatch::new("test", ENTRIES_AND_CONTENT, std::time::Duration::from_secs(3600));
        let scan = |watch: &mut DirWatch| {
            watch.scanning();
            discover(&config, "", &mut |dir| watch.watch(dir))
        };
        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: [Change; 4] = [
            ("a certificate rotated", Box::new(|| std::fs::write(pki.join("kubelet-client-2.pem"), "new").unwrap())),
            ("a configMap file rewritten", Box::new(|| std::fs::write(cm.join("app.yaml"), "x: 2").unwrap())),
            ("a new pod", Box::new(|| std::fs::create_dir(root.join("pods/uid-2")).unwrap())),
            ("the kubelet installed", Box::new(|| std::fs::create_dir(dir.path().join("bin")).unwrap())),
        ];
        for (what, change) in changes {
            scan(&mut watch);
            assert!(!watch.due(), "nothing changed before: {what}");
            change();
            assert!(watch.due(), "{what}");
        }
        let found = scan(&mut watch);
        assert_eq!(found.files.values().filter(|r| r.class == FILE_KUBELET_CREDENTIAL).count(), 2);
    }
}
