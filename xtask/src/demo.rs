//! `cargo xtask demo`: two tenants and cluster DNS in a lab, the reachability matrix, and one
//! deny event from the agent's log. The lab is always torn down.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::util::{cargo, check_interrupt, run, workspace_root, Lab};

const NAME: &str = "demo";
const LOG_WAIT: Duration = Duration::from_secs(5);

pub fn run_demo() -> Result<()> {
    crate::setup::run_setup(&crate::setup::SetupArgs::default())?;
    check_interrupt()?;
    run(cargo().args(["build", "-p", "moat-agent", "-p", "moat-lab"]))?;
    check_interrupt()?;
    let moat = crate::util::moat_bin()?;

    let manifests = workspace_root().join("deploy/demo");
    println!("\n== bringing up lab {NAME:?} from {}", manifests.display());
    let lab = Lab::up(&moat, NAME, &[manifests], &[])?;
    check_interrupt()?;

    println!("\n== reachability matrix, port 80/TCP (rows: from, columns: to)");
    run(lab.command().args(["probe", "--name", NAME, "--matrix", "--port", "80"]))?;
    check_interrupt()?;

    let log = Path::new(crate::util::LAB_RUN_DIR).join(NAME).join("agent.log");
    println!("\n== one deny event from {}", log.display());
    let event = wait_for_deny(&log)?;
    println!("{event}");

    println!("\n== tearing down lab {NAME:?}");
    drop(lab);
    Ok(())
}

/// The first JSON line mentioning `"deny"` in the agent log, pretty-printed.
fn wait_for_deny(log: &Path) -> Result<String> {
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(event) = find_deny(&text) {
            return Ok(event);
        }
        check_interrupt()?;
        if Instant::now() >= deadline {
            if !log.exists() {
                bail!("{} does not exist: did the lab start an agent?", log.display());
            }
            bail!("no line containing \"deny\" in {} after {}s", log.display(), LOG_WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn find_deny(log: &str) -> Option<String> {
    let line = log.lines().find(|line| line.contains("\"deny\"") && line.trim_start().starts_with('{'))?;
    Some(match serde_json::from_str::<serde_json::Value>(line) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| line.to_string()),
        Err(_) => line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::find_deny;

    #[test]
    fn picks_the_first_json_deny_line_and_pretty_prints_it() {
        let log = "starting\n{\"level\":\"INFO\",\"msg\":\"synced\"}\n{\"event\":\"deny\",\"port\":80}\n{\"event\":\"deny\",\"port\":81}\n";
        assert_eq!(find_deny(log).as_deref(), Some("{\n  \"event\": \"deny\",\n  \"port\": 80\n}"));
    }

    #[test]
    fn ignores_logs_without_deny_events() {
        assert_eq!(find_deny("{\"msg\":\"denying nothing\"}\nplain deny text\n"), None);
    }
}
