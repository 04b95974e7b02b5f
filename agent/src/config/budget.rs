//! `events.budget`: how many events each tenant (flows) and each pod (detections, per
//! detection) may put into the ring buffer, and the share of the ring kept for detections.
//! Turned into the kernel's `EventBudget` (`kernel::event_budgets` writes it).

use moat_common::budget::EventBudget;
use moat_common::maps::capacity;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Flow events per second each tenant may send, per CPU (deny events; reported allowed
    /// flows have a budget of the same size apart). 0: no budget.
    pub tenant_events_per_second: u32,
    /// Events a tenant may send at once after being quiet.
    pub tenant_burst: u32,
    /// Detections per second each pod may send per detection, per CPU. 0: no budget.
    pub pod_detections_per_second: u32,
    pub pod_detection_burst: u32,
    /// Percent of the ring buffer flow events may fill; the rest stays free for detections.
    pub flow_ring_percent: u8,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            tenant_events_per_second: 1000,
            tenant_burst: 2000,
            pod_detections_per_second: 100,
            pod_detection_burst: 200,
            flow_ring_percent: 50,
        }
    }
}

impl BudgetConfig {
    /// `(field, message)` of the first bad value.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let field = |name: &str| format!("events.budget.{name}");
        if self.tenant_events_per_second > 1_000_000 {
            return Err((field("tenantEventsPerSecond"), "must be 0..=1000000".into()));
        }
        if self.tenant_events_per_second != 0 && self.tenant_burst == 0 {
            return Err((field("tenantBurst"), "must be at least 1".into()));
        }
        if self.pod_detections_per_second > 1_000_000 {
            return Err((
                field("podDetectionsPerSecond"),
                "must be 0..=1000000".into(),
            ));
        }
        if self.pod_detections_per_second != 0 && self.pod_detection_burst == 0 {
            return Err((field("podDetectionBurst"), "must be at least 1".into()));
        }
        if !(1..=100).contains(&self.flow_ring_percent) {
            return Err((field("flowRingPercent"), "must be 1..=100".into()));
        }
        Ok(())
    }

    /// The kernel's form: GCRA intervals and tolerances in nanoseconds.
    pub fn kernel(&self) -> EventBudget {
        let (flow_interval_ns, flow_burst_ns) =
            gcra(self.tenant_events_per_second, self.tenant_burst);
        let (detection_interval_ns, detection_burst_ns) =
            gcra(self.pod_detections_per_second, self.pod_detection_burst);
        let flow_ring_limit_bytes = if self.flow_ring_percent >= 100 {
            0
        } else {
            u64::from(capacity::EVENTS_BYTES) * u64::from(self.flow_ring_percent) / 100
        };
        EventBudget {
            flow_interval_ns,
            flow_burst_ns,
            detection_interval_ns,
            detection_burst_ns,
            flow_ring_limit_bytes,
        }
    }
}

/// (interval, tolerance) admitting `rate` per second with `burst` at once; (0, 0) for none.
fn gcra(rate: u32, burst: u32) -> (u64, u64) {
    if rate == 0 {
        return (0, 0);
    }
    let interval = 1_000_000_000 / u64::from(rate);
    (interval, interval * u64::from(burst.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's admission rule, over a simulated clock.
    fn admitted(budget: (u64, u64), times_ns: impl Iterator<Item = u64>) -> usize {
        let (interval, burst) = budget;
        let mut tat = 0u64;
        times_ns
            .filter(|&now| {
                let t = tat.max(now);
                if t - now > burst {
                    return false;
                }
                tat = t + interval;
                true
            })
            .count()
    }

    #[test]
    fn burst_then_rate() {
        let config = BudgetConfig {
            tenant_events_per_second: 1000,
            tenant_burst: 50,
            ..BudgetConfig::default()
        };
        let kernel = config.kernel();
        assert_eq!(kernel.flow_interval_ns, 1_000_000);
        // 10,000 events at one instant: the burst passes.
        assert_eq!(
            admitted(
                (kernel.flow_interval_ns, kernel.flow_burst_ns),
                std::iter::repeat_n(5_000_000_000, 10_000)
            ),
            50
        );
        // 100,000 events spread over one second: the rate (plus the burst) passes.
        let spread = (0..100_000u64).map(|i| 5_000_000_000 + i * 10_000);
        let passed = admitted((kernel.flow_interval_ns, kernel.flow_burst_ns), spread);
        assert!((1000..=1050).contains(&passed), "{passed}");
    }

    #[test]
    fn zero_rate_is_no_budget_and_ring_share_is_bytes() {
        let config = BudgetConfig {
            tenant_events_per_second: 0,
            flow_ring_percent: 100,
            ..BudgetConfig::default()
        };
        let kernel = config.kernel();
        assert_eq!(
            (kernel.flow_interval_ns, kernel.flow_ring_limit_bytes),
            (0, 0)
        );
        assert_eq!(
            BudgetConfig::default().kernel().flow_ring_limit_bytes,
            u64::from(capacity::EVENTS_BYTES) / 2
        );
        assert!(BudgetConfig {
            flow_ring_percent: 0,
            ..BudgetConfig::default()
        }
        .validate()
        .is_err());
        assert!(BudgetConfig {
            tenant_burst: 0,
            ..BudgetConfig::default()
        }
        .validate()
        .is_err());
        assert!(BudgetConfig::default().validate().is_ok());
    }
}
