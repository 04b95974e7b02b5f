//! Objects as the API server's watch delivers them (JSON) → the model, through the same
//! conversion the kube source applies to every watch event.
#![no_main]

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use libfuzzer_sys::fuzz_target;
use moat_agent::sources::convert;

fuzz_target!(|data: &[u8]| {
    if let Ok(pod) = serde_json::from_slice::<Pod>(data) {
        let _ = convert::namespaced_key(&pod.metadata);
        let _ = convert::pod_finished(&pod);
        let _ = convert::pod(&pod);
    }
    if let Ok(namespace) = serde_json::from_slice::<Namespace>(data) {
        let _ = convert::namespace(&namespace);
    }
    if let Ok(node) = serde_json::from_slice::<Node>(data) {
        let _ = convert::node(&node);
    }
    if let Ok(policy) = serde_json::from_slice::<NetworkPolicy>(data) {
        let _ = convert::network_policy(&policy);
    }
});
