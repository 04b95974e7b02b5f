//! The status report `moat status` prints.

use serde::Serialize;

use crate::node::capabilities::Capabilities;
use crate::observability::{KernelReading, ProgramStatus, Shared, SyncState};

#[derive(Debug, Serialize)]
pub struct Status {
    pub instance: String,
    pub ready: bool,
    pub capabilities: Capabilities,
    pub programs: Vec<ProgramStatus>,
    pub sync: SyncState,
    /// Seconds since the last successful apply.
    pub staleness_seconds: Option<f64>,
    pub kernel: KernelReading,
    pub events_lost: EventsLost,
    pub detections: Detections,
    pub metrics_url: Option<String>,
    pub admin_socket: String,
}

#[derive(Debug, Serialize)]
pub struct EventsLost {
    pub kernel: u64,
    pub userspace: u64,
}

#[derive(Debug, Serialize)]
pub struct Detections {
    /// Each detection and its effective mode; empty until the runtime guard exists.
    pub configured: Vec<String>,
    pub note: &'static str,
}

/// Builds the report (reads the pinned maps: blocking).
pub fn report(shared: &Shared) -> Status {
    let kernel = shared.refresh();
    let sync = shared.sync_state();
    Status {
        instance: shared.instance.clone(),
        ready: sync.first_sync_done,
        capabilities: shared.capabilities(),
        programs: shared.programs(),
        staleness_seconds: sync.staleness_seconds(),
        sync,
        events_lost: EventsLost { kernel: kernel.events_lost_kernel, userspace: shared.losses.userspace() },
        kernel,
        detections: Detections { configured: Vec::new(), note: "no detections configured: the runtime guard is not built yet" },
        metrics_url: shared.metrics_url(),
        admin_socket: shared.admin_socket.display().to_string(),
    }
}
