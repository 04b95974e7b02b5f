//! Network namespaces, the bridge and veth pairs, through iproute2's `ip`.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::LabError;

pub const NETNS_DIR: &str = "/run/netns";

pub fn bridge_netns(lab: &str) -> String {
    format!("moat-{lab}-br")
}

pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    format!("moat-{lab}-{namespace}.{pod}")
}

pub fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns)
}

/// Runs `ip ARGS...`; a failure carries the command line and its stderr.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Names of all named network namespaces.
pub fn list_netns() -> Result<Vec<String>, LabError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(LabError::io("listing", NETNS_DIR, error)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

pub fn add_netns(netns: &str) -> Result<(), LabError> {
    ip(&["netns", "add", netns])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])
}

/// Deletes a named netns; a missing one is not an error.
pub fn delete_netns(netns: &str) -> Result<(), LabError> {
    if !netns_path(netns).exists() {
        return Ok(());
    }
    ip(&["netns", "delete", netns])
}

/// The bridge netns with `br0` up. Multicast snooping is off so IPv6 neighbour discovery
/// never depends on MLD state.
pub fn create_bridge(netns: &str) -> Result<(), LabError> {
    add_netns(netns)?;
    ip(&[
        "-n",
        netns,
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["-n", netns, "link", "set", "br0", "up"])
}

/// Plugs pod netns `pod` into the bridge: veth `port` on br0, `eth0` in the pod with its
/// addresses and default routes, and unprivileged ICMP allowed.
pub fn plug_pod(
    bridge: &str,
    port: &str,
    pod: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
) -> Result<(), LabError> {
    ip(&[
        "-n", bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", pod,
    ])?;
    ip(&["-n", bridge, "link", "set", port, "master", "br0", "up"])?;
    // No DAD, no router solicitations: the address is usable at once.
    write_sysctl(pod, "net/ipv6/conf/eth0/accept_dad", "0")?;
    write_sysctl(pod, "net/ipv4/ping_group_range", "0 2147483647")?;
    ip(&["-n", pod, "link", "set", "eth0", "up"])?;
    address_pod(pod, v4, v6)
}

/// Sets the pod's addresses on eth0 (which must be up), replacing any others, and its
/// default routes.
pub fn address_pod(pod: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<(), LabError> {
    ip(&["-n", pod, "-4", "addr", "flush", "dev", "eth0"])?;
    ip(&[
        "-n", pod, "-6", "addr", "flush", "dev", "eth0", "scope", "global",
    ])?;
    ip(&["-n", pod, "addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
    ip(&[
        "-n",
        pod,
        "addr",
        "add",
        &format!("{v6}/128"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ip(&[
        "-n", pod, "-4", "route", "replace", "default", "dev", "eth0",
    ])?;
    ip(&[
        "-n", pod, "-6", "route", "replace", "default", "dev", "eth0",
    ])
}

/// Drops neighbour entries for `ip` in `netns` (after the address moved or went away).
pub fn forget_neighbor(netns: &str, address: &str) -> Result<(), LabError> {
    ip(&["-n", netns, "neigh", "flush", "to", address])
}

/// Writes `/proc/sys/<key>` inside netns `netns`, from a short-lived thread that joins it
/// (setns on a thread moves only that thread).
pub fn write_sysctl(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = netns_path(netns);
    let file = File::open(&path).map_err(|e| LabError::io("opening netns", &path, e))?;
    let sysctl = PathBuf::from("/proc/sys").join(key);
    let value = value.to_string();
    let thread_path = sysctl.clone();
    let joined = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: setns on a valid fd, affecting only this thread, which ends right after.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::write(&thread_path, value)
    })
    .join();
    match joined {
        Ok(result) => result.map_err(|e| LabError::io("writing sysctl in netns", sysctl, e)),
        Err(_) => Err(LabError::Internal(format!(
            "sysctl thread for {netns} panicked"
        ))),
    }
}
