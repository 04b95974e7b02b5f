//! What the `e2e` bench section puts in place: the lab's manifests, the NetworkPolicies of
//! 1,000 peers, the same 1,000 peers as iptables rules in both pods, and the probe that
//! checks either is in force.
//!
//! iptables rules only ever go into the lab pods' own network namespaces (`ip netns exec
//! <pod netns>`), never the host's; the namespaces go with the lab.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::util::{capture, render, stdout_of, Lab};

pub const CLIENT: &str = "dp/client";
pub const SERVER: &str = "dp/server";
const OUTSIDER: &str = "dp/outsider";
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 8081;
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
/// Allowed peers per pod: this many minus one addresses that are not pods, then the peer.
pub const PEERS: usize = 1_000;

/// The manifests every configuration starts from, and the policies added to them.
pub struct Files {
    pub base: PathBuf,
    pub policies: PathBuf,
}

pub fn write_files(dir: &Path) -> Result<Files> {
    let base = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: dp\n  labels:\n    tenant: dp\n---\n{}{}{}",
        pod("client", Some(CLIENT_IP)),
        pod("server", Some(SERVER_IP)),
        pod("outsider", None)
    );
    let policies = format!("{}---\n{}", policy("server", "Ingress", "from", CLIENT_IP), policy("client", "Egress", "to", SERVER_IP));
    Ok(Files { base: write(dir, "base.yaml", &base)?, policies: write(dir, "policies.yaml", &policies)? })
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn pod(name: &str, ip: Option<Ipv4Addr>) -> String {
    let status = ip.map(|ip| format!("status:\n  podIP: {ip}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: dp\n  labels:\n    app: {name}\n\
         spec:\n  containers:\n    - name: c\n      image: x\n      ports:\n        \
         - {{name: tcp, containerPort: {TCP_PORT}, protocol: TCP}}\n        \
         - {{name: udp, containerPort: {UDP_PORT}, protocol: UDP}}\n{status}---\n"
    )
}

/// PEERS - 1 addresses that are not pods, then `last`.
fn peers(last: Ipv4Addr) -> Vec<Ipv4Addr> {
    let first = u32::from(Ipv4Addr::new(10, 251, 0, 0));
    let mut out: Vec<Ipv4Addr> = (1..PEERS as u32).map(|i| Ipv4Addr::from(first + i)).collect();
    out.push(last);
    out
}

/// A policy isolating `app` in `direction`, allowing the peers on both bench ports.
fn policy(app: &str, direction: &str, side: &str, last: Ipv4Addr) -> String {
    let rule = direction.to_lowercase();
    let mut text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {app}-peers\n  namespace: dp\n\
         spec:\n  podSelector:\n    matchLabels:\n      app: {app}\n  policyTypes: [{direction}]\n  {rule}:\n    \
         - ports:\n        - {{port: {TCP_PORT}, protocol: TCP}}\n        - {{port: {UDP_PORT}, protocol: UDP}}\n      {side}:\n"
    );
    for peer in peers(last) {
        text.push_str(&format!("        - ipBlock: {{cidr: {peer}/32}}\n"));
    }
    text
}

/// The same peers as iptables rules: conntrack ESTABLISHED first, then per peer one rule per
/// bench port (the peer that matters last), then DROP. The server filters INPUT by source,
/// the client OUTPUT by destination (loopback left alone).
fn ruleset(chain: &str, match_flag: &str, last: Ipv4Addr) -> String {
    let mut text = format!("*filter\n:{chain} ACCEPT [0:0]\n-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    if chain == "OUTPUT" {
        text.push_str("-A OUTPUT -o lo -j ACCEPT\n");
    }
    for peer in peers(last) {
        text.push_str(&format!("-A {chain} {match_flag} {peer}/32 -p tcp -m tcp --dport {TCP_PORT} -j ACCEPT\n"));
        text.push_str(&format!("-A {chain} {match_flag} {peer}/32 -p udp -m udp --dport {UDP_PORT} -j ACCEPT\n"));
    }
    text.push_str(&format!("-A {chain} -j DROP\nCOMMIT\n"));
    text
}

/// Loads the rules into both pods; they go with the lab's namespaces.
pub fn load_iptables(lab: &Lab) -> Result<()> {
    restore(&netns(lab, SERVER)?, &ruleset("INPUT", "-s", CLIENT_IP))?;
    restore(&netns(lab, CLIENT)?, &ruleset("OUTPUT", "-d", SERVER_IP))
}

pub fn iptables_version() -> String {
    stdout_of(Command::new("iptables").arg("-V")).unwrap_or_default().trim().to_string()
}

/// iptables-restore inside `netns` (a lab pod's).
fn restore(netns: &str, rules: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "iptables-restore"]).stdin(Stdio::piped());
    let shown = render(&cmd);
    let mut child = cmd.spawn().with_context(|| format!("starting `{shown}`"))?;
    child.stdin.take().context("no stdin")?.write_all(rules.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

fn netns(lab: &Lab, pod: &str) -> Result<String> {
    let text = stdout_of(lab.command().args(["status", "--name", lab.name(), "-o", "json"]))?;
    let value: serde_json::Value = serde_json::from_str(text.trim())?;
    value["pods"][pod]["netns"].as_str().map(String::from).with_context(|| format!("no netns for {pod} in `moat lab status`"))
}

/// Fails unless the outsider pod is refused by the server: the policy or rules are in force.
pub fn expect_outsider_blocked(lab: &Lab, what: &str) -> Result<()> {
    let mut cmd = lab.command();
    cmd.args(["probe", "--name", lab.name(), "--from", OUTSIDER, "--to", SERVER, "--port", &TCP_PORT.to_string(), "-o", "json"]);
    let output = capture(&mut cmd)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| format!("probe printed {text:?}"))?;
    let verdict = value["results"][0]["verdict"].as_str().unwrap_or("?");
    eprintln!("  outsider → server under {what}: {verdict}");
    if verdict != "deny" {
        bail!("{what}: the outsider pod still reaches the server ({verdict}); the rules are not in force");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_that_matters_comes_last_after_the_others() {
        let list = peers(CLIENT_IP);
        assert_eq!(list.len(), PEERS);
        assert_eq!(list.last(), Some(&CLIENT_IP));
        assert!(!list[..PEERS - 1].contains(&CLIENT_IP) && !list.contains(&SERVER_IP));
        let rules = ruleset("INPUT", "-s", CLIENT_IP);
        assert_eq!(rules.lines().filter(|l| l.contains("-j ACCEPT") && l.contains("--dport")).count(), 2 * PEERS);
        assert!(rules.trim_end().ends_with("-A INPUT -j DROP\nCOMMIT"));
        let policy = policy("server", "Ingress", "from", CLIENT_IP);
        assert_eq!(policy.matches("ipBlock").count(), PEERS);
        assert!(policy.contains("policyTypes: [Ingress]\n  ingress:\n"));
    }
}
