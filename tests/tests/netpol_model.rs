//! NetworkPolicy semantics on the three-namespace model (x, y, z × a, b, c, every pod serving
//! 80 and 81 over TCP, UDP and — declared only — SCTP), after the upstream e2e netpol suite.
//! Every case's matrix is written here from the Kubernetes spec (API reference and the
//! NetworkPolicy concept page), and must equal both `moat explain --matrix` on the lab's
//! manifests and `moat lab probe --matrix` through the real kernel.
//!
//! One lab per test function; the cases of a function are applied to it in turn with
//! `moat lab apply`. SCTP is checked through explain only: this kernel cannot serve it.

use moat_integration::netpol::{
    model, name, ns, policy, Case, Scenario, BOTH, PORTS, PORTS_ICMP, TENANT, V4,
};
use moat_integration::Family;

fn one_tenant() -> String {
    model(|_| Some(TENANT.to_string()))
}

fn is_tcp(port: &str) -> bool {
    port.ends_with("/TCP")
}

#[test]
fn isolation_and_policy_types() {
    let mut s = Scenario::up(&one_tenant(), None);
    let cases = vec![
        Case {
            name: "no policy: everything allowed in one tenant", policies: vec![], ports: PORTS_ICMP, families: BOTH, allow: Box::new(|_, _, _| true) },
        Case {
            name: "deny-all ingress in x",
            policies: vec![policy("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")],
            ports: PORTS_ICMP,
            families: BOTH,
            allow: Box::new(|_, to, _| ns(to) != "x"),
        },
        Case {
            name: "deny-all egress in x (policyTypes: [Egress], no rules)",
            policies: vec![policy("x", "deny-egress", "  podSelector: {}\n  policyTypes: [Egress]\n")],
            ports: PORTS_ICMP,
            families: V4,
            allow: Box::new(|from, _, _| ns(from) != "x"),
        },
        Case {
            name: "allow-all ingress and egress in x on top of deny-all",
            policies: vec![
                policy("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"),
                policy("x", "allow-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{}]\n  egress: [{}]\n"),
            ],
            ports: PORTS_ICMP,
            families: V4,
            allow: Box::new(|_, _, _| true),
        },
        Case {
            // policyTypes defaults to [Ingress, Egress] when there are egress rules: x is isolated
            // for ingress (no rules: nothing in) and may only send to its own namespace.
            name: "only an egress section, no policyTypes: ingress is isolated too",
            policies: vec![policy("x", "egress-only", "  podSelector: {}\n  egress: [{to: [{podSelector: {}}]}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, _| ns(to) != "x" && ns(from) != "x"),
        },
        Case {
            // `egress: []` is not "egress rules present": the default stays [Ingress].
            name: "empty egress list, no policyTypes: ingress-only deny",
            policies: vec![policy("x", "empty-egress", "  podSelector: {matchLabels: {pod: a}}\n  egress: []\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|_, to, _| to != "x/a"),
        },
        Case {
            name: "ingress: [] denies all ingress; ingress: [{}] allows all",
            policies: vec![
                policy("x", "empty", "  podSelector: {matchLabels: {pod: a}}\n  ingress: []\n"),
                policy("y", "all", "  podSelector: {}\n  ingress: [{}]\n"),
            ],
            ports: PORTS,
            families: V4,
            allow: Box::new(|_, to, _| to != "x/a"),
        },
        Case {
            // Rules of a direction not in policyTypes are ignored.
            name: "policyTypes: [Egress] ignores the ingress rules it carries",
            policies: vec![policy("x", "egress-typed", "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {pod: nobody}}}]}]\n  egress: [{}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|_, _, _| true),
        },
        Case {
            name: "podSelector of the policy: only x/a isolated",
            policies: vec![policy("x", "deny-a", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n")],
            ports: PORTS_ICMP,
            families: V4,
            allow: Box::new(|from, to, _| from != "x/a" && to != "x/a"),
        },
    ];
    for case in &cases {
        s.run(case);
    }
}

#[test]
fn peers_and_selectors() {
    let mut s = Scenario::up(&one_tenant(), None);
    let cases = vec![
        Case {
            name: "podSelector-only peer means the policy's namespace",
            policies: vec![policy("x", "from-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n")],
            ports: PORTS_ICMP,
            families: BOTH,
            allow: Box::new(|from, to, _| to != "x/a" || from == "x/b"),
        },
        Case {
            name: "namespaceSelector-only peer: every pod of the namespace",
            policies: vec![policy("x", "from-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, _| to != "x/a" || ns(from) == "y"),
        },
        Case {
            name: "namespaceSelector and podSelector in one peer: both must match",
            policies: vec![policy("x", "from-yb", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, _| to != "x/a" || from == "y/b"),
        },
        Case {
            name: "namespaceSelector and podSelector as two peers: either matches",
            policies: vec![policy("x", "from-y-or-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, _| to != "x/a" || ns(from) == "y" || from == "x/b"),
        },
        Case {
            name: "matchExpressions In / NotIn",
            policies: vec![policy("x", "expr", "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}\n      podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, _| ns(to) != "x" || (ns(from) != "y" && name(from) != "b")),
        },
        Case {
            name: "matchExpressions Exists / DoesNotExist, and the kubernetes.io/metadata.name label",
            policies: vec![
                policy("x", "exists", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}, {key: kubernetes.io/metadata.name, operator: In, values: [z]}]}\n      podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: missing, operator: DoesNotExist}, {key: pod, operator: NotIn, values: [b]}]}\n"),
                policy("y", "none", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}\n"),
            ],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, _| match to {
                "x/a" => from == "z/a" || from == "z/c",
                "y/a" => false,
                _ => true,
            }),
        },
        Case {
            name: "egress peers: x/a may reach namespace y only",
            policies: vec![policy("x", "to-y", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n")],
            ports: PORTS_ICMP,
            families: BOTH,
            allow: Box::new(|from, to, _| from != "x/a" || ns(to) == "y"),
        },
        Case {
            name: "empty namespaceSelector: all namespaces; empty podSelector: all pods of the namespace",
            policies: vec![
                policy("x", "all-ns", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]\n"),
                policy("y", "own-ns", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n"),
            ],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, _| match to {
                "x/a" => name(from) == "c",
                "y/a" => ns(from) == "y",
                _ => true,
            }),
        },
    ];
    for case in &cases {
        s.run(case);
    }
}

#[test]
fn ports_and_protocols() {
    let mut s = Scenario::up(&one_tenant(), None);
    let cases = vec![
        Case {
            name: "port without protocol is TCP",
            policies: vec![policy("x", "tcp80", "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n")],
            ports: PORTS_ICMP,
            families: BOTH,
            allow: Box::new(|_, to, port| ns(to) != "x" || port == "80/TCP"),
        },
        Case {
            name: "UDP port",
            policies: vec![policy("x", "udp80", "  podSelector: {}\n  ingress: [{ports: [{protocol: UDP, port: 80}]}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|_, to, port| ns(to) != "x" || port == "80/UDP"),
        },
        Case {
            name: "protocol without port: every port of it",
            policies: vec![policy("x", "udp", "  podSelector: {}\n  ingress: [{ports: [{protocol: UDP}, {protocol: SCTP, port: 80}]}]\n")],
            ports: &["80/TCP", "80/UDP", "81/UDP", "80/SCTP", "81/SCTP"],
            families: V4,
            allow: Box::new(|_, to, port| ns(to) != "x" || port.ends_with("/UDP") || port == "80/SCTP"),
        },
        Case {
            name: "named ports on ingress resolve on the destination pod",
            policies: vec![policy("x", "named", "  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp}, {protocol: UDP, port: serve-80-udp}, {protocol: SCTP, port: serve-81-sctp}]}]\n")],
            ports: &["80/TCP", "81/TCP", "80/UDP", "81/UDP", "80/SCTP", "81/SCTP"],
            families: V4,
            allow: Box::new(|_, to, port| ns(to) != "x" || matches!(port, "81/TCP" | "80/UDP" | "81/SCTP")),
        },
        Case {
            // The name exists, but for UDP: with the default protocol (TCP) it resolves to nothing.
            name: "named port with the wrong protocol matches nothing",
            policies: vec![policy("x", "mismatch", "  podSelector: {}\n  ingress: [{ports: [{port: serve-80-udp}]}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|_, to, _| ns(to) != "x"),
        },
        Case {
            name: "named ports on egress resolve on the peer",
            policies: vec![policy("x", "egress-named", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-81-tcp}, {protocol: UDP, port: serve-80-udp}]}]\n")],
            ports: PORTS,
            families: BOTH,
            allow: Box::new(|from, _, port| from != "x/a" || matches!(port, "81/TCP" | "80/UDP")),
        },
        Case {
            name: "endPort range 79-80 TCP, 81-90 UDP",
            policies: vec![policy("x", "range", "  podSelector: {}\n  ingress: [{ports: [{port: 79, endPort: 80}, {protocol: UDP, port: 81, endPort: 90}]}]\n")],
            ports: &["80/TCP", "81/TCP", "80/UDP", "81/UDP"],
            families: V4,
            allow: Box::new(|_, to, port| ns(to) != "x" || matches!(port, "80/TCP" | "81/UDP")),
        },
        Case {
            name: "endPort range on egress covering both ports",
            policies: vec![policy("y", "range-egress", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {}}], ports: [{port: 1, endPort: 65535}]}]\n")],
            ports: PORTS_ICMP,
            families: V4,
            allow: Box::new(|from, _, port| ns(from) != "y" || is_tcp(port)),
        },
        Case {
            name: "ports and peers in one rule: both must match",
            policies: vec![policy("x", "peer-port", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81}]}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, port| ns(to) != "x" || (ns(from) == "y" && port == "81/TCP")),
        },
    ];
    for case in &cases {
        s.run(case);
    }
}

#[test]
fn policies_add_up_and_both_ends_must_allow() {
    let mut s = Scenario::up(&one_tenant(), None);
    let cases = vec![
        Case {
            name: "several policies add up",
            policies: vec![
                policy("x", "deny", "  podSelector: {}\n  ingress: []\n"),
                policy("x", "from-y", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"),
                policy("x", "port-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81}]}]\n"),
            ],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, port| ns(to) != "x" || ns(from) == "y" || (to == "x/a" && port == "81/TCP")),
        },
        Case {
            name: "egress of the source and ingress of the destination are both needed",
            policies: vec![
                policy("y", "egress-to-xa", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]\n"),
                policy("x", "xa-from-z", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n"),
            ],
            ports: PORTS,
            families: BOTH,
            allow: Box::new(|from, to, _| {
                let egress = ns(from) != "y" || to == "x/a";
                let ingress = to != "x/a" || ns(from) == "z";
                egress && ingress
            }),
        },
        Case {
            name: "egress allowed only to x/a; x/a lets y in",
            policies: vec![
                policy("y", "egress-to-xa", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]\n"),
                policy("x", "xa-from-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"),
            ],
            ports: PORTS,
            families: V4,
            allow: Box::new(|from, to, _| {
                let egress = ns(from) != "y" || to == "x/a";
                let ingress = to != "x/a" || ns(from) == "y";
                egress && ingress
            }),
        },
    ];
    for case in &cases {
        s.run(case);
    }
}

#[test]
fn ip_blocks_with_except() {
    let mut s = Scenario::up(&one_tenant(), None);
    let v4 = |pod: &str| s.ip(pod, Family::V4);
    let v6 = |pod: &str| s.ip(pod, Family::V6);
    // The lab's ranges: 10.250.0.0/16 and fd6d:6f61:7400::/64.
    let ingress = policy(
        "x",
        "blocks",
        &format!(
            "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.250.0.0/16, except: [{}/32]}}\n    - ipBlock: {{cidr: 'fd6d:6f61:7400::/64', except: ['{}/128']}}\n",
            v4("y/b"),
            v6("z/c")
        ),
    );
    let egress = policy(
        "x",
        "egress-block",
        &format!("  podSelector: {{matchLabels: {{pod: b}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {}/32}}}}, {{ipBlock: {{cidr: '{}/128'}}}}], ports: [{{port: 80}}, {{protocol: UDP, port: 80}}]}}]\n", v4("y/a"), v6("y/a")),
    );
    let v4_only = policy(
        "y",
        "v4-only",
        "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]\n",
    );
    let cases = [
        (
            "ipBlock with except (IPv4)",
            Family::V4,
            Box::new(|from: &str, to: &str, port: &str| {
                let into_xa = to != "x/a" || from != "y/b";
                let from_xb = from != "x/b" || (to == "y/a" && matches!(port, "80/TCP" | "80/UDP"));
                // y/c admits every IPv4 peer (0.0.0.0/0).
                into_xa && from_xb
            }) as Box<dyn Fn(&str, &str, &str) -> bool>,
        ),
        (
            "ipBlock with except (IPv6); an IPv4 block admits no IPv6 peer",
            Family::V6,
            Box::new(|from: &str, to: &str, port: &str| {
                let into_xa = to != "x/a" || from != "z/c";
                let from_xb = from != "x/b" || (to == "y/a" && matches!(port, "80/TCP" | "80/UDP"));
                let into_yc = to != "y/c";
                into_xa && from_xb && into_yc
            }),
        ),
    ];
    for (name, family, allow) in cases {
        let case = Case {
            name,
            policies: vec![ingress.clone(), egress.clone(), v4_only.clone()],
            ports: PORTS_ICMP,
            families: &[family],
            allow,
        };
        s.run(&case);
    }
}

#[test]
fn tenant_floor_beneath_policy() {
    // z is another tenant: no policy can open x/y <-> z.
    let base = model(|ns| Some(if ns == "z" { "other".into() } else { TENANT.into() }));
    let mut s = Scenario::up(&base, None);
    let same_tenant = |from: &str, to: &str| (ns(from) == "z") == (ns(to) == "z");
    let allow_all = |namespace: &str| {
        policy(namespace, "allow-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{}]\n  egress: [{}]\n")
    };
    let cases = vec![
        Case {
            name: "floor without policies", policies: vec![], ports: PORTS_ICMP, families: BOTH, allow: Box::new(|f, t, _| same_tenant(f, t)) },
        Case {
            name: "allow-all everywhere cannot open the floor",
            policies: vec![allow_all("x"), allow_all("y"), allow_all("z")],
            ports: PORTS_ICMP,
            families: V4,
            allow: Box::new(|f, t, _| same_tenant(f, t)),
        },
        Case {
            name: "a policy naming the other tenant's namespace cannot open the floor",
            policies: vec![
                policy("x", "from-z", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n"),
                policy("z", "to-x", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}}]}]\n"),
            ],
            ports: PORTS,
            families: V4,
            allow: Box::new(|f, t, _| same_tenant(f, t) && ns(t) != "x" && ns(f) != "z"),
        },
    ];
    for case in &cases {
        s.run(case);
    }
}

#[test]
fn default_deny_in_tenant() {
    let mut s = Scenario::up(&one_tenant(), Some("defaultDenyInTenant: true\n"));
    let cases = vec![
        Case {
            name: "defaultDenyInTenant without policies denies everything", policies: vec![], ports: PORTS_ICMP, families: BOTH, allow: Box::new(|_, _, _| false) },
        Case {
            // Like a default-deny policy in both directions everywhere: x/a's ingress lets x/b
            // in, but x/b's egress is selected by nothing, so still denied.
            name: "an ingress policy alone is not enough",
            policies: vec![policy("x", "a-from-x", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n")],
            ports: PORTS,
            families: V4,
            allow: Box::new(|_, _, _| false),
        },
        Case {
            name: "ingress and egress policies open exactly their flows",
            policies: vec![
                policy("x", "a-from-x", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n"),
                policy("x", "egress", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]\n"),
            ],
            ports: PORTS,
            families: BOTH,
            allow: Box::new(|from, to, _| to == "x/a" && ns(from) == "x"),
        },
    ];
    for case in &cases {
        s.run(case);
    }
}

/// ICMP echo from y into x isolated for ingress: the destination's kernel answers echo
/// requests without a socket, so only the tc program on x's interfaces can deny them.
#[test]
fn icmp_echo_into_an_ingress_isolated_pod() {
    let mut s = Scenario::up(&one_tenant(), None);
    s.run(&Case {
        name: "ICMP echo with x isolated for ingress",
        policies: vec![policy("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")],
        ports: &["icmp"],
        families: BOTH,
        allow: Box::new(|_, to, _| ns(to) != "x"),
    });
}
