//! Re-reads the manifests when they change. Polling, not inotify: it works the same on every
//! filesystem (ConfigMap volumes, bind mounts, NFS) and the agent polls cgroups anyway.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::manifests::{list_files, load_for_node, Loaded, ManifestError, MAX_FILE_BYTES};

/// A file whose mtime is this close to the moment it was hashed may be written again without
/// its metadata changing (coarse timestamps), so its cached hash is not trusted.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Watches manifest paths (files or directories) and reloads them when anything changes:
/// the list of files in a directory, a file's metadata (editors replace files by rename, which
/// changes the inode) or its contents.
pub struct ManifestWatcher {
    paths: Vec<PathBuf>,
    /// This node's name: which Node object's labels are the node's.
    node_name: Option<String>,
    /// The state that the last load (good or bad) saw; None before the first poll.
    last: Option<Fingerprint>,
    hashes: HashMap<PathBuf, CachedHash>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Fingerprint {
    Files(Vec<(PathBuf, Result<FileState, String>)>),
    /// Listing failed (a path is missing); the message tells one failure from another.
    Unlisted(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileState {
    stat: Stat,
    /// None for files over the size limit: they are an error when loaded, whatever is in them.
    hash: Option<[u8; 32]>,
}

struct CachedHash {
    stat: Stat,
    hash: [u8; 32],
    hashed_at: SystemTime,
}

impl ManifestWatcher {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            node_name: None,
            last: None,
            hashes: HashMap::new(),
        }
    }

    /// The watcher for node `node_name` (see [`crate::sources::manifests::Loaded::for_node`]).
    pub fn for_node(mut self, node_name: Option<String>) -> Self {
        self.node_name = node_name;
        self
    }

    /// Loads the manifests if anything changed since the last load, successful or not: a bad
    /// edit is reported once, and the edit that fixes it yields a new `Loaded`. The first
    /// call always loads.
    pub fn poll(&mut self) -> Option<Result<Loaded, ManifestError>> {
        // Fingerprint before loading: a change during the load then shows up next poll.
        let fingerprint = self.fingerprint();
        if self.last.as_ref() == Some(&fingerprint) {
            return None;
        }
        self.last = Some(fingerprint);
        Some(load_for_node(&self.paths, self.node_name.as_deref()))
    }

    fn fingerprint(&mut self) -> Fingerprint {
        let files = match list_files(&self.paths) {
            Ok(files) => files,
            Err(error) => return Fingerprint::Unlisted(error.to_string()),
        };
        self.hashes.retain(|path, _| files.contains(path));
        let states = files
            .into_iter()
            .map(|path| {
                let state = self.file_state(&path).map_err(|error| error.to_string());
                (path, state)
            })
            .collect();
        Fingerprint::Files(states)
    }

    fn file_state(&mut self, path: &PathBuf) -> std::io::Result<FileState> {
        let metadata = fs::metadata(path)?;
        let stat = Stat {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        };
        if stat.len > MAX_FILE_BYTES {
            return Ok(FileState { stat, hash: None });
        }
        let modified = metadata.modified()?;
        if let Some(cached) = self.hashes.get(path) {
            // checked: a far-future mtime must not overflow (and is never settled).
            let settled = modified
                .checked_add(RACY_WINDOW)
                .is_some_and(|t| t < cached.hashed_at);
            if cached.stat == stat && settled {
                return Ok(FileState {
                    stat,
                    hash: Some(cached.hash),
                });
            }
        }
        let hashed_at = SystemTime::now();
        // Bounded: the file may have grown since metadata() was taken.
        let mut contents = Vec::new();
        fs::File::open(path)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut contents)?;
        let hash: [u8; 32] = Sha256::digest(&contents).into();
        self.hashes.insert(
            path.clone(),
            CachedHash {
                stat: stat.clone(),
                hash,
                hashed_at,
            },
        );
        Ok(FileState {
            stat,
            hash: Some(hash),
        })
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
