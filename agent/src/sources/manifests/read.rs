//! Files → raw documents: directory listing, size limits, YAML/JSON parsing, List flattening.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{Document, ManifestError, Origin, MAX_FILE_BYTES, MAX_OBJECTS};

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads every file given (a directory: every *.yaml, *.yml, *.json file in it,
/// non-recursive, sorted by name; a file: whatever its extension). YAML multi-document
/// streams and JSON both work; `kind: List` (and any `*List` kind with `items`, as
/// `kubectl get -o yaml` prints) is flattened into its items; empty documents are skipped.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestError> {
    let mut documents = Vec::new();
    for file in list_files(paths)? {
        let text = read_file(&file)?;
        parse_file(&file, &text, &mut documents)?;
    }
    Ok(documents)
}

/// Parses one file's text as `read_documents` does (`.json`: JSON, else YAML), `file` naming
/// it in errors: for input that is not in a file (the fuzz target, tests).
pub fn parse_text(file: &Path, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut documents = Vec::new();
    parse_file(file, text, &mut documents)?;
    Ok(documents)
}

/// The files `read_documents` reads, in order. Also what the watcher fingerprints.
pub(crate) fn list_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ManifestError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { path, source }
    };
    let mut files = Vec::new();
    for path in paths {
        if !fs::metadata(path).map_err(io(path))?.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(path).map_err(io(path))? {
            let file = entry.map_err(io(path))?.path();
            if !is_manifest_name(&file) {
                continue;
            }
            // metadata() follows symlinks: ConfigMap volumes are links to the real files. A
            // dangling link is an error, not a skipped file.
            if fs::metadata(&file).map_err(io(&file))?.is_file() {
                found.push(file);
            }
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn is_manifest_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_none_or(|name| name.as_encoded_bytes().starts_with(b"."));
    !hidden
        && path
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|ext| EXTENSIONS.contains(&ext))
}

fn read_file(path: &Path) -> Result<String, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.into(),
        source,
    };
    let too_large = |size| ManifestError::FileTooLarge {
        path: path.into(),
        size,
        limit: MAX_FILE_BYTES,
    };
    let file = fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(too_large(size));
    }
    // The file may grow between metadata() and read: read at most one byte past the limit.
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| ManifestError::NotText { path: path.into() })
}

/// Parses one file's text and appends its objects. JSON for `.json` (a stream of values, as
/// `kubectl get -o json` for several resources prints), YAML otherwise.
fn parse_file(path: &Path, text: &str, out: &mut Vec<Document>) -> Result<(), ManifestError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let origin = |document| Origin {
        file: path.into(),
        document,
        item: None,
    };
    let syntax = |document, message| ManifestError::Syntax {
        origin: origin(document),
        message,
    };
    if path.extension() == Some(OsStr::new("json")) {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (index, value) in stream.enumerate() {
            let value = value.map_err(|e| syntax(index + 1, format!("invalid JSON: {e}")))?;
            add_document(origin(index + 1), value, out)?;
        }
    } else {
        if let Some((document, line)) = too_deep(text) {
            let message = format!(
                "line {line}: brackets nested more than {MAX_FLOW_DEPTH} deep; refused, as the YAML parser slows down quadratically on them"
            );
            return Err(syntax(document, message));
        }
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(document)
                .map_err(|e| syntax(index + 1, format!("invalid YAML: {e}")))?;
            add_document(origin(index + 1), value, out)?;
        }
    }
    Ok(())
}

/// Deeper than any real manifest; the parser refuses depth 128 anyway, but only after
/// scanning the whole nest in time quadratic in its depth.
const MAX_FLOW_DEPTH: usize = 1000;

/// Finds `[`/`{` nesting deeper than `MAX_FLOW_DEPTH`, counting every bracket (also in
/// strings: a conservative over-count only matters for text no manifest contains). Returns
/// the (document, line) where it happens; the document is counted from `---` lines.
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut separators = 0;
    let mut content_before_separator = false;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            separators += 1;
        } else if separators == 0 && !line.trim().is_empty() && !line.trim_start().starts_with('#')
        {
            content_before_separator = true;
        }
        for byte in line.bytes() {
            match byte {
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_FLOW_DEPTH {
                let document = (separators + usize::from(content_before_separator)).max(1);
                return Some((document, index + 1));
            }
        }
    }
    None
}

/// Appends one document, or the items of a List.
fn add_document(
    origin: Origin,
    value: Value,
    out: &mut Vec<Document>,
) -> Result<(), ManifestError> {
    if value.is_null() {
        return Ok(()); // an empty document: `---` twice, or only comments
    }
    let (kind, _) = header(&origin, &value)?;
    let is_list = kind == "List" || (kind.ends_with("List") && value.get("items").is_some());
    if !is_list {
        return push(Document { origin, value }, out);
    }
    let list_kind = kind.to_string();
    let mut value = value;
    let items = value.as_object_mut().and_then(|map| map.remove("items"));
    let items = match items.unwrap_or(Value::Null) {
        Value::Null => Vec::new(),
        Value::Array(items) => items,
        other => {
            return Err(ManifestError::Invalid {
                origin,
                object: Some(list_kind),
                field: "items".into(),
                message: format!("must be a list, got {}", type_name(&other)),
            })
        }
    };
    for (index, item) in items.into_iter().enumerate() {
        let origin = Origin {
            item: Some(index + 1),
            ..origin.clone()
        };
        if item.is_null() {
            return Err(invalid(origin, None, "", "list item is empty".into()));
        }
        let (kind, _) = header(&origin, &item)?;
        // Items are single objects; a List inside a List has no place to report from.
        if kind == "List" {
            return Err(invalid(
                origin,
                Some(kind.into()),
                "kind",
                "a List inside a List is not supported".into(),
            ));
        }
        push(
            Document {
                origin,
                value: item,
            },
            out,
        )?;
    }
    Ok(())
}

fn push(document: Document, out: &mut Vec<Document>) -> Result<(), ManifestError> {
    if out.len() >= MAX_OBJECTS {
        return Err(ManifestError::TooManyObjects {
            at: document.origin,
            limit: MAX_OBJECTS,
        });
    }
    out.push(document);
    Ok(())
}

/// `kind` and `apiVersion` of an object, which every object must have.
pub(super) fn header<'v>(
    origin: &Origin,
    value: &'v Value,
) -> Result<(&'v str, &'v str), ManifestError> {
    let Value::Object(map) = value else {
        let message = format!("document is not a mapping (got {})", type_name(value));
        return Err(invalid(origin.clone(), None, "", message));
    };
    let field = |name: &str| match map.get(name) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.as_str()),
        None | Some(Value::Null) => Err((
            name.to_string(),
            "missing (every object needs kind and apiVersion)".to_string(),
        )),
        Some(other) => Err((
            name.to_string(),
            format!("must be a non-empty string, got {}", type_name(other)),
        )),
    };
    let header = field("kind").and_then(|kind| Ok((kind, field("apiVersion")?)));
    header.map_err(|(name, message)| invalid(origin.clone(), object_name(value), &name, message))
}

/// `Kind namespace/name` (or less, as far as known) from a raw object, for errors.
pub(super) fn object_name(value: &Value) -> Option<String> {
    let kind = value.get("kind").and_then(Value::as_str)?;
    let metadata = value.get("metadata");
    let text = |key| {
        metadata
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    Some(match (text("namespace"), text("name")) {
        (Some(namespace), Some(name)) => format!("{kind} {namespace}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_string(),
    })
}

pub(super) fn invalid(
    origin: Origin,
    object: Option<String>,
    field: &str,
    message: String,
) -> ManifestError {
    ManifestError::Invalid {
        origin,
        object,
        field: field.into(),
        message,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
