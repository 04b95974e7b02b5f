use std::path::PathBuf;

use super::Origin;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A path could not be listed, opened or read.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: file is {size} bytes, over the limit of {limit} bytes", .path.display())]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{}: not UTF-8 text", .path.display())]
    NotText { path: PathBuf },
    #[error("{at}: more than {limit} objects in total, the most one load accepts")]
    TooManyObjects { at: Origin, limit: usize },
    /// The YAML or JSON parser refused the text; the message carries its line and column.
    #[error("{origin}: {message}")]
    Syntax { origin: Origin, message: String },
    /// A well-formed document that is not an acceptable object. `object` is `Kind
    /// namespace/name` when known; `field` is a path into the object, empty for the whole.
    #[error("{origin}: {}", describe(.object, .field, .message))]
    Invalid {
        origin: Origin,
        object: Option<String>,
        field: String,
        message: String,
    },
    #[error("{kind} {key} is defined twice: at {first} and at {second}")]
    Duplicate {
        kind: String,
        key: String,
        first: Box<Origin>,
        second: Box<Origin>,
    },
    /// Node objects give this node's labels; with several and no node name there is no
    /// telling which one is this node.
    #[error("several Node objects and no nodeName to pick this node's ({}); set nodeName in the config (or --node-name)", list_nodes(.nodes))]
    SeveralNodes { nodes: Vec<(String, Origin)> },
}

fn list_nodes(nodes: &[(String, Origin)]) -> String {
    nodes.iter().map(|(name, origin)| format!("Node {name} at {origin}")).collect::<Vec<_>>().join(", ")
}

fn describe(object: &Option<String>, field: &str, message: &str) -> String {
    let mut text = String::new();
    if let Some(object) = object {
        text.push_str(object);
        text.push_str(": ");
    }
    if !field.is_empty() {
        text.push_str(field);
        text.push_str(": ");
    }
    text.push_str(message);
    text
}
