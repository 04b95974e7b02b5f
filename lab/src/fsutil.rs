//! Small file helpers every part of the lab uses: atomic writes, a log's last lines, the
//! running binary's path.

use std::path::{Path, PathBuf};

use super::LabError;

/// Writes `path` through a hidden temporary file in the same directory and a rename, so
/// readers (the agent polling the manifests directory) never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!(".{file_name}.tmp"));
    std::fs::write(&temp, bytes).map_err(|e| LabError::io("writing", &temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| LabError::io("renaming into place", path, e))
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The running `moat-lab` binary.
pub fn current_exe() -> Result<PathBuf, LabError> {
    std::env::current_exe().map_err(|e| LabError::io("finding", Path::new("/proc/self/exe"), e))
}
