//! What the detection decoder (`events::detection`) knows besides the model: where the
//! guard's protected files are, pods' volume tags, the host's namespaces and /proc. The guard
//! publishes it after each node discovery; the decoder reads the latest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use moat_common::guard::{FileKey, NS_COUNT};

/// What the decoder knows besides the model: where protected files are, the host's PID
/// namespace and /proc. Replaced by the runtime after each node discovery.
#[derive(Clone, Debug, Default)]
pub struct GuardView {
    pub names: BTreeMap<FileKey, PathBuf>,
    /// Pod tag → pod, for naming the owner of a volume.
    pub pods_by_tag: imbl::OrdMap<u64, crate::model::PodKey>,
    pub host_pid_ns: u64,
    /// The host's namespace inodes, `NS_*` order (0 where unknown).
    pub host_ns: [u32; NS_COUNT],
    pub host_proc_dev: u64,
    /// What `moat status` shows of the node's files.
    pub node: Option<NodeFiles>,
}

/// Where the guard reads the node, what it protects there, and what was configured but is
/// not there: every path missing at once usually means `guard.hostRoot` is wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeFiles {
    pub host_root: PathBuf,
    pub protected_files: usize,
    /// tmpfs pod volumes matched by superblock.
    pub pod_volumes: usize,
    /// Node paths configured (or named by the node's files) and not found.
    pub missing: Vec<PathBuf>,
    pub warning: Option<String>,
}

static VIEW: RwLock<Option<Arc<GuardView>>> = RwLock::new(None);

pub fn publish(view: GuardView) {
    if let Ok(mut slot) = VIEW.write() {
        *slot = Some(Arc::new(view));
    }
}

pub fn view() -> Arc<GuardView> {
    VIEW.read().ok().and_then(|v| v.clone()).unwrap_or_default()
}
