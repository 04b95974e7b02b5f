use std::fs;
use std::path::{Path, PathBuf};

use super::*;

pub(super) fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/sources/testdata")
        .join(name)
}

pub(super) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn read_text(name: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let dir = tempfile::tempdir().unwrap();
    read_documents(&[write(dir.path(), name, text)])
}

fn read_error(name: &str, text: &str) -> String {
    read_text(name, text).unwrap_err().to_string()
}

fn kinds(documents: &[Document]) -> Vec<&str> {
    documents
        .iter()
        .map(|d| d.value["kind"].as_str().unwrap())
        .collect()
}

#[test]
fn multi_document_yaml_skips_empty_documents() {
    let documents = read_documents(&[testdata("cluster.yaml")]).unwrap();
    assert_eq!(
        kinds(&documents),
        ["Namespace", "NetworkPolicy", "ConfigMap", "Pod"]
    );
    // The comment-only document still counts, so numbers match what an editor shows.
    let numbers: Vec<_> = documents.iter().map(|d| d.origin.document).collect();
    assert_eq!(numbers, [1, 3, 4, 5]);
    assert!(documents.iter().all(|d| d.origin.item.is_none()));
}

#[test]
fn lists_are_flattened_with_item_origins() {
    let documents = read_documents(&[testdata("pods-list.yaml")]).unwrap();
    assert_eq!(documents.len(), 4);
    assert_eq!(kinds(&documents), ["Pod"; 4]);
    let origin = &documents[2].origin;
    assert_eq!((origin.document, origin.item), (1, Some(3)));
    assert!(
        origin
            .to_string()
            .ends_with("pods-list.yaml (document 1, item 3)"),
        "{origin}"
    );
}

#[test]
fn json_typed_list_is_flattened() {
    let documents = read_documents(&[testdata("namespaces.json")]).unwrap();
    assert_eq!(kinds(&documents), ["Namespace", "Namespace"]);
    assert_eq!(documents[1].origin.item, Some(2));
}

#[test]
fn json_stream_and_empty_lists() {
    let text = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}
        {"apiVersion":"v1","kind":"List","items":null}
        {"apiVersion":"v1","kind":"PodList","items":[]}
        {"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod"}]}"#;
    let documents = read_text("all.json", text).unwrap();
    assert_eq!(kinds(&documents), ["Namespace", "Pod"]);
    assert_eq!(
        (documents[1].origin.document, documents[1].origin.item),
        (4, Some(1))
    );
}

#[test]
fn list_kind_without_items_is_an_ordinary_object() {
    let documents =
        read_text("a.yaml", "apiVersion: x.io/v1\nkind: AllowList\nspec: {}\n").unwrap();
    assert_eq!(kinds(&documents), ["AllowList"]);
}

#[test]
fn file_extension_does_not_matter_when_named() {
    let documents = read_text("manifests.txt", "apiVersion: v1\nkind: Namespace\n").unwrap();
    assert_eq!(kinds(&documents), ["Namespace"]);
}

#[test]
fn directory_is_read_sorted_non_recursive_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let object = |kind: &str| format!("apiVersion: v1\nkind: {kind}\n");
    write(dir.path(), "b.yml", &object("B"));
    write(dir.path(), "a.yaml", &object("A"));
    write(dir.path(), "c.json", r#"{"apiVersion": "v1", "kind": "C"}"#);
    write(dir.path(), "notes.txt", "not yaml: [");
    write(dir.path(), ".a.yaml.swp", "garbage: [");
    write(dir.path(), ".hidden.yaml", &object("Hidden"));
    fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    write(&dir.path().join("sub.yaml"), "d.yaml", &object("Nested"));
    let documents = read_documents(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(kinds(&documents), ["A", "B", "C"]);
}

#[test]
fn dangling_symlink_in_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.yaml"), dir.path().join("link.yaml")).unwrap();
    let error = read_documents(&[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(error.contains("link.yaml"), "{error}");
}

#[test]
fn missing_path_is_an_error() {
    let error = read_documents(&[PathBuf::from("/nonexistent/moat/x.yaml")]).unwrap_err();
    assert!(matches!(error, ManifestError::Io { .. }), "{error}");
    assert!(
        error.to_string().contains("/nonexistent/moat/x.yaml"),
        "{error}"
    );
}

#[test]
fn yaml_syntax_error_names_file_document_and_line() {
    let error = read_error(
        "bad.yaml",
        "apiVersion: v1\nkind: A\n---\napiVersion: v1\nkind: [B\n",
    );
    assert!(error.contains("bad.yaml (document 2)"), "{error}");
    assert!(error.contains("line"), "{error}");
}

#[test]
fn json_syntax_error_names_file_and_line() {
    let error = read_error("bad.json", "{\"apiVersion\": \"v1\",\n \"kind\": }");
    assert!(error.contains("bad.json (document 1)"), "{error}");
    assert!(error.contains("line 2"), "{error}");
}

#[test]
fn document_must_be_a_mapping_with_kind_and_api_version() {
    let error = read_error("a.yaml", "- just\n- a list\n");
    assert!(
        error.contains("a.yaml (document 1)") && error.contains("not a mapping"),
        "{error}"
    );

    let error = read_error("a.yaml", "apiVersion: v1\nmetadata: {name: x}\n");
    assert!(
        error.contains("a.yaml (document 1): kind: missing"),
        "{error}"
    );

    let error = read_error(
        "a.yaml",
        "kind: Pod\nmetadata: {name: web, namespace: team-a}\n",
    );
    assert!(
        error.contains("a.yaml (document 1): Pod team-a/web: apiVersion: missing"),
        "{error}"
    );

    let error = read_error("a.yaml", "kind: 7\napiVersion: v1\n");
    assert!(
        error.contains("kind: must be a non-empty string, got a number"),
        "{error}"
    );
}

#[test]
fn bad_list_items_are_errors() {
    let error = read_error("l.yaml", "apiVersion: v1\nkind: List\nitems: {a: 1}\n");
    assert!(
        error.contains("l.yaml (document 1): List: items: must be a list"),
        "{error}"
    );

    let error = read_error(
        "l.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: A\n- 42\n",
    );
    assert!(
        error.contains("l.yaml (document 1, item 2)") && error.contains("not a mapping"),
        "{error}"
    );

    let error = read_error(
        "l.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- kind: Pod\n  metadata: {name: x}\n",
    );
    assert!(
        error.contains("(document 1, item 1): Pod x: apiVersion: missing"),
        "{error}"
    );

    let error = read_error(
        "l.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n",
    );
    assert!(error.contains("List inside a List"), "{error}");
}

#[test]
fn non_utf8_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bin.yaml");
    fs::write(&path, [0x6b, 0x3a, 0xff, 0xfe]).unwrap();
    let error = read_documents(&[path]).unwrap_err().to_string();
    assert!(error.contains("bin.yaml: not UTF-8"), "{error}");
}

#[test]
fn byte_order_mark_is_accepted() {
    let documents =
        read_text("bom.json", "\u{feff}{\"apiVersion\":\"v1\",\"kind\":\"A\"}").unwrap();
    assert_eq!(kinds(&documents), ["A"]);
}

#[test]
fn file_over_the_size_limit_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    fs::File::create(&path)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap(); // sparse
    let error = read_documents(&[path]).unwrap_err();
    assert!(
        matches!(error, ManifestError::FileTooLarge { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("huge.yaml") && text.contains(&MAX_FILE_BYTES.to_string()),
        "{text}"
    );
}

#[test]
fn too_many_objects_is_an_error() {
    let item = r#"{"apiVersion":"v1","kind":"A"}"#;
    let dir = tempfile::tempdir().unwrap();
    // Split over two files: the limit is on the total.
    let half = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
        vec![item; MAX_OBJECTS / 2].join(",")
    );
    let first = write(dir.path(), "1.json", &half);
    let second = write(dir.path(), "2.json", &format!("{half}\n{item}"));
    assert_eq!(
        read_documents(std::slice::from_ref(&first)).unwrap().len(),
        MAX_OBJECTS / 2
    );
    let error = read_documents(&[first, second]).unwrap_err();
    assert!(
        matches!(error, ManifestError::TooManyObjects { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("2.json (document 2)") && text.contains("100000"),
        "{text}"
    );
}

#[test]
fn yaml_alias_bomb_is_refused_not_expanded() {
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..12 {
        let previous = level - 1;
        let p = if previous == 0 {
            "a".to_string()
        } else {
            format!("a{previous}")
        };
        text.push_str(&format!(
            "a{level}: &a{level} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        ));
    }
    assert!(read_text("bomb.yaml", &text).is_err());
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    let start = std::time::Instant::now();
    let yaml = format!(
        "apiVersion: v1\nkind: A\n---\nx: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let error = read_error("deep.yaml", &yaml);
    assert!(
        error.contains("deep.yaml (document 2): line 4: brackets nested more than 1000"),
        "{error}"
    );
    // Within the guard, the parser's own limit (128) still refuses it.
    let yaml = format!(
        "apiVersion: v1\nkind: A\nx: {}{}\n",
        "[".repeat(999),
        "]".repeat(999)
    );
    assert!(read_error("deep.yaml", &yaml).contains("recursion limit"));
    let json = format!(
        r#"{{"apiVersion":"v1","kind":"A","x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(read_text("deep.json", &json).is_err());
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}
