use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::model::ObjectKey;

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

fn names(result: Option<Result<Loaded, ManifestError>>) -> Vec<String> {
    let loaded = result
        .expect("a change should load")
        .expect("the load should succeed");
    loaded.cluster.namespaces.into_keys().collect()
}

#[test]
fn first_poll_loads_then_only_changes_do() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ns.yaml");
    fs::write(&file, namespace("aaa")).unwrap();
    let mut watcher = ManifestWatcher::new(vec![file.clone()]);
    assert_eq!(names(watcher.poll()), ["aaa"]);
    assert!(watcher.poll().is_none());
    assert!(watcher.poll().is_none());

    // Same size, written within the same second: only the content hash can tell.
    fs::write(&file, namespace("bbb")).unwrap();
    assert_eq!(names(watcher.poll()), ["bbb"]);
    assert!(watcher.poll().is_none());
}

#[test]
fn directory_gaining_and_losing_files_reloads() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), namespace("a")).unwrap();
    let mut watcher = ManifestWatcher::new(vec![dir.path().to_path_buf()]);
    assert_eq!(names(watcher.poll()), ["a"]);

    fs::write(dir.path().join("b.yml"), namespace("b")).unwrap();
    assert_eq!(names(watcher.poll()), ["a", "b"]);
    // Files the loader ignores do not trigger a reload.
    fs::write(dir.path().join("README.md"), "hello").unwrap();
    fs::write(dir.path().join(".b.yml.swp"), "x").unwrap();
    assert!(watcher.poll().is_none());

    fs::remove_file(dir.path().join("a.yaml")).unwrap();
    assert_eq!(names(watcher.poll()), ["b"]);
    assert!(watcher.poll().is_none());
}

#[test]
fn replace_by_rename_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ns.yaml");
    fs::write(&file, namespace("old")).unwrap();
    let mut watcher = ManifestWatcher::new(vec![dir.path().to_path_buf()]);
    assert_eq!(names(watcher.poll()), ["old"]);
    // How editors and ConfigMap updates write: a new file renamed over the old one.
    let temp = dir.path().join(".ns.yaml.tmp");
    fs::write(&temp, namespace("new")).unwrap();
    fs::rename(&temp, &file).unwrap();
    assert_eq!(names(watcher.poll()), ["new"]);
}

#[test]
fn bad_edit_is_reported_once_and_fix_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ns.yaml");
    fs::write(&file, namespace("good")).unwrap();
    let mut watcher = ManifestWatcher::new(vec![file.clone()]);
    assert_eq!(names(watcher.poll()), ["good"]);

    fs::write(&file, "apiVersion: v1\nkind: [Namespace\n").unwrap();
    let error = watcher
        .poll()
        .expect("the broken file is a change")
        .unwrap_err();
    assert!(
        error.to_string().contains("ns.yaml (document 1)"),
        "{error}"
    );
    assert!(
        watcher.poll().is_none(),
        "the same error is not reported again"
    );

    fs::write(&file, namespace("fixed")).unwrap();
    assert_eq!(names(watcher.poll()), ["fixed"]);
}

#[test]
fn missing_path_errors_once_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("later.yaml");
    let mut watcher = ManifestWatcher::new(vec![file.clone()]);
    assert!(matches!(
        watcher.poll(),
        Some(Err(ManifestError::Io { .. }))
    ));
    assert!(watcher.poll().is_none());
    fs::write(&file, namespace("late")).unwrap();
    assert_eq!(names(watcher.poll()), ["late"]);
}

#[test]
fn settled_files_use_the_cached_hash_and_changes_still_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.yaml");
    let pod = |ip: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: n}}\nspec: {{containers: []}}\nstatus: {{podIP: {ip}}}\n")
    };
    let age = |path: &Path| {
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    };
    fs::write(&file, pod("10.0.0.1")).unwrap();
    age(&file);
    let mut watcher = ManifestWatcher::new(vec![file.clone()]);
    assert!(watcher.poll().unwrap().is_ok());
    let hashed_at = watcher.hashes[&file].hashed_at;
    assert!(watcher.poll().is_none());
    assert!(watcher.poll().is_none());
    assert_eq!(watcher.hashes[&file].hashed_at, hashed_at, "not read again");

    // Same size, and the old mtime put back (as `cp -p` or tar would): ctime still moves.
    fs::write(&file, pod("10.0.0.2")).unwrap();
    age(&file);
    let loaded = watcher.poll().expect("content changed").unwrap();
    let ips = &loaded.cluster.pods[&ObjectKey::new("n", "p")].ips;
    assert_eq!(ips, &["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]);
}
