//! A client for the API server: an explicit kubeconfig file, else the usual rules
//! (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::KubeError;

pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig { path: path.into(), source })?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig { path: path.into(), source })?
        }
        None => Config::infer().await.map_err(KubeError::Infer)?,
    };
    let server = config.cluster_url.to_string();
    Client::try_from(config).map_err(|source| KubeError::Client { server, source })
}

/// What [`connect`] was told, for errors.
pub fn describe(kubeconfig: Option<&Path>) -> String {
    kubeconfig.map_or_else(|| "in-cluster or KUBECONFIG configuration".into(), |p: &Path| PathBuf::from(p).display().to_string())
}

/// `host:port` of the API server [`connect`] would use, if the configuration resolves.
pub async fn server_address(kubeconfig: Option<&Path>) -> Option<String> {
    let config = match kubeconfig {
        Some(path) => Config::from_custom_kubeconfig(Kubeconfig::read_from(path).ok()?, &KubeConfigOptions::default()).await.ok()?,
        None => Config::infer().await.ok()?,
    };
    let url = &config.cluster_url;
    let port = url.port_u16().unwrap_or(if url.scheme_str() == Some("http") { 80 } else { 443 });
    Some(format!("{}:{port}", url.host()?.trim_start_matches('[').trim_end_matches(']')))
}
