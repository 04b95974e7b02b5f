//! Clients of the agent's admin socket: `moat observe` and `moat status`; and `moat lab`,
//! which hands over to the lab's own binary.

pub mod explain;
pub mod lab;
pub mod lab_dirs;
pub mod observe;
pub mod status;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::admin::Request;
use crate::config::Config;

/// Which agent to talk to.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// The agent's admin socket (default: that of instance `default`).
    #[arg(long, conflicts_with = "lab")]
    pub socket: Option<PathBuf>,
    /// The agent of the lab with this name.
    #[arg(long, value_parser = lab_dirs::parse_name)]
    pub lab: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("admin socket {path}: {action}: {source} (is the agent running? it creates the socket at start)")]
    Socket { path: PathBuf, action: &'static str, source: std::io::Error },
    #[error("admin socket {path}: bad response: {message}")]
    Response { path: PathBuf, message: String },
    #[error("the agent answered: {0}")]
    Agent(String),
    #[error("lab {name:?} does not exist (no {}); create it with `moat lab up --name {name}`", dir.display())]
    NoLab { name: String, dir: PathBuf },
    #[error("`moat lab` runs the lab's own binary, `{bin}`, which is not installed: not beside this executable{}, nor on PATH (build it with `cargo build -p moat-lab`)", beside.as_ref().map(|d| format!(" ({})", d.display())).unwrap_or_default(), bin = lab_dirs::LAB_BINARY)]
    NoLabBinary { beside: Option<PathBuf> },
    #[error("running {path}: {source}")]
    Exec { path: PathBuf, source: std::io::Error },
}

impl Target {
    pub fn socket_path(&self) -> Result<PathBuf, CliError> {
        if let Some(path) = &self.socket {
            return Ok(path.clone());
        }
        if let Some(name) = &self.lab {
            let dir = lab_dirs::lab_dir(name);
            if !dir.is_dir() {
                return Err(CliError::NoLab { name: name.clone(), dir });
            }
            return Ok(lab_dirs::admin_socket(name));
        }
        Ok(Config::default().admin_socket_path())
    }
}

/// A connection with the request sent; read response lines from it.
pub struct Connection {
    pub path: PathBuf,
    pub reader: BufReader<UnixStream>,
}

pub fn connect(target: &Target, request: &Request) -> Result<Connection, CliError> {
    let path = target.socket_path()?;
    let error = |action| {
        let path = path.clone();
        move |source| CliError::Socket { path, action, source }
    };
    let mut stream = UnixStream::connect(&path).map_err(error("connecting"))?;
    let mut line = serde_json::to_vec(request).map_err(|e| error("encoding the request")(std::io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(error("sending the request"))?;
    Ok(Connection { path, reader: BufReader::new(stream) })
}

impl Connection {
    /// The next response line as JSON; None at the end of the stream.
    pub fn next_value(&mut self) -> Result<Option<serde_json::Value>, CliError> {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line).map_err(|source| CliError::Socket {
            path: self.path.clone(),
            action: "reading",
            source,
        })?;
        if read == 0 {
            return Ok(None);
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| CliError::Response { path: self.path.clone(), message: format!("{e}: {line:?}") })?;
        if value["type"] == "error" {
            return Err(CliError::Agent(value["message"].as_str().unwrap_or("").to_string()));
        }
        Ok(Some(value))
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    let (h, m, s, ms) = (day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60, day_ms % 1000);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_formats_utc() {
        assert_eq!(super::clock(86_400_000 + 3_723_004), "01:02:03.004");
    }
}
