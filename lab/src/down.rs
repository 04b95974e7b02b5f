//! `moat lab down`: removes everything a lab made. Works from the lab name alone (state.json
//! may be missing or corrupt after a crash), keeps going past failures, and is idempotent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mounts;
use super::state::LabState;
use super::{agent, cgroup, kubelet, lab_dir, net, process, LabError};

pub fn run(name: &str) -> Result<(), LabError> {
    let existed = exists(name);
    teardown(name)?;
    if existed {
        println!("lab {name} removed");
    } else {
        println!("lab {name} does not exist; nothing to remove");
    }
    Ok(())
}

/// Whether anything of lab `name` is left.
pub fn exists(name: &str) -> bool {
    lab_dir(name).exists()
        || agent_run_dir(name).exists()
        || Path::new(&format!("/sys/fs/bpf/moat/lab-{name}")).exists()
        || cgroup::lab_root(name).map(|root| root.exists()).unwrap_or(false)
        || net::list_netns()
            .map(|all| !owned_netns(name, &all, &other_labs(name)).is_empty())
            .unwrap_or(false)
}

pub fn teardown(name: &str) -> Result<(), LabError> {
    let mut first_error: Option<LabError> = None;
    let mut note = |result: Result<(), LabError>| {
        if let Err(error) = result {
            eprintln!("moat lab down {name}: {error}");
            first_error.get_or_insert(error);
        }
    };

    // The agent first, so it unpins and detaches while its pods still exist.
    let marker = agent::marker(name);
    let mut pids = process::find(&marker);
    if let Ok(state) = LabState::load(name) {
        pids.extend(state.agent.map(|a| a.pid));
    }
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        process::terminate(pid, &marker, Duration::from_secs(5));
    }
    let bpffs = agent::bpffs_root(name);
    kubelet::stop(name);

    // Every process in the lab's cgroup (sandboxes and with them their PID namespaces,
    // servers, probes, execs, the kubelet), then the cgroups. Derived from the name, so this
    // works without state.json.
    match cgroup::lab_root(name) {
        Ok(root) => note(cgroup::destroy(&root)),
        Err(error) => note(Err(error)),
    }

    // The node's volumes (a tmpfs each) and, for an agent in a container, the node's shared
    // bind, found in mountinfo: nothing else of the lab is mounted in the host's mount
    // namespace.
    note(detach_all(&lab_dir(name)));

    // Network namespaces: pods and the bridge.
    match net::list_netns() {
        Ok(all) => {
            for netns in owned_netns(name, &all, &other_labs(name)) {
                note(net::delete_netns(&netns));
            }
        }
        Err(error) => note(Err(error)),
    }

    // The run directory of an agent with the lab's instance (the lab's own, or one a bench
    // started and killed): a killed agent leaves its admin socket there.
    note(remove_all(&agent_run_dir(name)));

    // Pinned bpf objects of the lab's agent.
    let mut pins = vec![PathBuf::from(format!("/sys/fs/bpf/moat/lab-{name}"))];
    pins.push(bpffs.join("moat").join(format!("lab-{name}")));
    pins.dedup();
    for pin in pins {
        note(remove_all(&pin));
        // The shared `moat` directory the agent created, once no lab or agent uses it;
        // remove_dir fails harmlessly while anything else is pinned there.
        if let Some(parent) = pin.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    note(remove_all(&lab_dir(name)));
    // The shared parents (`/run/moat/lab`, `/run/moat`) once no other lab or agent uses them;
    // remove_dir fails harmlessly while they are not empty.
    for parent in lab_dir(name).ancestors().skip(1).take(2) {
        let _ = std::fs::remove_dir(parent);
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Detaches every mount below `dir`, again while a round detached any: a mount stacked on
/// another at the same path (one covered by a later bind of its parent) shows only once the
/// one above is gone.
fn detach_all(dir: &Path) -> Result<(), LabError> {
    for _ in 0..DETACH_ROUNDS {
        if mounts::detach_below(dir)? == 0 {
            return Ok(());
        }
    }
    Ok(())
}

const DETACH_ROUNDS: usize = 4;

/// Where an agent of the lab's instance (`lab-<name>`) keeps its admin socket.
fn agent_run_dir(name: &str) -> PathBuf {
    Path::new("/run/moat").join(format!("lab-{name}"))
}

fn remove_all(path: &Path) -> Result<(), LabError> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(LabError::io("removing", path, error))
        }
        _ => Ok(()),
    }
}

/// Names of other labs whose names start with `<name>-`: their netns names also start with
/// `moat-<name>-`, so they must be told apart.
fn other_labs(name: &str) -> Vec<String> {
    let prefix = format!("{name}-");
    let mut labs: Vec<String> = std::fs::read_dir("/run/moat/lab")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    if let Ok(all) = net::list_netns() {
        labs.extend(all.iter().filter_map(|n| {
            n.strip_prefix("moat-")?
                .strip_suffix("-br")
                .map(String::from)
        }));
    }
    labs.retain(|lab| lab.starts_with(&prefix));
    labs.sort();
    labs.dedup();
    labs
}

/// The netns of lab `name` among `all`: its bridge, and `moat-<name>-<ns>.<pod>` unless the
/// name belongs to one of `others` (labs named `<name>-...`).
pub fn owned_netns(name: &str, all: &[String], others: &[String]) -> Vec<String> {
    let bridge = net::bridge_netns(name);
    let prefix = format!("moat-{name}-");
    all.iter()
        .filter(|netns| {
            if **netns == bridge {
                return true;
            }
            let Some(rest) = netns.strip_prefix(&prefix) else {
                return false;
            };
            let is_pod = rest.contains('.');
            let theirs = others
                .iter()
                .any(|other| netns.starts_with(&format!("moat-{other}-")));
            is_pod && !theirs
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_of_a_lab_excludes_labs_with_longer_names() {
        let all: Vec<String> = [
            "moat-a-br",
            "moat-a-ns.p",
            "moat-a-b-br",
            "moat-a-b-ns.p",
            "moat-ab-x.y",
            "other",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            owned_netns("a", &all, &["a-b".into()]),
            vec!["moat-a-br", "moat-a-ns.p"]
        );
        assert_eq!(
            owned_netns("a", &all, &[]),
            vec!["moat-a-br", "moat-a-ns.p", "moat-a-b-ns.p"]
        );
        assert_eq!(
            owned_netns("a-b", &all, &[]),
            vec!["moat-a-b-br", "moat-a-b-ns.p"]
        );
    }
}
