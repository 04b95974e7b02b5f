//! Relabelling a namespace to another tenant cuts its open flows and denies new ones;
//! relabelling back allows new ones again.

use std::time::{Duration, Instant};

use moat_integration::{documents, namespace_yaml, pod_yaml, wait_verdict, Family, Lab, Manifests, UpOptions, Verdict};

fn cluster(y_tenant: &str) -> String {
    documents(&[
        namespace_yaml("x", &[("tenant", "a")]),
        namespace_yaml("y", &[("tenant", y_tenant)]),
        pod_yaml("x", "p", &[], &[(80, "TCP")]),
        pod_yaml("y", "q", &[], &[(80, "TCP")]),
    ])
}

#[test]
fn relabel_cuts_open_flows_and_denies_new_ones() {
    let manifests = Manifests::new();
    let lab = Lab::up(&[manifests.write("a.yaml", &cluster("a"))], UpOptions::default());
    let mut held = lab.hold("x/p", "y/q", 80, Family::V4);
    held.ping().expect("same tenant: the held connection works");
    held.ping().expect("and keeps working");

    lab.apply(&[manifests.write("b.yaml", &cluster("b"))]);
    let applied = Instant::now();
    let cut_within = Duration::from_secs(2);
    loop {
        let sent = applied.elapsed();
        match held.ping() {
            Ok(()) => assert!(sent < cut_within, "the held connection still works {sent:?} after the relabel"),
            Err(error) => {
                assert!(sent < cut_within, "cut only by a ping sent {sent:?} after the relabel: {error}");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(held.ping().is_err(), "a cut flow stays cut");
    assert_eq!(lab.probe("x/p", "y/q", "80/TCP"), Verdict::Denied, "new x -> y after relabel");
    assert_eq!(lab.probe("y/q", "x/p", "80/TCP"), Verdict::Denied, "new y -> x after relabel");

    lab.apply(&[manifests.write("a-again.yaml", &cluster("a"))]);
    wait_verdict("x/p -> y/q after relabelling back", Verdict::Allowed, Duration::from_secs(10), || {
        lab.probe("x/p", "y/q", "80/TCP")
    });
    let mut again = lab.hold("x/p", "y/q", 80, Family::V6);
    again.ping().expect("a new connection after relabelling back works");
}
