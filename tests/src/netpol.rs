//! Helpers for NetworkPolicy tests: the x/y/z × a/b/c model, `moat explain --matrix` on a
//! lab's manifests, and the comparison of an expected matrix with both explain's and the real
//! datapath's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{documents, eventually, output_of, parse_matrix, Family, Lab, Verdict};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// The tenant every model namespace is in unless a case says otherwise.
pub const TENANT: &str = "conformance";

/// Every container port of a model pod: 80 and 81 over TCP, UDP and SCTP, each named
/// `serve-<port>-<proto>` like the upstream e2e suite.
pub const MODEL_PORTS: [(u16, &str); 6] =
    [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"), (80, "SCTP"), (81, "SCTP")];

/// The 9 pods of the model, `ns/pod`.
pub fn model_pods() -> Vec<String> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |pod| format!("{ns}/{pod}"))).collect()
}

/// A namespace with its `ns` label and, if `tenant` is given, the tenant label.
pub fn namespace(name: &str, tenant: Option<&str>, extra: &[(&str, &str)]) -> String {
    let mut labels = vec![("ns".to_string(), name.to_string())];
    if let Some(tenant) = tenant {
        labels.push(("tenant".into(), tenant.into()));
    }
    labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n");
    for (key, value) in labels {
        yaml.push_str(&format!("    {key}: {value:?}\n"));
    }
    yaml
}

/// A pod with `labels` and named container ports (`serve-<port>-<proto>` unless a name is
/// given; `None` leaves the port unnamed).
pub fn pod(namespace: &str, name: &str, labels: &[(&str, &str)], ports: &[(u16, &str, Option<&str>)]) -> String {
    let mut yaml = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n");
    if !labels.is_empty() {
        yaml.push_str("  labels:\n");
        for (key, value) in labels {
            yaml.push_str(&format!("    {key}: {value:?}\n"));
        }
    }
    yaml.push_str("spec:\n  containers:\n    - name: app\n      image: registry.k8s.io/e2e-test-images/agnhost:2.53\n");
    if !ports.is_empty() {
        yaml.push_str("      ports:\n");
        for (port, protocol, port_name) in ports {
            yaml.push_str(&format!("        - containerPort: {port}\n          protocol: {protocol}\n"));
            if let Some(port_name) = port_name {
                yaml.push_str(&format!("          name: {port_name}\n"));
            }
        }
    }
    yaml
}

/// The model: namespaces x, y, z in tenant `tenants(ns)` (None: no tenant label), pods a, b,
/// c labelled `pod: <name>`, each serving [`MODEL_PORTS`].
pub fn model(tenants: impl Fn(&str) -> Option<String>) -> String {
    let names: Vec<String> = MODEL_PORTS.iter().map(|(port, proto)| format!("serve-{port}-{}", proto.to_lowercase())).collect();
    let ports: Vec<(u16, &str, Option<&str>)> =
        MODEL_PORTS.iter().zip(&names).map(|((port, proto), name)| (*port, *proto, Some(name.as_str()))).collect();
    let mut docs = Vec::new();
    for ns in NAMESPACES {
        docs.push(namespace(ns, tenants(ns).as_deref(), &[]));
        for name in PODS {
            docs.push(pod(ns, name, &[("pod", name)], &ports));
        }
    }
    documents(&docs)
}

/// A NetworkPolicy in `namespace` with the given `spec` (YAML, indented by two spaces).
pub fn policy(namespace: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}")
}

/// A matrix: (from, to) → allowed.
pub type Matrix = BTreeMap<(String, String), bool>;

/// `moat explain -f FILES --matrix --port PORT --family F -o json [--config C]`.
pub fn explain_matrix(moat: &Path, files: &[PathBuf], config: Option<&Path>, port: &str, family: Family) -> Matrix {
    let mut command = Command::new(moat);
    command.arg("explain");
    for file in files {
        command.arg("-f").arg(file);
    }
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.args(["--matrix", "--port", port, "--family", family.arg(), "-o", "json"]);
    let output = output_of(&mut command).ok();
    let cells = parse_matrix(&output.stdout).unwrap_or_else(|err| panic!("unreadable explain matrix ({err})\n{output}"));
    to_matrix(cells, &format!("explain {port}"))
}

fn to_matrix(cells: Vec<(String, String, Verdict)>, what: &str) -> Matrix {
    cells
        .into_iter()
        .map(|(from, to, verdict)| {
            let allowed = match verdict {
                Verdict::Allowed => true,
                Verdict::Denied => false,
                Verdict::Other(other) => panic!("{what}: {from} -> {to}: verdict {other:?}"),
            };
            ((from, to), allowed)
        })
        .collect()
}

/// The lab's probe matrix.
pub fn probe_matrix(lab: &Lab, port: &str, family: Family) -> Matrix {
    to_matrix(lab.matrix_family(port, family), &format!("probe {port}"))
}

/// The expected matrix over `pods` from `allowed(from, to)`.
pub fn expected(pods: &[String], allowed: impl Fn(&str, &str) -> bool) -> Matrix {
    let mut matrix = Matrix::new();
    for from in pods {
        for to in pods.iter().filter(|to| *to != from) {
            matrix.insert((from.clone(), to.clone()), allowed(from, to));
        }
    }
    matrix
}

/// The cells where `got` differs from `want`, one per line (empty when they agree).
pub fn differences(want: &Matrix, got: &Matrix) -> String {
    let mut lines = Vec::new();
    for (key, allowed) in want {
        match got.get(key) {
            Some(g) if g == allowed => {}
            Some(g) => lines.push(format!("  {} -> {}: want {}, got {}", key.0, key.1, word(*allowed), word(*g))),
            None => lines.push(format!("  {} -> {}: missing", key.0, key.1)),
        }
    }
    for key in got.keys().filter(|key| !want.contains_key(*key)) {
        lines.push(format!("  {} -> {}: unexpected cell", key.0, key.1));
    }
    lines.join("\n")
}

fn word(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

/// A grid: one row per source, `X` allow, `.` deny, `-` the pod itself.
pub fn grid(pods: &[String], matrix: &Matrix) -> String {
    let mut out = format!("{:>8} {}\n", "", pods.iter().map(|p| format!("{p:>4}")).collect::<String>());
    for from in pods {
        out.push_str(&format!("{from:>8} "));
        for to in pods {
            let cell = if from == to {
                '-'
            } else {
                match matrix.get(&(from.clone(), to.clone())) {
                    Some(true) => 'X',
                    Some(false) => '.',
                    None => '?',
                }
            };
            out.push_str(&format!("{cell:>4}"));
        }
        out.push('\n');
    }
    out
}

/// How long the datapath gets to converge on a new state.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// Checks `want` against explain on the lab's manifests (at once) and against the probe
/// matrix (polled until it matches or [`CONVERGE`] passes). Panics naming the case.
pub fn check(lab: &Lab, config: Option<&Path>, case: &str, port: &str, family: Family, want: &Matrix) {
    let pods: Vec<String> = {
        let mut pods: Vec<String> = want.keys().map(|(from, _)| from.clone()).collect();
        pods.dedup();
        pods
    };
    let explained = explain_matrix(lab.moat(), &[lab.manifests_dir()], config, port, family);
    let diff = differences(want, &explained);
    assert!(diff.is_empty(), "{case}: {port} {family:?}: explain disagrees with the spec:\n{diff}\nwant:\n{}got:\n{}", grid(&pods, want), grid(&pods, &explained));
    if !datapath_can_serve(port) {
        return;
    }
    let start = Instant::now();
    let mut last = Matrix::new();
    let converged = eventually(CONVERGE, || {
        last = probe_matrix(lab, port, family);
        (last == *want).then_some(())
    });
    if converged.is_none() {
        panic!(
            "{case}: {port} {family:?}: the datapath disagrees with the spec after {:?}:\n{}\nwant:\n{}got:\n{}",
            start.elapsed(),
            differences(want, &last),
            grid(&pods, want),
            grid(&pods, &last)
        );
    }
}

/// This kernel has no SCTP: the lab's servers skip SCTP ports, so SCTP is checked through
/// explain only.
pub fn datapath_can_serve(port: &str) -> bool {
    !port.to_ascii_uppercase().ends_with("/SCTP")
}

/// The expected verdict for (from, to, port).
pub type Expect<'a> = Box<dyn Fn(&str, &str, &str) -> bool + 'a>;

/// One case: policies (applied on top of the lab's base manifests), the ports to check, and
/// the expected verdict for (from, to, port) — written from the spec, not from explain.
pub struct Case<'a> {
    pub name: &'a str,
    pub policies: Vec<String>,
    /// `80/TCP`, `81/TCP`, `80/UDP`, `80/SCTP` (explain only), `icmp`.
    pub ports: &'a [&'a str],
    pub families: &'a [Family],
    pub allow: Expect<'a>,
}

/// The ports most cases check.
pub const PORTS: &[&str] = &["80/TCP", "81/TCP", "80/UDP", "80/SCTP"];
pub const PORTS_ICMP: &[&str] = &["80/TCP", "81/TCP", "80/UDP", "80/SCTP", "icmp"];
pub const V4: &[Family] = &[Family::V4];
pub const BOTH: &[Family] = &[Family::V4, Family::V6];

/// A running lab with a base set of manifests, to which cases' policies are applied in turn.
pub struct Scenario {
    pub lab: Lab,
    pub manifests: crate::Manifests,
    pub base: PathBuf,
    pub config: Option<PathBuf>,
    pub pods: Vec<String>,
    applied: usize,
}

impl Scenario {
    /// Brings up a lab of `base` (YAML), with the agent config `config` (YAML) if given.
    pub fn up(base: &str, config: Option<&str>) -> Scenario {
        let manifests = crate::Manifests::new();
        let base_file = manifests.write("base.yaml", base);
        let config = config.map(|text| manifests.write("config.yaml", text));
        let lab = Lab::up(&[&base_file], crate::UpOptions { config: config.clone(), ..Default::default() });
        let mut pods: Vec<String> = lab.status()["pods"]
            .as_object()
            .map(|pods| pods.keys().cloned().collect())
            .unwrap_or_default();
        pods.sort();
        Scenario { lab, manifests, base: base_file, config, pods, applied: 0 }
    }

    fn applied_lines(&self) -> usize {
        self.lab.agent_log_json().iter().filter(|line| line["fields"]["message"] == "applied" || line["message"] == "applied").count()
    }

    /// Makes the lab hold the base manifests plus `policies`, and waits (up to 10 s) for the
    /// agent to report that it applied a change. A change that compiles to the same entries
    /// is not reported: the probe polling in [`check`] covers that.
    pub fn set_policies(&mut self, policies: &[String]) {
        self.applied += 1;
        let before = self.applied_lines();
        let file = self.manifests.write(&format!("policies-{}.yaml", self.applied), &documents(policies));
        let files = if policies.is_empty() { vec![self.base.clone()] } else { vec![self.base.clone(), file] };
        self.lab.apply(&files);
        let _ = eventually(Duration::from_secs(10), || (self.applied_lines() > before).then_some(()));
    }

    /// Applies the case and checks every port and family of it.
    pub fn run(&mut self, case: &Case) {
        let start = Instant::now();
        self.set_policies(&case.policies);
        for family in case.families {
            for port in case.ports {
                let want = expected(&self.pods, |from, to| (case.allow)(from, to, port));
                check(&self.lab, self.config.as_deref(), case.name, port, *family, &want);
            }
        }
        eprintln!("case {:?}: ok in {:.1?}", case.name, start.elapsed());
    }

    /// A pod's address in the lab.
    pub fn ip(&self, pod: &str, family: Family) -> std::net::IpAddr {
        self.lab.pod_ip(pod, family)
    }
}

/// `ns` of `ns/pod`.
pub fn ns(pod: &str) -> &str {
    pod.split('/').next().unwrap_or(pod)
}

/// `pod` of `ns/pod`.
pub fn name(pod: &str) -> &str {
    pod.split('/').nth(1).unwrap_or(pod)
}
