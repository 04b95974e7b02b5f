// TEMPORARY stand-in.
use std::path::PathBuf;
use super::manifests::*;
pub struct ManifestWatcher { paths: Vec<PathBuf>, last: Option<String> }
impl ManifestWatcher {
    pub fn new(paths: Vec<PathBuf>) -> Self { Self { paths, last: None } }
    pub fn poll(&mut self) -> Option<Result<Loaded, ManifestError>> {
        let mut sig = String::new();
        for p in &self.paths { if let Ok(rd) = std::fs::read_dir(p) { for e in rd.flatten() { sig += &std::fs::read_to_string(e.path()).unwrap_or_default(); } } else { sig += &std::fs::read_to_string(p).unwrap_or_default(); } }
        if self.last.as_ref() == Some(&sig) { return None; }
        self.last = Some(sig);
        Some(load(&self.paths))
    }
}
