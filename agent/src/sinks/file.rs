//! Events as JSON lines in a file, rotated by size: when a write would take `path` past
//! `max_size_bytes`, `path.N` becomes `path.N+1` (the oldest beyond `files_kept` is removed),
//! `path` becomes `path.1`, and a new `path` is started.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::FileSinkConfig;
use crate::events::losses::Losses;
use crate::events::pipeline::Sink;
use crate::events::record::Event;

#[derive(Debug, thiserror::Error)]
#[error("event file {path}: {action}: {source}")]
pub struct FileSinkError {
    pub path: PathBuf,
    pub action: &'static str,
    pub source: std::io::Error,
}

pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    kept: u32,
    file: File,
    size: u64,
}

fn open(path: &Path) -> Result<(File, u64), FileSinkError> {
    let error = |action| move |source| FileSinkError { path: path.into(), action, source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(error("creating its directory"))?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path).map_err(error("opening"))?;
    let size = file.metadata().map_err(error("reading its size"))?.len();
    Ok((file, size))
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl RotatingFile {
    pub fn open(config: &FileSinkConfig) -> Result<Self, FileSinkError> {
        let (file, size) = open(&config.path)?;
        Ok(Self { path: config.path.clone(), max_size: config.max_size_bytes, kept: config.files_kept, file, size })
    }

    pub fn write_line(&mut self, line: &str) -> Result<(), FileSinkError> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_size {
            self.rotate()?;
        }
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        self.file
            .write_all(&buffer)
            .map_err(|source| FileSinkError { path: self.path.clone(), action: "writing", source })?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), FileSinkError> {
        let error = |path: &Path, action| {
            let path = path.to_path_buf();
            move |source| FileSinkError { path, action, source }
        };
        match std::fs::remove_file(numbered(&self.path, self.kept)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(error(&numbered(&self.path, self.kept), "removing the oldest")(e));
            }
            _ => {}
        }
        for n in (1..self.kept).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, n + 1)).map_err(error(&from, "rotating"))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1)).map_err(error(&self.path, "rotating"))?;
        let (file, size) = open(&self.path)?;
        self.file = file;
        self.size = size;
        Ok(())
    }
}

/// The file as a sink: a failed write is logged (once per failure streak) and counted lost.
pub struct FileSink {
    file: RotatingFile,
    losses: Arc<Losses>,
    failing: bool,
}

impl FileSink {
    pub fn new(file: RotatingFile, losses: Arc<Losses>) -> Self {
        Self { file, losses, failing: false }
    }
}

impl Sink for FileSink {
    fn emit(&mut self, event: &Event) {
        match self.file.write_line(&event.to_json()) {
            Ok(()) => self.failing = false,
            Err(error) => {
                self.losses.sink_dropped();
                if !self.failing {
                    tracing::error!(%error, "event file sink failed; events are counted as lost");
                }
                self.failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let config = FileSinkConfig { path: path.clone(), max_size_bytes: 100, files_kept: 2 };
        let mut file = RotatingFile::open(&config).unwrap();
        let line = "x".repeat(39); // 40 bytes with the newline: two lines per file
        for i in 0..7 {
            file.write_line(&format!("{i}{}", &line[1..])).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert!(read(&path).starts_with('6'), "newest in the live file");
        assert!(read(&numbered(&path, 1)).starts_with('4'));
        assert!(read(&numbered(&path, 2)).starts_with('2'));
        assert!(!numbered(&path, 3).exists(), "only files_kept rotated files");
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        // Reopening appends to the live file and keeps counting its size.
        let mut again = RotatingFile::open(&config).unwrap();
        again.write_line(&line).unwrap();
        again.write_line(&line).unwrap();
        assert!(read(&numbered(&path, 1)).starts_with('6'));
    }
}
