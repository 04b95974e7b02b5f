//! What the agent finds on this kernel, checked against the kernel itself: the active LSM
//! list, cgroup/connect_unix from Linux 6.7, and — where the caller says what the kernel
//! offers (`MOAT_EXPECT_GUARD_KIND`, set by `cargo xtask vm` per boot) — that every probe is
//! attached the best way the kernel allows. Prints the probe report as one line
//! (`MOAT-KERNEL-REPORT {json}`) for the kernel × feature table in docs/kernels.md.

use moat_integration::guard::{GuardLab, PodSpec, Probes};

/// Probes that only have syscall-level ways (no security hook sees them).
const SYSCALL_ONLY: &[&str] = &["fsopen", "mknod", "setns", "connect-refusals"];

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The active LSM list, read as the agent cannot be trusted to: securityfs, mounted
/// privately if the host has it unmounted.
fn lsm_list() -> Option<String> {
    if let Ok(list) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        return Some(list.trim().to_string());
    }
    let dir = tempfile::tempdir().ok()?;
    let status = std::process::Command::new("mount").args(["-t", "securityfs", "securityfs"]).arg(dir.path()).status().ok()?;
    if !status.success() {
        return None;
    }
    let list = std::fs::read_to_string(dir.path().join("lsm")).ok();
    let _ = std::process::Command::new("umount").arg(dir.path()).status();
    list.map(|l| l.trim().to_string())
}

#[test]
fn the_agent_uses_what_this_kernel_offers_and_says_so() {
    moat_integration::require_root();
    let guard = GuardLab::up(&[("alpha", "alpha")], &[PodSpec::new("alpha", "a")], None, None);
    let status = guard.status();
    let caps = &status["capabilities"];
    let probes = Probes::of(&guard);
    println!(
        "MOAT-KERNEL-REPORT {}",
        serde_json::json!({
            "release": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "capabilities": caps,
            "probes": status["probes"],
            "detections": status["detections"]["configured"],
            "icmp": status["icmp"],
        })
    );

    // The datapath's tc program loads on every supported kernel: ICMP echo is enforced.
    let icmp = moat_integration::eventually(std::time::Duration::from_secs(10), || {
        let status = guard.status();
        status["icmp"].is_object().then(|| status["icmp"].clone())
    });
    let icmp = icmp.unwrap_or_else(|| panic!("moat status reports the ICMP program: {}", guard.status()));
    assert!(icmp["unavailable"].is_null(), "the ICMP program loads on this kernel: {icmp}");

    // The LSM list, and what it means for BPF LSM.
    let list = lsm_list();
    assert_eq!(caps["lsm_list"].as_str(), list.as_deref(), "{caps}");
    let bpf_active = list.as_deref().is_some_and(|l| l.split(',').any(|m| m == "bpf"));
    let bpf_lsm = caps["bpf_lsm"].as_str().unwrap_or_default();
    if !bpf_active {
        assert!(!bpf_lsm.starts_with("active"), "BPF LSM is not in the active list, so it is not active: {caps}");
        for probe in status["probes"].as_array().into_iter().flatten() {
            assert_ne!(probe["kind"], "lsm", "an LSM program that would never run: {probe}");
        }
    }

    // cgroup/connect_unix exists from Linux 6.7; it is used unless BPF LSM refuses runtime
    // sockets by inode already.
    let connect_unix = caps["cgroup_connect_unix"].as_str().unwrap_or_default();
    if kernel_version() < (6, 7) {
        assert!(connect_unix.starts_with("unavailable"), "{caps}");
    } else if probes.refuses("unix-connect") {
        assert_eq!(connect_unix, "not needed", "{caps}");
    } else {
        assert_eq!(connect_unix, "attached", "{caps}");
    }

    // Every probe the defaults need is attached, the best way this kernel has.
    let expected = std::env::var("MOAT_EXPECT_GUARD_KIND").ok();
    let modules = std::path::Path::new("/proc/modules").exists();
    for probe in status["probes"].as_array().into_iter().flatten() {
        let name = probe["probe"].as_str().unwrap_or_default();
        if probe["needed"] != true || (name == "module-load" && !modules) {
            continue;
        }
        let kind = probe["kind"].as_str().unwrap_or_else(|| panic!("needed and attached: {probe}"));
        let Some(expected) = expected.as_deref() else { continue };
        let want = match (expected, name) {
            (_, "fork") => "raw-tracepoint",
            ("lsm", _) if SYSCALL_ONLY.contains(&name) => "fentry",
            (kind, _) => kind,
        };
        assert_eq!(kind, want, "MOAT_EXPECT_GUARD_KIND={expected}: {probe}");
    }
    match expected.as_deref() {
        Some("lsm") => assert!(bpf_lsm.starts_with("active"), "{caps}"),
        Some("fentry") => assert_eq!(caps["trampolines"], "available", "{caps}"),
        Some("tracepoint") => assert_eq!(caps["syscall_tracepoints"], "available", "{caps}"),
        Some(other) => panic!("MOAT_EXPECT_GUARD_KIND={other}: lsm, fentry or tracepoint"),
        None => eprintln!("MOAT_EXPECT_GUARD_KIND unset: only consistency is checked"),
    }
}
