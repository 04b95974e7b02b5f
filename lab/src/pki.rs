//! The stand-in kubelet's credentials: PEM-shaped certificates and keys, service-account
//! tokens shaped like JWTs, kubeconfigs, and client-certificate rotation laid out as
//! kubelet's certificate manager does it (dated files plus a `-current` symlink).
//!
//! None of it is real cryptography: the guard cares about which files are read and by whom,
//! not about their contents.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::LabError;

pub const CLIENT_PREFIX: &str = "kubelet-client-";
pub const CLIENT_CURRENT: &str = "kubelet-client-current.pem";
/// The symlink made next to the current one and renamed over it (as the certificate store does).
const CLIENT_UPDATED: &str = "kubelet-client-updated.pem";

/// `bytes` of pseudo-random content derived from `seed`.
fn stream(seed: &str, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter = 0u32;
    while out.len() < bytes {
        out.extend_from_slice(&Sha256::digest(format!("{seed}\0{counter}").as_bytes()));
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// A PEM block of `label` whose body is derived from `seed`.
pub fn pem(label: &str, seed: &str) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(stream(seed, 600));
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// The lab's cluster CA (the same for every file that carries it).
pub fn cluster_ca(lab: &str) -> String {
    pem("CERTIFICATE", &format!("{lab}/ca"))
}

/// A JWT-shaped service-account token (header.claims.signature, base64url).
pub fn token(lab: &str, namespace: &str, pod: &str, uid: &str, account: &str, audience: &str) -> String {
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = unix_seconds();
    let audience = if audience.is_empty() { "https://kubernetes.default.svc.cluster.local" } else { audience };
    let header = serde_json::json!({"alg": "RS256", "kid": format!("moat-lab-{lab}")});
    let claims = serde_json::json!({
        "aud": [audience],
        "exp": now + 3607,
        "iat": now,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": pod, "uid": uid},
            "serviceaccount": {"name": account},
        },
    });
    let signature = url.encode(stream(&format!("{lab}/{uid}/{now}"), 256));
    format!("{}.{}.{signature}", url.encode(header.to_string()), url.encode(claims.to_string()))
}

/// A kubeconfig for the kubelet: client certificate and key from `cert` (one file, as the
/// rotated client certificate is), or a bootstrap token.
pub fn kubeconfig(lab: &str, server: &str, credential: Credential<'_>) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(cluster_ca(lab));
    let user = match credential {
        Credential::Certificate(path) => {
            format!("    client-certificate: {}\n    client-key: {}\n", path.display(), path.display())
        }
        Credential::Token(token) => format!("    token: {token}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: default-cluster\n\
         contexts:\n- context:\n    cluster: default-cluster\n    namespace: default\n    user: default-auth\n  name: default-context\n\
         current-context: default-context\npreferences: {{}}\nusers:\n- name: default-auth\n  user:\n{user}"
    )
}

pub enum Credential<'a> {
    Certificate(&'a Path),
    Token(&'a str),
}

pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `YYYY-MM-DD-HH-MM-SS` (UTC), as in `kubelet-client-2024-05-01-12-00-00.pem`.
pub fn timestamp(unix: u64) -> String {
    let seconds = i64::try_from(unix).unwrap_or(i64::MAX);
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%d-%H-%M-%S")
        .to_string()
}

/// Certificate and key in one file, as kubelet writes its client credentials.
fn client_pem(lab: &str, stamp: &str) -> String {
    let seed = format!("{lab}/client/{stamp}");
    pem("CERTIFICATE", &seed) + &pem("EC PRIVATE KEY", &(seed + "/key"))
}

/// Writes a new dated client certificate into `pki` and points `kubelet-client-current.pem`
/// at it by renaming a fresh symlink over it (atomic for readers). Returns the new file.
pub fn rotate_client(lab: &str, pki: &Path) -> Result<PathBuf, LabError> {
    let mut unix = unix_seconds();
    // Names have one-second resolution: a second rotation within the second takes the next.
    let file = loop {
        let candidate = pki.join(format!("{CLIENT_PREFIX}{}.pem", timestamp(unix)));
        if !candidate.exists() {
            break candidate;
        }
        unix += 1;
    };
    let stamp = timestamp(unix);
    write_private(&file, client_pem(lab, &stamp).as_bytes())?;
    let updated = pki.join(CLIENT_UPDATED);
    match std::fs::remove_file(&updated) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(LabError::io("removing", &updated, error));
        }
        _ => {}
    }
    std::os::unix::fs::symlink(&file, &updated).map_err(|e| LabError::io("creating symlink", &updated, e))?;
    let current = pki.join(CLIENT_CURRENT);
    std::fs::rename(&updated, &current).map_err(|e| LabError::io("renaming into place", &current, e))?;
    Ok(file)
}

/// Writes a file readable by its owner only (keys are).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io("creating", path, e))?;
    file.write_all(bytes).map_err(|e| LabError::io("writing", path, e))
}

/// The serving certificate and key (`kubelet.crt`, `kubelet.key`).
pub fn serving(lab: &str) -> (String, String) {
    (pem("CERTIFICATE", &format!("{lab}/serving")), pem("PRIVATE KEY", &format!("{lab}/serving/key")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_time() {
        assert_eq!(timestamp(0), "1970-01-01-00-00-00");
        assert_eq!(timestamp(951_782_400), "2000-02-29-00-00-00");
        assert_eq!(timestamp(1_714_564_800 + 3_661), "2024-05-01-13-01-01");
    }

    #[test]
    fn pem_and_token_shapes() {
        let cert = pem("CERTIFICATE", "s");
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\n") && cert.ends_with("-----END CERTIFICATE-----\n"));
        assert!(cert.lines().all(|line| line.len() <= 64));
        assert_eq!(cert, pem("CERTIFICATE", "s"));
        let token = token("l", "x", "a", "u", "default", "");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:x:default");
        assert_eq!(claims["kubernetes.io"]["pod"]["uid"], "u");
    }

    #[test]
    fn rotation_writes_dated_files_and_swaps_the_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let first = rotate_client("l", dir.path()).unwrap();
        let second = rotate_client("l", dir.path()).unwrap();
        assert_ne!(first, second);
        let name = second.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(CLIENT_PREFIX) && name.ends_with(".pem") && name.len() == "kubelet-client-2024-05-01-13-01-01.pem".len(), "{name}");
        assert_eq!(std::fs::read_link(dir.path().join(CLIENT_CURRENT)).unwrap(), second);
        assert!(first.exists(), "old certificates are kept");
        assert!(!dir.path().join(CLIENT_UPDATED).exists());
        let text = std::fs::read_to_string(dir.path().join(CLIENT_CURRENT)).unwrap();
        assert!(text.contains("BEGIN CERTIFICATE") && text.contains("BEGIN EC PRIVATE KEY"));
        let config = kubeconfig("l", "https://127.0.0.1:6443", Credential::Certificate(&dir.path().join(CLIENT_CURRENT)));
        let parsed: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
        assert_eq!(parsed["users"][0]["user"]["client-key"].as_str(), dir.path().join(CLIENT_CURRENT).to_str());
        assert_eq!(parsed["clusters"][0]["cluster"]["server"], "https://127.0.0.1:6443");
    }
}
