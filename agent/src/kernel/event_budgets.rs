//! The event budget maps (`moat_common::budget`), read from their pins: what each owner lost
//! in the kernel. (The rates are the programs' global, set at load by `loader`.)

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuHashMap};
use moat_common::budget::{
    names, BudgetKey, BudgetState, CLASS_ALLOW, CLASS_DENY, CLASS_DETECTION,
};

use super::KernelError;

/// Read-only views of the three budget maps.
pub struct BudgetReader {
    deny: PerCpuHashMap<MapData, u64, BudgetState>,
    allow: PerCpuHashMap<MapData, u64, BudgetState>,
    detections: PerCpuHashMap<MapData, BudgetKey, BudgetState>,
}

fn open<K: aya::Pod>(
    maps_dir: &Path,
    name: &'static str,
) -> Result<PerCpuHashMap<MapData, K, BudgetState>, KernelError> {
    let pin = maps_dir.join(name);
    let data = MapData::from_pin(&pin)
        .map_err(|e| KernelError::map(name, format!("opening pin {}: {e}", pin.display())))?;
    PerCpuHashMap::try_from(Map::PerCpuLruHashMap(data)).map_err(|e| KernelError::map(name, e))
}

/// Each entry's losses summed over CPUs (the allowance itself is left out).
fn sums<K: aya::Pod>(
    map: &PerCpuHashMap<MapData, K, BudgetState>,
) -> impl Iterator<Item = (K, BudgetState)> + '_ {
    // An entry evicted between listing and lookup is simply gone.
    map.iter().filter_map(Result::ok).map(|(key, values)| {
        let sum = values
            .iter()
            .fold(BudgetState::default(), |sum, v| BudgetState {
                tat_ns: 0,
                over_budget: sum.over_budget.wrapping_add(v.over_budget),
                ring_full: sum.ring_full.wrapping_add(v.ring_full),
                ring_reserved: sum.ring_reserved.wrapping_add(v.ring_reserved),
            });
        (key, sum)
    })
}

impl BudgetReader {
    pub fn open(maps_dir: &Path) -> Result<Self, KernelError> {
        Ok(Self {
            deny: open(maps_dir, names::FLOW_BUDGETS)?,
            allow: open(maps_dir, names::ALLOW_BUDGETS)?,
            detections: open(maps_dir, names::DETECTION_BUDGETS)?,
        })
    }

    /// Every owner's losses, its key's `class` saying which map it came from.
    pub fn read(&self) -> Vec<(BudgetKey, BudgetState)> {
        let tenant = |class| {
            move |(owner, state)| {
                (
                    BudgetKey {
                        owner,
                        class,
                        code: 0,
                        _pad: [0; 6],
                    },
                    state,
                )
            }
        };
        sums(&self.deny)
            .map(tenant(CLASS_DENY))
            .chain(sums(&self.allow).map(tenant(CLASS_ALLOW)))
            .chain(sums(&self.detections).map(|(key, state)| {
                (
                    BudgetKey {
                        class: CLASS_DETECTION,
                        ..key
                    },
                    state,
                )
            }))
            .collect()
    }
}
