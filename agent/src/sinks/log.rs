//! JSON lines on stdout through `tracing`: one line per reported event.

use crate::events::pipeline::Sink;
use crate::events::record::{Event, Payload};

pub struct LogSink;

impl Sink for LogSink {
    fn emit(&mut self, event: &Event) {
        match &event.payload {
            Payload::Flow(record) => {
                let src = &record.src;
                let dst = &record.dst;
                tracing::info!(
                    target: "moat::flow",
                    verdict = record.verdict,
                    direction = record.direction,
                    hook = record.hook,
                    protocol = %record.protocol,
                    rule = record.rule,
                    policies = (!record.policies.is_empty()).then(|| record.policies.join(",")),
                    count = event.count,
                    aggregated = event.aggregated,
                    src_tenant = src.tenant.as_deref(),
                    src_namespace = src.namespace.as_deref(),
                    src_pod = src.pod.as_deref(),
                    src_ip = src.ip.map(tracing::field::display),
                    src_port = src.port,
                    dst_tenant = dst.tenant.as_deref(),
                    dst_namespace = dst.namespace.as_deref(),
                    dst_pod = dst.pod.as_deref(),
                    dst_ip = dst.ip.map(tracing::field::display),
                    dst_port = dst.port,
                    "{}", record.verdict
                );
            }
            Payload::Detection(detection) => {
                tracing::warn!(
                    target: "moat::detection",
                    id = %detection.id,
                    mode = %detection.mode,
                    severity = %detection.severity,
                    action = %detection.action,
                    count = event.count,
                    aggregated = event.aggregated,
                    tenant = detection.tenant.as_deref(),
                    namespace = detection.namespace.as_deref(),
                    pod = detection.pod.as_deref(),
                    pid = detection.pid,
                    container = detection.container.as_deref(),
                    executable = detection.executable.as_deref(),
                    arguments = detection.arguments.as_deref(),
                    parent_pid = detection.parent_pid,
                    parent_executable = detection.parent_executable.as_deref(),
                    evidence = detection.evidence.as_deref(),
                    detail = %detection.message,
                    "detection"
                );
            }
            Payload::Dropped(dropped) => {
                tracing::warn!(
                    target: "moat::dropped",
                    count = event.count,
                    tenant = dropped.tenant.as_deref(),
                    namespace = dropped.namespace.as_deref(),
                    pod = dropped.pod.as_deref(),
                    events = dropped.events,
                    detection = dropped.detection,
                    stage = dropped.stage,
                    reason = dropped.reason,
                    "events dropped"
                );
            }
        }
    }
}
