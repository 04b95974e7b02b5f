//! The agent's configuration file, re-read while the agent runs: on SIGHUP, and whenever
//! its content changes (a ConfigMap volume swaps its `..data` symlink, so the content, not
//! the file's metadata, is what tells).
//!
//! What takes effect at once: `guard:` (modes attach and detach the guard's probes; paths,
//! ports and API servers are rewritten). Everything else is read at start only; a change to
//! it is logged as waiting for a restart. A file that no longer parses is reported with the
//! error naming its field, and the last good configuration stays in force.

use std::path::{Path, PathBuf};

use crate::config::Config;

pub struct ConfigWatch {
    path: Option<PathBuf>,
    /// The text last read, good or bad: a bad edit is reported once, not on every tick.
    seen: Option<String>,
    /// The configuration in force.
    current: Config,
}

/// A re-read configuration the agent should act on.
pub struct Reloaded {
    pub config: Config,
    pub guard_changed: bool,
    /// Top-level fields (other than `guard`) whose change waits for a restart.
    pub restart_needed: Vec<&'static str>,
}

impl ConfigWatch {
    /// `config` is what the agent started with, read from `path` (none: defaults, nothing
    /// to watch).
    pub fn new(path: Option<&Path>, config: &Config) -> Self {
        let seen = path.and_then(|p| std::fs::read_to_string(p).ok());
        Self { path: path.map(Path::to_path_buf), seen, current: config.clone() }
    }

    /// Re-reads the file; `Some` when it now holds a different, valid configuration.
    /// `force`: re-parse even if the text did not change (SIGHUP).
    pub fn check(&mut self, force: bool) -> Option<Reloaded> {
        let path = self.path.as_ref()?;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                if force || self.seen.is_some() {
                    tracing::error!(path = %path.display(), %error, "reading the agent config failed; the last good configuration stays in force");
                }
                self.seen = None;
                return None;
            }
        };
        if !force && self.seen.as_deref() == Some(text.as_str()) {
            return None;
        }
        self.seen = Some(text.clone());
        let mut next = match Config::parse(&text, path) {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "agent config rejected; the last good configuration stays in force");
                return None;
            }
        };
        // Set from the command line or the environment at start, not from the file.
        next.node_name = self.current.node_name.clone();
        let reloaded = compare(&self.current, next);
        self.current = reloaded.config.clone();
        (reloaded.guard_changed || !reloaded.restart_needed.is_empty()).then_some(reloaded)
    }
}

fn compare(current: &Config, next: Config) -> Reloaded {
    let guard_changed = current.guard != next.guard;
    let mut without_guard = next.clone();
    without_guard.guard = current.guard.clone();
    let restart_needed = if without_guard == *current { Vec::new() } else { changed_fields(current, &without_guard) };
    Reloaded { config: next, guard_changed, restart_needed }
}

/// Names of the top-level fields other than `guard` that differ, as the file spells them.
fn changed_fields(a: &Config, b: &Config) -> Vec<&'static str> {
    macro_rules! differing {
        ($($field:ident => $name:literal),* $(,)?) => {{
            // Exhaustive: a new field of `Config` fails to compile until it is listed here.
            let Config { node_name: _, guard: _, $($field: _),* } = a;
            let mut fields = Vec::new();
            $(if a.$field != b.$field { fields.push($name); })*
            fields
        }};
    }
    differing!(
        tenant_source => "tenantSource",
        tenant_label => "tenantLabel",
        cgroup_root => "cgroupRoot",
        cgroup_layout => "cgroupLayout",
        bpffs_root => "bpffsRoot",
        instance => "instance",
        unknown_endpoints => "unknownEndpoints",
        default_deny_in_tenant => "defaultDenyInTenant",
        cluster_dns => "clusterDns",
        shared_services => "sharedServices",
        allowed_tenant_pairs => "allowedTenantPairs",
        cluster_cidrs => "clusterCidrs",
        tenant_networks => "tenantNetworks",
        poll_interval_ms => "pollIntervalMs",
        api_discovery_interval_ms => "apiDiscoveryIntervalMs",
        metrics_address => "metricsAddress",
        admin_socket => "adminSocket",
        events => "events",
        kube_events => "kubeEvents",
        tc_attach => "tcAttach",
        dns => "dns",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("writing the test config");
    }

    #[test]
    fn guard_modes_reload_and_other_fields_wait_for_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        write(&path, "guard:\n  detections:\n    escape.setns: detect\n");
        let start = Config::load(&path).expect("valid config");
        let mut watch = ConfigWatch::new(Some(&path), &start);
        assert!(watch.check(false).is_none(), "unchanged text is not a reload");

        write(&path, "guard:\n  detections:\n    escape.setns: off\n");
        let reloaded = watch.check(false).expect("a changed mode reloads");
        assert!(reloaded.guard_changed);
        assert!(reloaded.restart_needed.is_empty());
        assert_eq!(reloaded.config.guard.detections.get("escape.setns"), Some(&crate::config::GuardMode::Off));

        write(&path, "guard:\n  detections:\n    escape.setns: off\npollIntervalMs: 500\n");
        let reloaded = watch.check(false).expect("a changed field is reported");
        assert!(!reloaded.guard_changed);
        assert_eq!(reloaded.restart_needed, vec!["pollIntervalMs"]);
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        write(&path, "guard:\n  detections:\n    escape.setns: block\n");
        let start = Config::load(&path).expect("valid config");
        let mut watch = ConfigWatch::new(Some(&path), &start);
        write(&path, "guard:\n  detections:\n    escape.setns: sometimes\n");
        assert!(watch.check(false).is_none(), "an invalid mode is rejected");
        assert!(watch.check(true).is_none(), "and stays rejected on SIGHUP");
        write(&path, "guard:\n  detections:\n    escape.setns: detect\n");
        let reloaded = watch.check(false).expect("the fix reloads");
        assert_eq!(reloaded.config.guard.detections.get("escape.setns"), Some(&crate::config::GuardMode::Detect));
    }

    #[test]
    fn no_file_means_nothing_to_watch() {
        let mut watch = ConfigWatch::new(None, &Config::default());
        assert!(watch.check(true).is_none());
    }
}
