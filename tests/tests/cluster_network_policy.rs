//! ClusterNetworkPolicy through the real kernel: the Admin tier overrides NetworkPolicy both
//! ways, `Pass` hands the flow to NetworkPolicy, the Baseline tier decides only for pods no
//! NetworkPolicy isolates, named ports resolve on the destination, the tenant floor stays
//! first, and each change reaches the kernel while the agent runs (files rewritten in place).
//! Deny events name the deciding rule.

use std::time::Duration;

use moat_integration::observe::Observer;
use moat_integration::{documents, eventually, namespace_yaml, pod_yaml, wait_verdict, Lab, Manifests, UpOptions, Verdict};

const CONVERGE: Duration = Duration::from_secs(30);

/// Tenant `a` holds namespaces `front` and `back`, tenant `b` namespace `other`. A
/// NetworkPolicy isolates back/db and lets front in on port 80 only. db's 5432 is named `pg`.
fn cluster() -> String {
    let db = pod_yaml("back", "db", &[("app", "db")], &[(80, "TCP"), (5432, "TCP"), (8080, "TCP")])
        .replace("- containerPort: 5432", "- name: pg\n          containerPort: 5432");
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-front, namespace: back}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: front}}}]\n    ports: [{protocol: TCP, port: 80}]\n";
    documents(&[
        namespace_yaml("front", &[("tenant", "a"), ("team", "front")]),
        namespace_yaml("back", &[("tenant", "a"), ("team", "back")]),
        namespace_yaml("other", &[("tenant", "b"), ("team", "other")]),
        pod_yaml("front", "web", &[("app", "web")], &[(80, "TCP")]),
        db,
        pod_yaml("other", "x", &[("app", "x")], &[(80, "TCP")]),
        policy.to_string(),
    ])
}

fn cnp(name: &str, tier: &str, priority: u16, subject_team: &str, rules: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {{namespaces: {{matchLabels: {{team: {subject_team}}}}}}}\n  ingress:\n{rules}"
    )
}

fn rule(name: &str, action: &str, from_team: &str, protocols: &str) -> String {
    format!("  - {{name: {name}, action: {action}, from: [{{namespaces: {{matchLabels: {{team: {from_team}}}}}}}]{protocols}}}\n")
}

const PORT_80: &str = ", protocols: [{tcp: {destinationPort: {number: 80}}}]";

fn expect(lab: &Lab, what: &str, from: &str, to: &str, port: &str, want: Verdict) {
    wait_verdict(what, want, CONVERGE, || lab.probe(from, to, port));
}

#[test]
fn tiers_order_network_policy_and_stay_below_the_floor() {
    let manifests = Manifests::new();
    let lab = Lab::up(&[manifests.write("cluster.yaml", &cluster())], UpOptions::default());
    let policies = lab.manifests_dir().join("cluster-policies.yaml");
    expect(&lab, "NetworkPolicy alone: front -> db:80", "front/web", "back/db", "80/TCP", Verdict::Allowed);
    expect(&lab, "NetworkPolicy alone: front -> db:5432", "front/web", "back/db", "5432/TCP", Verdict::Denied);

    // Admin Deny beats the NetworkPolicy's allow; Admin Accept on the named port beats its deny.
    let admin = cnp(
        "admin-back",
        "Admin",
        10,
        "back",
        &[rule("no-front-80", "Deny", "front", PORT_80), rule("pg", "Accept", "front", ", protocols: [{destinationNamedPort: pg}]")].concat(),
    );
    let mut denials = Observer::start(&["--lab", lab.name(), "--verdict", "deny", "--pod", "back/db", "--max-events", "1"]);
    std::fs::write(&policies, &admin).expect("writing the policies");
    expect(&lab, "Admin Deny over NetworkPolicy allow", "front/web", "back/db", "80/TCP", Verdict::Denied);
    expect(&lab, "Admin Accept on the named port", "front/web", "back/db", "5432/TCP", Verdict::Allowed);
    let named = eventually(CONVERGE, || {
        lab.probe("front/web", "back/db", "80/TCP");
        denials.exited().then(|| denials.events())
    });
    let events = named.unwrap_or_else(|| panic!("no deny event for back/db; saw {:?}", denials.events()));
    assert_eq!(events[0]["rule"], "cluster-network-policy.admin", "{events:?}");
    let policies_named = events[0]["policies"].to_string();
    assert!(
        policies_named.contains("Admin tier, ClusterNetworkPolicy admin-back (priority 10), rule 0 \\\"no-front-80\\\": Deny"),
        "the event names the rule: {events:?}"
    );

    // A Pass at a higher priority hands port 80 back to NetworkPolicy, which allows it.
    let pass = cnp("pass-front", "Admin", 5, "back", &rule("to-netpol", "Pass", "front", PORT_80));
    std::fs::write(&policies, format!("{admin}---\n{pass}")).expect("writing the policies");
    expect(&lab, "Pass goes to NetworkPolicy", "front/web", "back/db", "80/TCP", Verdict::Allowed);

    // Baseline decides for front/web, which no NetworkPolicy isolates; not for the isolated db.
    let baseline_front = cnp("baseline-front", "Baseline", 1, "front", &rule("no-back", "Deny", "back", ""));
    let baseline_back = cnp("baseline-back", "Baseline", 1, "back", &rule("all-front", "Accept", "front", ""));
    std::fs::write(&policies, [admin.as_str(), &pass, &baseline_front, &baseline_back].join("---\n")).expect("writing the policies");
    expect(&lab, "Baseline Deny where no NetworkPolicy isolates", "back/db", "front/web", "80/TCP", Verdict::Denied);
    expect(&lab, "NetworkPolicy before Baseline Accept", "front/web", "back/db", "8080/TCP", Verdict::Denied);

    // The floor stays first: an Admin Accept from every namespace does not open tenant b.
    let open = cnp("open-back", "Admin", 1, "back", "  - {name: everyone, action: Accept, from: [{namespaces: {}}]}\n");
    std::fs::write(&policies, [admin.as_str(), &pass, &open].join("---\n")).expect("writing the policies");
    expect(&lab, "Admin Accept from all namespaces", "front/web", "back/db", "8080/TCP", Verdict::Allowed);
    expect(&lab, "the floor beneath Admin Accept", "other/x", "back/db", "80/TCP", Verdict::Denied);

    // Gone: NetworkPolicy alone again.
    std::fs::remove_file(&policies).expect("removing the policies");
    expect(&lab, "without policies: NetworkPolicy denies 5432 again", "front/web", "back/db", "5432/TCP", Verdict::Denied);
    expect(&lab, "without policies: front -> db:80", "front/web", "back/db", "80/TCP", Verdict::Allowed);
    expect(&lab, "without policies: back -> front", "back/db", "front/web", "80/TCP", Verdict::Allowed);
}

fn node(name: &str, role: &str, address: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{role: {role}}}}}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {address}}}\n  - {{type: Hostname, address: {name}}}\n")
}

/// A connect from `pod` to `address`:`port`, as the errno it ends with: EPERM when moat
/// refuses it, ECONNREFUSED when it reaches the address (nothing listens there).
fn connect(lab: &Lab, pod: &str, address: &str, port: &str) -> String {
    let attack = moat_integration::guard::attack_bin();
    let output = lab.exec(pod, &[attack.to_str().expect("UTF-8 path"), "connect-tcp", address, port]);
    ["EPERM", "ECONNREFUSED"].into_iter().find(|errno| output.stdout.contains(errno)).map_or_else(|| format!("neither: {output}"), str::to_string)
}

/// `nodes` peers: egress to the addresses of the Nodes a selector picks, read from the Node
/// objects, and changed at runtime by a Node's relabel or new address as by the policy's.
#[test]
fn nodes_peers_match_the_selected_nodes_addresses() {
    let manifests = Manifests::new();
    // Two Nodes need the agent to know which is its own.
    let config = manifests.write("agent.yaml", "nodeName: lab-node\n");
    let lab = Lab::up(&[manifests.write("cluster.yaml", &cluster())], UpOptions { config: Some(config), ..UpOptions::default() });
    // The nodes' addresses live on the lab's bridge, outside the pods' range: a connect there
    // that moat lets through is answered by the bridge's reset.
    let bridge = format!("moat-{}-br", lab.name());
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip").args(["-n", &bridge]).args(args).status().expect("ip");
        assert!(status.success(), "ip -n {bridge} {args:?}");
    };
    ip(&["addr", "add", "192.0.2.10/32", "dev", "br0"]);
    ip(&["addr", "add", "192.0.2.20/32", "dev", "br0"]);
    ip(&["route", "add", "10.250.0.0/16", "dev", "br0"]);
    let nodes = lab.manifests_dir().join("nodes.yaml");
    std::fs::write(&nodes, [node("lab-node", "worker", "192.0.2.10"), node("infra-1", "infra", "192.0.2.20")].join("---\n")).expect("writing the nodes");
    let reach = |address: &str, want: &str| {
        let what = format!("front/web -> {address}:9100");
        let got = eventually(CONVERGE, || Some(connect(&lab, "front/web", address, "9100")).filter(|got| got == want));
        assert_eq!(got.as_deref(), Some(want), "{what}: last saw {}", connect(&lab, "front/web", address, "9100"));
    };
    reach("192.0.2.20", "ECONNREFUSED");

    let policies = lab.manifests_dir().join("cluster-policies.yaml");
    let deny = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: no-infra-exporters}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress:\n  - {name: infra, action: Deny, to: [{nodes: {matchLabels: {role: infra}}}], protocols: [{tcp: {destinationPort: {number: 9100}}}]}\n";
    std::fs::write(&policies, deny).expect("writing the policies");
    reach("192.0.2.20", "EPERM");
    reach("192.0.2.10", "ECONNREFUSED");
    expect(&lab, "pods are not nodes", "front/web", "back/db", "80/TCP", Verdict::Allowed);

    // The worker relabelled infra: its address is selected too, at runtime.
    std::fs::write(&nodes, [node("lab-node", "infra", "192.0.2.10"), node("infra-1", "infra", "192.0.2.20")].join("---\n")).expect("writing the nodes");
    reach("192.0.2.10", "EPERM");
    // infra-1 moves to another address: the old one is no node's any more.
    std::fs::write(&nodes, [node("lab-node", "worker", "192.0.2.10"), node("infra-1", "infra", "192.0.2.30")].join("---\n")).expect("writing the nodes");
    reach("192.0.2.20", "ECONNREFUSED");
    reach("192.0.2.10", "ECONNREFUSED");
    std::fs::remove_file(&policies).expect("removing the policies");
}
