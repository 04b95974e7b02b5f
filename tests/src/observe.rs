//! `moat observe -o json` running in the background while a test acts, its lines collected
//! in a temporary file.

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};

use crate::moat_bin;

/// A running `moat observe`; killed on drop.
pub struct Observer {
    child: Child,
    out: tempfile::NamedTempFile,
    args: Vec<String>,
}

impl Observer {
    /// `moat observe -o json ARGS...`: the agent (`--lab NAME`, `--socket PATH`) and filters.
    /// It connects asynchronously: events before it listens are not seen.
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Observer {
        let out = tempfile::NamedTempFile::new().expect("temporary file");
        let file = out.reopen().expect("reopening the temporary file");
        let child = Command::new(moat_bin())
            .args(["observe", "-o", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting moat observe");
        let args = args.iter().map(|arg| arg.as_ref().to_string_lossy().into_owned()).collect();
        Observer { child, out, args }
    }

    /// The events printed so far. Every complete line must be JSON (a line still being
    /// written is left for the next call).
    pub fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.out.path()).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("observe {:?} printed non-JSON {line:?}: {e}", self.args)))
            .collect()
    }

    /// Whether it has exited (`--max-events` reached, or an error).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
