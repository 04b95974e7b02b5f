//! `moat explain` on a snapshot of a real cluster (`kubectl get namespaces,pods,networkpolicies
//! -A -o yaml`: a List with managedFields, status, ownerReferences...), and the rejection of
//! objects the agent would reject, with the agent's own message. Needs no root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use moat_integration::{moat_bin, output_within, Manifests, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cluster-snapshot.yaml")
}

fn explain(args: &[&str]) -> Output {
    let mut command = Command::new(moat_bin());
    command.arg("explain").arg("-f").arg(fixture()).args(args).env("RUST_BACKTRACE", "0");
    output_within(&mut command, Duration::from_secs(30))
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.success, "{output}");
    serde_json::from_str(output.stdout.trim()).unwrap_or_else(|err| panic!("not JSON ({err})\n{output}"))
}

const FRONTEND: &str = "shop-web/frontend-7d9c8b6f5d-x2k9p";
const POSTGRES: &str = "shop-db/postgres-0";
const REPORT: &str = "shop-db/report-29371440-abcde";
const WORDPRESS: &str = "blog/wordpress-0";

#[test]
fn explain_names_the_deciding_policies_of_a_real_snapshot() {
    let pair = |from: &str, to: &str, port: &str, family: &str| {
        json(&explain(&["--from", from, "--to", to, "--port", port, "--family", family, "-o", "json"]))
    };
    // The named port `pg` resolves on postgres-0 to 5432.
    for family in ["4", "6"] {
        let allowed = pair(FRONTEND, POSTGRES, "5432", family);
        assert_eq!(allowed["verdict"], "allow", "{allowed}");
        assert!(allowed["reasons"].to_string().contains("allowed by shop-db/db-from-frontend (ingress rule 0)"), "{allowed}");
    }
    let other_port = pair(FRONTEND, POSTGRES, "5433", "4");
    assert_eq!(other_port["verdict"], "deny");
    assert!(other_port["reasons"].to_string().contains("isolated by shop-db/db-from-frontend"), "{other_port}");
    // The batch pod is isolated for egress (DNS only) and not selected by the ingress policy.
    let batch = pair(REPORT, POSTGRES, "5432", "4");
    assert_eq!(batch["verdict"], "deny");
    assert!(batch["reasons"].to_string().contains("isolated by shop-db/default-deny-egress"), "{batch}");
    let dns_port = pair(FRONTEND, REPORT, "53/UDP", "4");
    assert_eq!(dns_port["verdict"], "allow", "{dns_port}");
    // Another tenant: the floor, whatever the policies say.
    let blog = pair(WORDPRESS, POSTGRES, "5432", "4");
    assert_eq!(blog["verdict"], "deny");
    assert!(blog["reasons"].to_string().contains("tenant floor: blog -> shop"), "{blog}");
    // To an address outside the cluster: the batch pod's egress allows DNS only; the
    // frontend's egress is not isolated.
    let outside = pair(REPORT, "198.51.100.7", "443", "4");
    assert_eq!((&outside["verdict"], &outside["to"]), (&serde_json::json!("deny"), &serde_json::json!("198.51.100.7")), "{outside}");
    assert!(outside["reasons"].to_string().contains("isolated by shop-db/default-deny-egress"), "{outside}");
    assert!(!outside["reasons"].to_string().contains("ingress of"), "no ingress side outside: {outside}");
    assert_eq!(pair(FRONTEND, "198.51.100.7", "443", "4")["verdict"], "allow");

    let matrix = json(&explain(&["--matrix", "--port", "5432", "-o", "json"]));
    let results = matrix["results"].as_array().expect("results");
    assert_eq!(results.len(), 4 * 3, "every ordered pair of the 4 pods: {matrix}");
    let allowed: Vec<String> = results
        .iter()
        .filter(|r| r["verdict"] == "allow")
        .map(|r| format!("{} -> {}", r["from"].as_str().unwrap(), r["to"].as_str().unwrap()))
        .collect();
    // Into postgres only from the frontend; shop-db's pods send nothing on 5432 (egress: DNS
    // only); nothing crosses tenants; the frontend reaches the unselected report pod.
    assert_eq!(
        allowed,
        vec![format!("{FRONTEND} -> {POSTGRES}"), format!("{FRONTEND} -> {REPORT}")],
        "{matrix}"
    );
}

/// The first line of the error a command printed (`Error: FILE (document N, item M): KIND
/// NS/NAME: FIELD: MESSAGE`).
fn error_line(output: &Output) -> String {
    output.stderr.lines().find(|line| line.starts_with("Error: ")).unwrap_or_else(|| panic!("no error line\n{output}")).to_string()
}

#[test]
fn explain_rejects_what_the_agent_rejects_with_the_same_message() {
    let snapshot = std::fs::read_to_string(fixture()).unwrap();
    let ingress_peer = "      - namespaceSelector:\n          matchLabels:\n            kubernetes.io/metadata.name: shop-web\n";
    for (case, from, to, field) in [
        (
            "bad ipBlock CIDR",
            ingress_peer,
            "      - ipBlock:\n          cidr: 10.244.0.0/33\n      - namespaceSelector:\n          matchLabels:\n            kubernetes.io/metadata.name: shop-web\n",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        ("unknown protocol", "        protocol: UDP\n", "        protocol: UDPX\n", "spec.egress[0].ports[0].protocol"),
    ] {
        assert!(snapshot.contains(from), "{case}: the fixture changed");
        let manifests = Manifests::new();
        let dir = manifests.dir().join("cluster");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("snapshot.yaml");
        std::fs::write(&file, snapshot.replacen(from, to, 1)).unwrap();

        let mut command = Command::new(moat_bin());
        command.args(["explain", "--matrix", "--port", "80", "-f"]).arg(&dir).env("RUST_BACKTRACE", "0");
        let explained = output_within(&mut command, Duration::from_secs(30));
        assert!(!explained.success, "{case}: explain accepted it\n{explained}");
        let line = error_line(&explained);
        for part in [file.display().to_string(), "NetworkPolicy shop-db/".into(), field.to_string()] {
            assert!(line.contains(&part), "{case}: explain's error does not name {part:?}: {line}");
        }

        // The agent, on the same directory, stops with the same message before touching
        // anything (a config pointing nowhere, in case it did not).
        let config = manifests.write("config.yaml", &format!("instance: np{}\ncgroupRoot: /nonexistent-moat-test\n", std::process::id()));
        let mut command = Command::new(moat_bin());
        command.arg("agent").arg("-f").arg(&dir).arg("--config").arg(&config).env("RUST_BACKTRACE", "0");
        let agent = output_within(&mut command, Duration::from_secs(10));
        assert!(!agent.success && agent.code.is_some(), "{case}: the agent did not stop\n{agent}");
        assert_eq!(error_line(&agent), line, "{case}: explain and the agent word it differently");
        // It may have loaded its programs meanwhile; the pins it made are gone again.
        let pins = Path::new("/sys/fs/bpf/moat").join(format!("np{}", std::process::id()));
        assert!(!pins.exists(), "{case}: the failed agent left {}", pins.display());
    }
}
