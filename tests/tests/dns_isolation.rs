//! Tenant DNS isolation on the real kernel: a CoreDNS-like server (`moat-dns serve`) in the
//! lab's cluster-DNS pod, questions asked from tenant pods over UDP and TCP, IPv4 and IPv6. Own,
//! same-tenant and shared names are answered; other tenants' names, and reverse names of their
//! pods' and Services' addresses,
//! wildcards and compression tricks are refused at once (the UDP send fails with EPERM; over
//! TCP the resolver reads an NXDOMAIN answer the sk_msg program made of its question) with a
//! `dns.cross-tenant` event;
//! external names and unreadable messages pass untouched.

use std::net::IpAddr;
use std::time::Duration;

use moat_integration::dns::{query, DnsServer};
use moat_integration::{documents, namespace_yaml, pod_yaml, service_yaml, Family, Lab, Manifests, UpOptions};

const DNS: &str = "kube-system/dns";

/// (namespace, name, ClusterIPs): in the model (the manifests) and in the server's data alike.
const SERVICES: [(&str, &str, [&str; 2]); 4] = [
    ("a1", "web", ["10.96.0.11", "fd00:96::11"]),
    ("a2", "db", ["10.96.0.12", "fd00:96::12"]),
    ("b1", "db", ["10.96.0.21", "fd00:96::21"]),
    ("kube-system", "kube-dns", ["10.96.0.10", "fd00:96::10"]),
];

fn cluster() -> String {
    let services = SERVICES.iter().map(|(namespace, name, ips)| service_yaml(namespace, name, ips));
    let objects = [
        namespace_yaml("kube-system", &[]),
        pod_yaml("kube-system", "dns", &[("k8s-app", "kube-dns")], &[]),
        namespace_yaml("a1", &[("tenant", "a")]),
        namespace_yaml("a2", &[("tenant", "a")]),
        namespace_yaml("b1", &[("tenant", "b")]),
        pod_yaml("a1", "p1", &[], &[]),
        pod_yaml("a2", "p2", &[], &[]),
        pod_yaml("b1", "p4", &[], &[]),
    ];
    documents(&objects.into_iter().chain(services).collect::<Vec<_>>())
}

/// The server's view: a Service per namespace (ClusterIPs of both families) and the pods.
fn server_data(lab: &Lab) -> String {
    let pods: Vec<serde_json::Value> = ["a1/p1", "a2/p2", "b1/p4", DNS]
        .iter()
        .flat_map(|pod| Family::BOTH.map(|family| (pod.split('/').next().unwrap_or_default(), lab.pod_ip(pod, family))))
        .map(|(namespace, ip)| serde_json::json!({"namespace": namespace, "ip": ip}))
        .collect();
    serde_json::json!({
        "zone": "cluster.local",
        "services": SERVICES.iter().map(|(namespace, name, ips)| serde_json::json!({"name": name, "namespace": namespace, "ips": ips})).collect::<Vec<_>>(),
        "pods": pods,
    })
    .to_string()
}

fn outcome(reply: &serde_json::Value) -> String {
    match reply["outcome"].as_str() {
        // Two pipelined questions: both rcodes, sorted (moat's answer may come first).
        Some("answer") if reply["rcodes"].as_array().is_some_and(|r| r.len() > 1) => {
            let mut rcodes: Vec<&str> = reply["rcodes"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
            rcodes.sort_unstable();
            rcodes.join("+")
        }
        // AA clear: made by moat's sk_msg program (the lab's server sets AA).
        Some("answer") if reply["authoritative"] == false => format!("{}/noaa", reply["rcode"].as_str().unwrap_or("?")),
        Some("answer") => format!("{} {}", reply["rcode"].as_str().unwrap_or("?"), reply["answers"]),
        Some("send-error") => format!("send-error {}", reply["errno"].as_str().unwrap_or("?")),
        other => format!("{other:?}"),
    }
}

#[test]
fn tenants_resolve_only_their_own_and_shared_names() {
    let manifests = Manifests::new();
    let file = manifests.write("cluster.yaml", &cluster());
    let lab = Lab::up(&[file], UpOptions::default());
    let data = manifests.write("dns.json", &server_data(&lab));
    let _server = DnsServer::start(&lab, DNS, &data);

    // (from, name, type, expected outcome): answers as the server gives them, or EPERM.
    let cases: &[(&str, &str, &str, &str)] = &[
        ("a1/p1", "web.a1.svc.cluster.local", "A", "NOERROR 1"),
        ("a1/p1", "db.a2.svc.cluster.local", "AAAA", "NOERROR 1"),
        ("a1/p1", "kube-dns.kube-system.svc.cluster.local", "A", "NOERROR 1"),
        ("a1/p1", "nosuch.b9.svc.cluster.local", "A", "NXDOMAIN 0"),
        ("a1/p1", "example.com", "A", "NXDOMAIN 0"),
        ("b1/p4", "db.b1.svc.cluster.local", "A", "NOERROR 1"),
        ("b1/p4", "_tcp.db.b1.svc.cluster.local", "SRV", "NOERROR 1"),
        ("a1/p1", "db.b1.svc.cluster.local", "A", "send-error EPERM"),
        ("a1/p1", "DB.B1.Svc.Cluster.LOCAL", "AAAA", "send-error EPERM"),
        ("a1/p1", "b1.svc.cluster.local", "TXT", "send-error EPERM"),
        ("a1/p1", "web.a1.svc.cluster.local.b1.svc.cluster.local", "A", "send-error EPERM"),
        ("b1/p4", "web.a1.svc.cluster.local", "ANY", "send-error EPERM"),
        ("b1/p4", "*.*.svc.cluster.local", "SRV", "send-error EPERM"),
        ("b1/p4", "any.any.svc.cluster.local", "SRV", "send-error EPERM"),
        ("a1/p1", "*.a1.svc.cluster.local", "A", "send-error EPERM"),
    ];
    for family in Family::BOTH {
        let server = lab.pod_ip(DNS, family);
        let mut wrong = Vec::new();
        let mut slowest_refusal = 0f64;
        for (from, name, qtype, want) in cases {
            // Over TCP the same, refused by the sk_msg program: answered NXDOMAIN at once.
            let over_tcp = want.replace("send-error EPERM", "NXDOMAIN/noaa");
            let refusal = want.starts_with("send-error");
            for (transport, want) in [(&[][..], *want), (&["--tcp"][..], over_tcp.as_str())] {
                let args = [&["--type", *qtype][..], transport].concat();
                let reply = query(&lab, from, server, name, &args);
                let got = outcome(&reply);
                if got != want {
                    wrong.push(format!("{from} asks {name} {qtype} {transport:?}: got {got}, want {want}"));
                }
                if refusal {
                    slowest_refusal = slowest_refusal.max(reply["ms"].as_f64().unwrap_or(f64::MAX));
                }
            }
        }
        // The TCP stream followed message by message: a question whose length prefix comes in
        // a send of its own, two pipelined in one send, one longer than what is read of it.
        let long_other = long_question("026462026231");
        let long_own = long_question("03776562026131");
        let stream_cases: &[(&str, &[&str], &str)] = &[
            ("db.b1.svc.cluster.local", &["--split"], "NXDOMAIN/noaa"),
            ("web.a1.svc.cluster.local", &["--split"], "NOERROR 1"),
            ("web.a1.svc.cluster.local", &["--then", "db.a2.svc.cluster.local"], "NOERROR+NOERROR"),
            ("web.a1.svc.cluster.local", &["--then", "db.b1.svc.cluster.local"], "NOERROR+NXDOMAIN/noaa"),
            // A refused question with more after it in the same send: the whole send fails
            // (Linux 6.1 would redirect the rest with the answer, see `answer_refused`).
            ("db.b1.svc.cluster.local", &["--then", "web.a1.svc.cluster.local"], "send-error EACCES"),
            ("db.b1.svc.cluster.local", &["--then", "db.b1.svc.cluster.local"], "send-error EACCES"),
            ("-", &["--raw", &long_other], "NXDOMAIN/noaa"),
            ("-", &["--raw", &long_own], "NOERROR 1"),
            ("-", &["--raw", &long_other, "--split"], "NXDOMAIN/noaa"),
        ];
        for (name, extra, want) in stream_cases {
            let args = [&["--tcp"][..], extra].concat();
            let reply = query(&lab, "a1/p1", server, name, &args);
            let got = outcome(&reply);
            if got != *want {
                wrong.push(format!("a1/p1 asks {name} over TCP {extra:?}: got {got}, want {want}"));
            }
            if want.contains("noaa") || want.starts_with("send-error") {
                slowest_refusal = slowest_refusal.max(reply["ms"].as_f64().unwrap_or(f64::MAX));
            }
        }
        // Reverse names (PTR) of pods' addresses: another tenant's refused.
        for (from, target, want) in [("a1/p1", "b1/p4", "send-error EPERM"), ("a1/p1", "a2/p2", "NOERROR 1"), ("b1/p4", DNS, "NOERROR 1"), ("b1/p4", "a1/p1", "send-error EPERM")] {
            let address = lab.pod_ip(target, family).to_string();
            let got = outcome(&query(&lab, from, server, &address, &["--type", "PTR"]));
            if got != want {
                wrong.push(format!("{from} asks PTR of {target} ({address}): got {got}, want {want}"));
            }
        }
        // And of Services' ClusterIPs: another tenant's refused, a shared namespace's answered.
        let index = if family == Family::V4 { 0 } else { 1 };
        for (from, service, want) in [("a1/p1", 2, "send-error EPERM"), ("a1/p1", 1, "NOERROR 1"), ("b1/p4", 3, "NOERROR 1"), ("b1/p4", 0, "send-error EPERM"), ("b1/p4", 2, "NOERROR 1")] {
            let (namespace, name, ips) = SERVICES[service];
            let reply = query(&lab, from, server, ips[index], &["--type", "PTR"]);
            let got = outcome(&reply);
            if got != want {
                wrong.push(format!("{from} asks PTR of Service {namespace}/{name} ({}): got {got}, want {want}", ips[index]));
            }
            if got.starts_with("send-error") {
                slowest_refusal = slowest_refusal.max(reply["ms"].as_f64().unwrap_or(f64::MAX));
            }
        }
        assert!(wrong.is_empty(), "over {family:?}:\n{}", wrong.join("\n"));
        // A refusal is the send failing or an answer made on the node: far below any
        // resolver's timeout (glibc: 5 s).
        assert!(slowest_refusal < 1000.0, "{family:?}: a refusal took {slowest_refusal} ms");
        eprintln!("{family:?}: slowest refusal {slowest_refusal:.2} ms");
    }

    // Wildcards are refused for every pod, the DNS server's own included; and a question
    // is decided whatever resolver address it goes to (a node-local cache, a sidecar).
    let server = lab.pod_ip(DNS, Family::V4);
    let all = query(&lab, DNS, server, "*.*.svc.cluster.local", &["--type", "SRV"]);
    assert_eq!(outcome(&all), "send-error EPERM", "wildcard from the DNS pod: {all}");
    let local = query(&lab, "a1/p1", IpAddr::from([127, 0, 0, 1]), "db.b1.svc.cluster.local", &["--timeout-ms", "500"]);
    assert_eq!(outcome(&local), "send-error EPERM", "to a loopback resolver: {local}");

    // `moat status` says the mode, and DNS_SERVICES holds the four Services' eight ClusterIPs.
    let status = moat_status(&lab);
    assert_eq!((status["dns"]["isolation"].as_str(), status["dns"]["inspected"].as_str()), (Some("block"), Some("UDP and TCP")), "{status}");
    assert_eq!(status["dns"]["zones"], serde_json::json!(["cluster.local"]), "{status}");
    let services = status["kernel"]["maps"].as_array().into_iter().flatten().find(|m| m["map"] == "DNS_SERVICES").cloned();
    assert_eq!(services.map(|m| m["entries"].clone()), Some(serde_json::json!(8)), "{status}");

    // The deny event names the querier, the queried namespace's tenant and the rule.
    let want = [("rule", "dns.cross-tenant"), ("verdict", "deny"), ("src_namespace", "a1"), ("src_pod", "p1"), ("dst_tenant", "b"), ("protocol", "UDP")];
    wait_event(&lab, &want);
    let over_tcp = [("rule", "dns.cross-tenant"), ("verdict", "deny"), ("src_pod", "p1"), ("dst_tenant", "b"), ("protocol", "TCP")];
    wait_event(&lab, &over_tcp);
}

/// A query (hex) for `<labels>.svc.cluster.local` A (`labels`: the wire form of the labels
/// before `svc`) with an EDNS padding option that makes it longer than the 270 bytes the TCP
/// program reads of a message.
fn long_question(labels: &str) -> String {
    let header = "abcd01000001000000000001";
    let question = format!("{labels}0373766307636c7573746572056c6f63616c0000010001");
    // OPT record: root name, type 41, payload 4096, no flags, 304 bytes of data: padding
    // option (12) of 300 zero bytes.
    let opt = format!("0000291000000000000130000c012c{}", "00".repeat(300));
    format!("{header}{question}{opt}")
}

/// `moat status -o json` of the lab's agent.
fn moat_status(lab: &Lab) -> serde_json::Value {
    let output = std::process::Command::new(lab.moat()).args(["status", "--lab", lab.name(), "-o", "json"]).output().expect("running moat status");
    assert!(output.status.success(), "moat status: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("moat status is not JSON ({e})"))
}

/// Waits for an event to port 53 with every field of `want` in the agent's log.
fn wait_event(lab: &Lab, want: &[(&str, &str)]) {
    let line = lab.wait_log_line(
        |line| {
            serde_json::from_str::<serde_json::Value>(line)
                .map(|event| want.iter().all(|(key, value)| event[*key] == *value) && event["dst_port"] == 53)
                .unwrap_or(false)
        },
        Duration::from_secs(10),
    );
    assert!(line.is_ok(), "no event {want:?}; tail:\n{}", line.unwrap_err());
}

#[test]
fn compression_tricks_are_refused_and_unreadable_messages_pass() {
    let manifests = Manifests::new();
    let file = manifests.write("cluster.yaml", &cluster());
    let lab = Lab::up(&[file], UpOptions::default());
    let data = manifests.write("dns.json", &server_data(&lab));
    let _server = DnsServer::start(&lab, DNS, &data);
    let header = "abcd01000001000000000000";
    // `db.b1` then a pointer to a `svc.cluster.local` spelled after the question (offset 24).
    let pointer = format!("{header}026462026231c018000100010373766307636c7573746572056c6f63616c00");
    // A name that runs past the end of the message, a reserved label type, a bare header.
    let truncated = format!("{header}0264620262310373766307636c7573");
    let reserved = format!("{header}4164620000010001");
    for family in Family::BOTH {
        let server = lab.pod_ip(DNS, family);
        let reply = query(&lab, "a1/p1", server, "-", &["--raw", &pointer]);
        assert_eq!(outcome(&reply), "send-error EPERM", "{family:?}: a compressed question: {reply}");
        for (what, raw) in [("truncated", &truncated), ("reserved label", &reserved), ("header only", &header.to_string())] {
            let reply = query(&lab, "a1/p1", server, "-", &["--raw", raw, "--timeout-ms", "1000"]);
            assert_ne!(reply["outcome"], "send-error", "{family:?}: {what} message must pass to the server: {reply}");
        }
    }
}

#[test]
fn detect_mode_reports_and_answers() {
    let manifests = Manifests::new();
    let file = manifests.write("cluster.yaml", &cluster());
    let config = manifests.write("moat.yaml", "dns:\n  isolation: detect\n");
    let lab = Lab::up(&[file], UpOptions { config: Some(config), ..UpOptions::default() });
    let data = manifests.write("dns.json", &server_data(&lab));
    let _server = DnsServer::start(&lab, DNS, &data);
    let server = lab.pod_ip(DNS, Family::V6);
    let reply = query(&lab, "a1/p1", server, "db.b1.svc.cluster.local", &["--type", "AAAA"]);
    assert_eq!(outcome(&reply), "NOERROR 1", "detect mode answers: {reply}");
    wait_event(&lab, &[("rule", "dns.cross-tenant"), ("verdict", "allow"), ("src_pod", "p1"), ("dst_tenant", "b")]);
    let reply = query(&lab, "a1/p1", server, "db.b1.svc.cluster.local", &["--type", "AAAA", "--tcp"]);
    assert_eq!(outcome(&reply), "NOERROR 1", "detect mode answers over TCP: {reply}");
    wait_event(&lab, &[("rule", "dns.cross-tenant"), ("verdict", "allow"), ("src_pod", "p1"), ("dst_tenant", "b"), ("protocol", "TCP")]);
    assert_eq!(moat_status(&lab)["dns"]["isolation"], "detect");
}
