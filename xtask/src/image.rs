//! `cargo xtask image`: the DaemonSet's container image, an OCI image archive built from
//! scratch: one layer holding the statically linked agent (musl), nothing else.
//!
//! The OCI layout is written here rather than by a tool: no base image can be pulled, and
//! an image of one file needs only a tar layer and three JSON documents addressed by their
//! sha256 (image-spec v1.1). Every tar header has owner 0:0 and mtime 0 and serde_json writes
//! keys in a fixed order, so the same binary gives the same image digest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::setup::MUSL_TARGET;
use crate::util::{cargo, run, stdout_of, target_dir};

/// The reference `deploy/daemonset.yaml` uses (`image: moat:latest`); the kubelet expands it
/// to the fully qualified name containerd stores.
pub const IMAGE_REF: &str = "moat:latest";
const CONTAINERD_NAME: &str = "docker.io/library/moat:latest";
/// Where the binary sits in the image; PATH points there so `kubectl exec … -- moat status`
/// finds it.
const BINARY_PATH: &str = "usr/bin/moat";

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Where to write the OCI archive (default: <target>/image/moat.oci.tar).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// A content-addressed blob of the image.
struct Blob {
    media_type: &'static str,
    bytes: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        let digest = sha256(&bytes);
        Blob { media_type, bytes, digest }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

pub fn run_image(args: &ImageArgs) -> Result<()> {
    crate::setup::run_setup(&crate::setup::SetupArgs::default())?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => default_path()?,
    };
    build_image(&out)
}

/// `<target>/image/moat.oci.tar`, where `cargo xtask test` puts it for the image test.
pub fn default_path() -> Result<PathBuf> {
    Ok(target_dir()?.join("image").join("moat.oci.tar"))
}

/// Builds the agent (release, musl) and writes the image archive to `out`.
pub fn build_image(out: &Path) -> Result<()> {
    // A static binary: no loader, no libc, no certificates needed in the image (the API
    // server's CA comes from the service account volume the kubelet mounts).
    run(cargo().args(["build", "--release", "-p", "moat-agent", "--bin", "moat", "--target", MUSL_TARGET]))?;
    let binary = target_dir()?.join(MUSL_TARGET).join("release").join("moat");
    let version = stdout_of(std::process::Command::new(&binary).arg("--version"))
        .with_context(|| format!("{} does not run", binary.display()))?;
    let version = version.trim().strip_prefix("moat ").unwrap_or(version.trim()).to_string();
    let program = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;

    let layer_tar = layer(&program)?;
    let diff_id = sha256(&layer_tar);
    let layer = Blob::new(LAYER_TYPE, gzip(&layer_tar)?);
    let config = Blob::new(CONFIG_TYPE, to_json(&image_config(&diff_id, &version))?);
    let manifest = Blob::new(
        MANIFEST_TYPE,
        to_json(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        }))?,
    );
    let mut entry = manifest.descriptor();
    entry["annotations"] = json!({
        // The tag, as the image-layout spec has it; containerd's import takes its own key.
        "org.opencontainers.image.ref.name": IMAGE_REF.rsplit_once(':').map_or("latest", |(_, tag)| tag),
        "io.containerd.image.name": CONTAINERD_NAME,
    });
    entry["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    let index = to_json(&json!({ "schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [entry] }))?;

    let archive = archive(&index, &[&layer, &config, &manifest])?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, &archive).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "image {IMAGE_REF} ({}): {} (archive {:.1} MiB; layer {:.1} MiB compressed, binary {:.1} MiB)",
        manifest.digest,
        out.display(),
        mib(archive.len()),
        mib(layer.bytes.len()),
        mib(program.len()),
    );
    Ok(())
}

/// The runtime configuration: `moat agent` by default; the DaemonSet's `args` replace `Cmd`.
fn image_config(diff_id: &str, version: &str) -> serde_json::Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "0:0",
            "Env": ["PATH=/usr/bin"],
            "Entrypoint": [format!("/{BINARY_PATH}")],
            "Cmd": ["agent"],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "moat",
                "org.opencontainers.image.version": version,
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "cargo xtask image" }],
    })
}

/// The one layer: the directories down to the binary, then the binary.
fn layer(program: &[u8]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = String::new();
    for component in BINARY_PATH.split('/').take(BINARY_PATH.split('/').count() - 1) {
        dir.push_str(component);
        dir.push('/');
        append(&mut tar, &dir, tar::EntryType::Directory, 0o755, &[])?;
    }
    append(&mut tar, BINARY_PATH, tar::EntryType::Regular, 0o755, program)?;
    Ok(tar.into_inner()?)
}

/// The oci-archive: a tar of the image layout (oci-layout, index.json, blobs/sha256/…).
fn archive(index: &[u8], blobs: &[&Blob]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "oci-layout", tar::EntryType::Regular, 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append(&mut tar, "index.json", tar::EntryType::Regular, 0o644, index)?;
    append(&mut tar, "blobs/", tar::EntryType::Directory, 0o755, &[])?;
    append(&mut tar, "blobs/sha256/", tar::EntryType::Directory, 0o755, &[])?;
    for blob in blobs {
        let Some(hex) = blob.digest.strip_prefix("sha256:") else {
            bail!("blob digest {} is not sha256", blob.digest);
        };
        append(&mut tar, &format!("blobs/sha256/{hex}"), tar::EntryType::Regular, 0o644, &blob.bytes)?;
    }
    Ok(tar.into_inner()?)
}

/// One tar entry with reproducible metadata (owner 0:0, mtime 0).
fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    tar.append_data(&mut header, path, data).with_context(|| format!("adding {path} to the tar"))
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

fn to_json(value: &serde_json::Value) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
