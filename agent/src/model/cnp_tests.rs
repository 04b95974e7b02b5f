//! Strict parsing of ClusterNetworkPolicy: what the API accepts is read, anything else is an
//! error naming the field.

use super::*;

fn parse(spec: &str) -> Result<ClusterNetworkPolicy, FieldError> {
    let value: serde_json::Value = serde_yaml::from_str(spec).expect("test YAML");
    ClusterNetworkPolicy::parse("p", Some(&value))
}

fn error(spec: &str) -> String {
    let (field, message) = parse(spec).expect_err("should be refused");
    format!("{field}: {message}")
}

#[test]
fn every_peer_and_port_form_is_read() {
    let policy = parse(
        "tier: Admin\npriority: 7\nsubject:\n  pods:\n    namespaceSelector: {matchLabels: {tenant: a}}\n    podSelector: {}\n\
         ingress:\n- name: from-b\n  action: Deny\n  from:\n  - namespaces: {matchLabels: {tenant: b}}\n  protocols:\n  - tcp: {destinationPort: {number: 80}}\n  - udp: {destinationPort: {range: {start: 5000, end: 5010}}}\n  - destinationNamedPort: http\n\
         egress:\n- action: Pass\n  to:\n  - networks: [10.0.0.0/8, 'fd00::/8']\n  - nodes: {}\n  protocols:\n  - sctp: {destinationPort: {number: 9}}\n",
    )
    .unwrap();
    assert_eq!((policy.tier, policy.priority), (Tier::Admin, 7));
    assert!(policy.subject.pods.is_some());
    let ingress = &policy.ingress[0];
    assert_eq!((ingress.name.as_deref(), ingress.action), (Some("from-b"), Action::Deny));
    assert_eq!(
        ingress.ports,
        Some(vec![
            PortMatch::Ports { protocol: Protocol::Tcp, start: 80, end: 80 },
            PortMatch::Ports { protocol: Protocol::Udp, start: 5000, end: 5010 },
            PortMatch::Named("http".into()),
        ])
    );
    let egress = &policy.egress[0];
    assert_eq!((egress.name.as_deref(), egress.action), (None, Action::Pass));
    assert!(matches!(&egress.peers[0], Peer::Networks(cidrs) if cidrs.len() == 2));
    assert!(matches!(&egress.peers[1], Peer::Nodes(_)));
}

#[test]
fn what_the_api_refuses_is_an_error_naming_the_field() {
    let base = "tier: Admin\npriority: 1\nsubject: {namespaces: {}}\n";
    for (spec, expected) in [
        ("tier: Admin\npriority: 1\n".to_string(), "spec: missing field `subject`"),
        ("tier: Middle\npriority: 1\nsubject: {namespaces: {}}\n".into(), "spec.tier: \"Middle\" is not Admin or Baseline"),
        ("tier: Admin\npriority: 1001\nsubject: {namespaces: {}}\n".into(), "spec.priority: 1001 is not in 0..=1000"),
        ("tier: Admin\npriority: 1\nsubject: {}\n".into(), "spec.subject: exactly one of namespaces or pods"),
        ("tier: Admin\npriority: 1\nsubject: {namespaces: {}}\nfoo: 1\n".into(), "spec.foo: unknown field `foo`"),
        (format!("{base}ingress:\n- action: Allow\n  from: [{{namespaces: {{}}}}]\n"), "spec.ingress[0].action: \"Allow\" is not Accept, Deny or Pass"),
        (format!("{base}ingress:\n- action: Deny\n"), "spec.ingress[0].from: missing"),
        (format!("{base}ingress:\n- action: Deny\n  from: []\n"), "spec.ingress[0].from: 0 peers"),
        (format!("{base}ingress:\n- action: Deny\n  from: [{{networks: [10.0.0.0/8]}}]\n"), "spec.ingress[0].from[0]: ingress peers are namespaces or pods only"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{namespaces: {{}}, nodes: {{}}}}]\n"), "spec.egress[0].to[0]: exactly one of"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{networks: [10.0.0.300/8]}}]\n"), "spec.egress[0].to[0].networks[0]: \"10.0.0.300/8\""),
        (format!("{base}egress:\n- action: Accept\n  to: [{{domainNames: [example.com]}}]\n"), "spec.egress[0].to[0].domainNames: not supported by moat"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{pods: {{namespaceSelector: {{}}}}}}]\n"), "spec.egress[0].to[0].pods: missing field `podSelector`"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{namespaces: {{matchExpressions: [{{key: a, operator: Near}}]}}}}]\n"), "spec.egress[0].to[0].namespaces:"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{networks: [10.0.0.0/8]}}]\n  protocols: [{{destinationNamedPort: http}}]\n"), "spec.egress[0].protocols: destinationNamedPort cannot be used with networks or nodes"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{namespaces: {{}}}}]\n  protocols: [{{tcp: {{}}}}]\n"), "spec.egress[0].protocols[0].tcp.destinationPort: missing"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{namespaces: {{}}}}]\n  protocols: [{{tcp: {{destinationPort: {{number: 0}}}}}}]\n"), "spec.egress[0].protocols[0].tcp.destinationPort.number: 0 is not a port"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{namespaces: {{}}}}]\n  protocols: [{{udp: {{destinationPort: {{range: {{start: 90, end: 80}}}}}}}}]\n"), "spec.egress[0].protocols[0].udp.destinationPort.range: start 90 must be less than end 80"),
        (format!("{base}egress:\n- action: Deny\n  to: [{{namespaces: {{}}}}]\n  protocols: [{{tcp: {{destinationPort: {{number: 80}}}}, udp: {{destinationPort: {{number: 80}}}}}}]\n"), "spec.egress[0].protocols[0]: exactly one of tcp, udp, sctp"),
        (format!("{base}egress:\n- action: Deny\n  from: [{{namespaces: {{}}}}]\n"), "spec.egress[0].from: not a field of egress rules"),
    ] {
        let got = error(&spec);
        assert!(got.starts_with(expected), "{spec}\nwant: {expected}\ngot:  {got}");
    }
    assert_eq!(ClusterNetworkPolicy::parse("p", None).unwrap_err().0, "spec");
}
