//! The DaemonSet's image (`cargo xtask image`, an OCI archive): nothing in it but the agent
//! binary, digests that match their blobs, the documented runtime config, the reference
//! deploy/ uses, and a binary that runs alone in the image's root filesystem.
//!
//! The archive and its layer are read with GNU tar and gzip, not with the code that wrote
//! them, so a writer bug cannot hide behind a matching reader bug.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// What the layer may hold: (mode as `tar -tv` prints it, path).
const LAYER_FILES: &[(&str, &str)] =
    &[("drwxr-xr-x", "usr/"), ("drwxr-xr-x", "usr/bin/"), ("-rwxr-xr-x", "usr/bin/moat")];

/// `$MOAT_IMAGE` (set by `cargo xtask test`), else `<workspace>/target/image/moat.oci.tar`.
fn image_path() -> PathBuf {
    let path = std::env::var_os("MOAT_IMAGE").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
        workspace().join(target).join("image/moat.oci.tar")
    });
    assert!(path.is_file(), "{} does not exist: build it with `cargo xtask image` (or set MOAT_IMAGE)", path.display());
    path
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The archive unpacked (by GNU tar) into a temporary directory.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn open() -> Layout {
        let dir = tempfile::tempdir().expect("tempdir");
        run(Command::new("tar").arg("-xf").arg(image_path()).arg("-C").arg(dir.path()));
        Layout { dir }
    }

    fn json(&self, name: &str) -> Value {
        let path = self.dir.path().join(name);
        let text = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        serde_json::from_slice(&text).unwrap_or_else(|err| panic!("{name}: {err}"))
    }

    /// The blob a descriptor names, after checking its digest and size.
    fn blob(&self, descriptor: &Value, media_type: &str) -> Vec<u8> {
        assert_eq!(descriptor["mediaType"], media_type, "descriptor {descriptor}");
        let digest = descriptor["digest"].as_str().expect("descriptor has a digest");
        let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest} is not sha256"));
        let bytes = std::fs::read(self.dir.path().join("blobs/sha256").join(hex)).expect("blob exists");
        assert_eq!(sha256(&bytes), digest, "the blob's content does not match its name");
        assert_eq!(descriptor["size"].as_u64(), Some(bytes.len() as u64), "size of {digest}");
        bytes
    }

    /// The one manifest of index.json, with its annotations.
    fn manifest(&self) -> (Value, Value) {
        assert_eq!(self.json("oci-layout"), serde_json::json!({ "imageLayoutVersion": "1.0.0" }));
        let index = self.json("index.json");
        assert_eq!(index["schemaVersion"], 2);
        let manifests = index["manifests"].as_array().expect("index lists manifests");
        assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
        let entry = &manifests[0];
        assert_eq!(entry["platform"], serde_json::json!({ "architecture": "amd64", "os": "linux" }));
        let manifest = self.blob(entry, "application/vnd.oci.image.manifest.v1+json");
        (serde_json::from_slice(&manifest).expect("manifest is JSON"), entry["annotations"].clone())
    }

    fn config(&self) -> Value {
        let (manifest, _) = self.manifest();
        let config = self.blob(&manifest["config"], "application/vnd.oci.image.config.v1+json");
        serde_json::from_slice(&config).expect("config is JSON")
    }

    /// The layer (checked against the manifest and the config's diff_id), decompressed.
    fn layer_tar(&self) -> PathBuf {
        let (manifest, _) = self.manifest();
        let layers = manifest["layers"].as_array().expect("manifest lists layers");
        assert_eq!(layers.len(), 1, "one layer: {manifest}");
        let gzipped = self.blob(&layers[0], "application/vnd.oci.image.layer.v1.tar+gzip");
        let path = self.dir.path().join("layer.tar.gz");
        std::fs::write(&path, gzipped).expect("write layer");
        run(Command::new("gzip").arg("-d").arg(&path));
        let tar = self.dir.path().join("layer.tar");
        let diff_id = sha256(&std::fs::read(&tar).expect("read layer"));
        assert_eq!(self.config()["rootfs"], serde_json::json!({ "type": "layers", "diff_ids": [diff_id] }));
        tar
    }
}

#[test]
fn archive_holds_one_image_whose_digests_match_its_blobs() {
    let layout = Layout::open();
    let (manifest, annotations) = layout.manifest();
    assert_eq!(manifest["schemaVersion"], 2);
    layout.layer_tar();
    // Nothing in the archive but the layout files and the three blobs just checked.
    let mut files = Vec::new();
    for entry in walk(layout.dir.path()) {
        files.push(entry.strip_prefix(layout.dir.path()).expect("under dir").display().to_string());
    }
    files.retain(|file| file != "layer.tar");
    let blobs = files.iter().filter(|file| file.starts_with("blobs/sha256/")).count();
    assert_eq!(blobs, 3, "manifest, config and layer only: {files:?}");
    assert_eq!(files.len(), 5, "oci-layout, index.json and three blobs only: {files:?}");
    assert_eq!(annotations["org.opencontainers.image.ref.name"], "latest");
    assert_eq!(annotations["io.containerd.image.name"], "docker.io/library/moat:latest");
}

#[test]
fn layer_holds_only_the_agent_binary() {
    let layout = Layout::open();
    let tar = layout.layer_tar();
    let listing = run(Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(&tar));
    let entries: Vec<(String, String, String)> = listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "unexpected `tar -tv` line {line:?}");
            (fields[0].to_string(), fields[1].to_string(), fields[5..].join(" "))
        })
        .collect();
    let expected: Vec<(String, String, String)> = LAYER_FILES
        .iter()
        .map(|(mode, path)| (mode.to_string(), "0/0".to_string(), path.to_string()))
        .collect();
    assert_eq!(entries, expected, "the layer holds exactly the agent binary and its directories");
}

#[test]
fn config_runs_moat_agent_as_deploy_expects() {
    let layout = Layout::open();
    let config = layout.config();
    assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
    let runtime = &config["config"];
    assert_eq!(runtime["Entrypoint"], serde_json::json!(["/usr/bin/moat"]));
    assert_eq!(runtime["Cmd"], serde_json::json!(["agent"]));
    assert_eq!(runtime["User"], "0:0");
    assert_eq!(runtime["Env"], serde_json::json!(["PATH=/usr/bin"]));

    // deploy/ names this image, and its args replace Cmd: they must start with `agent`.
    let text = std::fs::read_to_string(workspace().join("deploy/daemonset.yaml")).expect("daemonset.yaml");
    let daemonset: Value = serde_yaml::from_str(&text).expect("daemonset.yaml is YAML");
    let containers = daemonset["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    let agent = containers.iter().find(|c| c["name"] == "agent").expect("an `agent` container");
    assert_eq!(agent["image"], "moat:latest", "deploy/ must reference the image `cargo xtask image` writes");
    assert!(agent.get("command").is_none(), "a `command` would replace the image's entrypoint");
    assert_eq!(agent["args"][0], "agent");
}

/// The guard protects the node's files by inode, so the container must see them: deploy/
/// mounts the node's `/` read-only, receiving later mounts (each new pod's secret volume), at
/// the directory its ConfigMap names as `guard.hostRoot`; and that ConfigMap is a valid
/// agent configuration.
#[test]
fn deploy_mounts_the_nodes_root_where_the_config_reads_it() {
    let read = |name: &str| -> Value {
        let text = std::fs::read_to_string(workspace().join("deploy").join(name)).expect(name);
        serde_yaml::from_str(&text).expect(name)
    };
    let configmap = read("configmap.yaml");
    let text = configmap["data"]["moat.yaml"].as_str().expect("data.moat.yaml");
    let config = moat_agent::config::Config::parse(text, Path::new("deploy/configmap.yaml")).expect("a valid agent configuration");
    let host_root = config.guard.host_root;
    assert_ne!(host_root, Path::new("/"), "in a container `/` is the container's own root");

    let daemonset = read("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    let agent = pod["containers"].as_array().expect("containers").iter().find(|c| c["name"] == "agent").expect("an `agent` container");
    let mounts = agent["volumeMounts"].as_array().expect("volumeMounts");
    let mount = mounts.iter().find(|m| m["mountPath"].as_str().map(Path::new) == Some(host_root.as_path()));
    let mount = mount.unwrap_or_else(|| panic!("no volumeMount at guard.hostRoot {}", host_root.display()));
    assert_eq!(mount["readOnly"], true);
    assert_eq!(mount["mountPropagation"], "HostToContainer");
    let volume = pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == mount["name"]).expect("the mount's volume");
    assert_eq!(volume["hostPath"]["path"], "/");
}

#[test]
fn binary_runs_alone_in_the_image_root() {
    moat_integration::require_root();
    let layout = Layout::open();
    let tar = layout.layer_tar();
    let root = tempfile::tempdir().expect("tempdir");
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(root.path()));
    let binary = std::fs::read(root.path().join("usr/bin/moat")).expect("the binary");
    assert!(!has_interpreter(&binary), "the agent must be statically linked (it has a PT_INTERP)");

    // In a root holding nothing else: a missing library or loader would fail here.
    let version = run(&mut chrooted(root.path(), &["--version"]));
    assert_eq!(version.trim(), format!("moat {}", env!("CARGO_PKG_VERSION")));
    let help = run(&mut chrooted(root.path(), &["--help"]));
    assert!(help.lines().any(|line| line.trim_start().starts_with("agent ")), "`moat --help` lists `agent`:\n{help}");
}

/// `/usr/bin/moat ARGS` with `root` as its root directory.
fn chrooted(root: &Path, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt as _;
    let root = root.to_path_buf();
    let mut cmd = Command::new("/usr/bin/moat");
    cmd.args(args).env_clear().env("PATH", "/usr/bin");
    // SAFETY: chroot and chdir are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            std::os::unix::fs::chroot(&root)?;
            std::env::set_current_dir("/")
        });
    }
    cmd
}

/// Whether an x86-64 ELF file asks for a dynamic loader (a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2, "not a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == 3 // PT_INTERP
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Runs a command, panicking with its output unless it exits 0; returns stdout.
fn run(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|err| panic!("starting {cmd:?}: {err}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data).iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}
