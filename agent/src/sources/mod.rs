//! Where the cluster comes from: manifest files on disk (re-read when they change), or the
//! Kubernetes API server (list, then watch). Either way the runtime asks one question: "what
//! changed since I last asked" — the whole newest `Cluster` from files, the watch events'
//! changes from the API server.

pub mod convert;
pub mod kube;
pub mod limits;
pub mod manifests;
pub mod policy_checks;
pub mod sync;
pub mod unenforced;
pub mod watch;

use std::sync::Arc;

use self::kube::{KubeError, KubeSource};
use self::manifests::{Loaded, ManifestError};
pub use self::sync::SyncState;
use self::unenforced::Unenforced;
use self::watch::ManifestWatcher;
use crate::model::Change;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// What changed since the last poll.
pub enum Update {
    /// Everything, re-read (manifest files). Boxed: a model is far bigger than a change list.
    Whole(Box<Loaded>),
    /// Watch events, in order.
    Changes(Vec<Change>),
}

pub enum Source {
    Manifests {
        watcher: ManifestWatcher,
        sync: Arc<SyncState>,
        /// What the last good read found and does not enforce.
        unenforced: Unenforced,
    },
    Kube(KubeSource),
}

impl Source {
    pub fn manifests(watcher: ManifestWatcher) -> Self {
        Self::Manifests {
            watcher,
            sync: Arc::new(SyncState::new()),
            unenforced: Unenforced::default(),
        }
    }

    /// The first complete state: the manifests as read, or everything the API server
    /// listed (after every watch reported its initial list complete).
    pub async fn initial(&mut self) -> Result<Loaded, SourceError> {
        match self {
            Self::Manifests { watcher, sync, unenforced } => {
                // The first poll always loads; the loop only guards against a watcher that
                // says nothing.
                let loaded = loop {
                    if let Some(result) = watcher.poll() {
                        break result?;
                    }
                };
                sync.mark_synced();
                unenforced.clone_from(&loaded.unenforced);
                Ok(loaded)
            }
            Self::Kube(source) => Ok(source.initial().await),
        }
    }

    /// What changed since the last call, if anything. An Err is a bad edit of the
    /// manifests: the caller keeps the last good state. The API server source logs objects
    /// it refuses and keeps their last good version itself, so it never returns Err.
    pub fn poll(&mut self) -> Option<Result<Update, SourceError>> {
        match self {
            Self::Manifests { watcher, unenforced, .. } => {
                let result = watcher.poll()?;
                if let Ok(loaded) = &result {
                    unenforced.clone_from(&loaded.unenforced);
                }
                Some(result.map(|loaded| Update::Whole(Box::new(loaded))).map_err(SourceError::from))
            }
            Self::Kube(source) => source.poll().map(|changes| Ok(Update::Changes(changes))),
        }
    }

    /// Resolves when [`Source::poll`] may have something new. Manifests are polled on the
    /// runtime's tick, so for them this never resolves.
    pub async fn changed(&self) {
        match self {
            Self::Manifests { .. } => std::future::pending().await,
            Self::Kube(source) => source.changed().await,
        }
    }

    /// Policy objects the source saw and moat does not enforce (manifests: as of the last good
    /// read; API server: as of the last discovery round).
    pub fn unenforced(&self) -> Unenforced {
        match self {
            Self::Manifests { unenforced, .. } => unenforced.clone(),
            Self::Kube(source) => source.unenforced(),
        }
    }

    /// The newest resourceVersion applied (API server only), for apply logs.
    pub fn resource_version(&self) -> Option<u64> {
        match self {
            Self::Manifests { .. } => None,
            Self::Kube(source) => source.resource_version(),
        }
    }

    pub fn sync_state(&self) -> Arc<SyncState> {
        match self {
            Self::Manifests { sync, .. } => Arc::clone(sync),
            Self::Kube(source) => source.sync_state(),
        }
    }
}
