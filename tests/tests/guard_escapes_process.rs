//! Runtime guard, container escapes through other processes and the kernel, each done for
//! real from a lab pod with `moat-attack`: `escape.setns` (joining the host's namespaces,
//! creating a user namespace), `escape.kernel-module` (init_module, finit_module, bpf,
//! perf_event_open) and `escape.ptrace` (ptrace, process_vm_writev, /proc/PID/mem on a host
//! process). Each detection is checked exactly (id, pod, tenant, action, mode, evidence), and
//! the same calls within the pod's own namespaces, processes and exempt namespaces are
//! checked silent. Where the agent runs the probe that sees a technique as BPF LSM it is
//! refused (EPERM) and reported `blocked`; elsewhere it is detected.
//!
//! The host side: the stand-in kubelet is the host process whose namespaces are joined (PID
//! 1 is not inspectable everywhere); the traced process is a `sleep` this test starts and
//! kills. A successful setns or unshare changes only the `moat-attack` process, which exits.
//! Mounts, devices and kernel interfaces: `guard_escapes.rs`.

mod escapes;

use escapes::{
    assert_exact, assert_silent, attack, attack_path, by, evidence, failed_with, line, lines, message, outcome, script, single,
    succeeded, up, HostProcess, Probes, NS,
};
use moat_integration::guard::PodSpec;

const BAD: &str = "esc/bad";
const HOSTPID: &str = "esc/hostpid";

fn pods() -> Vec<PodSpec> {
    vec![PodSpec::new(NS, "bad"), PodSpec::new(NS, "hostpid").host_pid()]
}

/// The namespaces (in the order detections name them) process `a` has of its own, not
/// shared with process `b`.
fn not_shared(a: u32, b: u32) -> Vec<&'static str> {
    let ns = |pid: u32, name: &str| std::fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap_or_else(|e| panic!("/proc/{pid}/ns/{name}: {e}"));
    ["uts", "ipc", "mnt", "pid", "net", "cgroup"].into_iter().filter(|name| ns(a, name) != ns(b, name)).collect()
}

#[test]
fn joining_host_namespaces_and_creating_user_namespaces_are_detected() {
    moat_integration::require_root();
    let guard = up(&[], &pods(), None);
    let id = "escape.setns";
    let probes = Probes::of(&guard);
    let kubelet = guard.lab.kubelet_pid().to_string();

    // A hostPID pod sees every host process: it joins the kubelet's network namespace. BPF
    // LSM refuses opening the namespace file already, so no setns happens.
    let (output, seen) = attack(&guard, HOSTPID, &["setns", &format!("/proc/{kubelet}/ns/net"), "--type", "net"]);
    let event = single(&seen, "setns into the host's net namespace");
    if probes.refuses("file-open") {
        failed_with(&output, "EPERM");
        assert_exact(&event, id, HOSTPID, "blocked");
        assert!(evidence(&event).contains("net:["), "the namespace file: {event}");
        assert!(message(&event).starts_with("open of a host namespace"), "{event}");
    } else {
        succeeded(&output);
        assert_exact(&event, id, HOSTPID, "detected");
        assert_eq!(evidence(&event), "host namespaces: net", "{event}");
        assert!(message(&event).starts_with("setns into the host's net namespace"), "{event}");
    }
    assert!(by(&event, "moat-attack"), "{event}");

    // Through a pidfd, every namespace at once. Only those the pod did not share with the
    // host already are joined: not the PID namespace (hostPID), nor any other the lab's
    // sandbox leaves shared (the cgroup namespace, here).
    let sandbox = guard.lab.sandbox_pid(HOSTPID);
    let own = not_shared(sandbox, guard.lab.kubelet_pid());
    assert!(own.contains(&"net") && own.contains(&"mnt") && !own.contains(&"pid"), "the pod's own namespaces: {own:?}");
    let (output, seen) = attack(&guard, HOSTPID, &["setns-pid", &kubelet]);
    succeeded(&output);
    let event = single(&seen, "setns into all of the kubelet's namespaces");
    assert_exact(&event, id, HOSTPID, "detected");
    assert_eq!(evidence(&event), format!("host namespaces: {}", own.join(",")), "{event}");

    // Attribution at the moment of the call: `nsenter ... -- sh` execs a shell right after
    // joining (or after its refused open), racing the decoding; every event names nsenter,
    // never the shell. Repeated, since a race can go either way.
    for round in 0..3 {
        let seen = guard.during(|| {
            guard.lab.exec(HOSTPID, &["nsenter", "-t", &kubelet, "-n", "--", "sh", "-c", "true"]);
        });
        let joins: Vec<_> = seen.iter().filter(|e| e["id"] == id).collect();
        assert!(!joins.is_empty(), "round {round}: nsenter into the kubelet's net namespace is seen: {seen:#?}");
        for event in joins {
            assert!(by(event, "nsenter"), "round {round}: the executable that made the call: {event}");
        }
    }

    // The first step of the user-namespace escapes: a user namespace of its own.
    let (output, seen) = attack(&guard, BAD, &["unshare-user"]);
    outcome(&output, probes.refuses("user-namespace"));
    let event = single(&seen, "unshare(CLONE_NEWUSER)");
    assert_exact(&event, id, BAD, probes.action("user-namespace"));
    assert_eq!(evidence(&event), format!("unshare flags {:#x}", libc::CLONE_NEWUSER), "{event}");
    assert!(message(&event).starts_with("unshare of a user namespace"), "{event}");

    // Normal: `moat lab exec` itself entering the pods (every attack above did too), a pod
    // joining its own namespaces (by path, and through its PID 1, the sandbox), and the
    // hostPID pod joining the PID namespace it already has.
    let seen = guard.during(|| {
        guard.lab.exec(BAD, &["true"]).ok();
        guard.lab.exec(HOSTPID, &["true"]).ok();
    });
    assert!(seen.is_empty(), "moat lab exec is silent: {seen:#?}");
    let kubelet_pid_ns = format!("/proc/{kubelet}/ns/pid");
    assert_silent(
        &guard,
        "joining one's own namespaces",
        &[
            (BAD, &["setns", "/proc/self/ns/net", "--type", "net"]),
            (BAD, &["setns-pid", "1"]),
            (HOSTPID, &["setns", &kubelet_pid_ns, "--type", "pid"]),
        ],
    );
}

#[test]
fn module_loading_bpf_and_perf_events_are_detected_outside_exempt_namespaces() {
    moat_integration::require_root();
    let mut pods = pods();
    pods.push(PodSpec::new("trusted", "cni"));
    let config = "guard:\n  exemptNamespaces: [trusted]\n";
    let guard = up(&[("trusted", "infra")], &pods, Some(config));
    let id = "escape.kernel-module";
    let probes = Probes::of(&guard);
    // A kernel built without module support has neither the calls' tracepoints nor anything
    // a module call could do: they fail with ENOSYS and nothing watches them.
    let modules = std::path::Path::new("/proc/modules").exists();

    // The module images are not ELF: the kernel can only refuse them (ENOEXEC, or EPERM from
    // BPF LSM first), but the call was made.
    for (args, call, probe) in [
        (&["init-module"][..], "init_module", "module-load"),
        (&["finit-module", "/etc/passwd"], "finit_module", "module-load"),
        (&["bpf"], "bpf", "bpf"),
        (&["perf-event-open"], "perf_event_open", "perf-event"),
    ] {
        let (output, seen) = attack(&guard, BAD, args);
        let result = line(&output);
        if call.ends_with("module") && !modules {
            assert_eq!(result["errno"], "ENOSYS", "no module support:\n{output}");
            assert!(seen.is_empty(), "{seen:#?}");
            continue;
        }
        if probes.refuses(probe) {
            failed_with(&output, "EPERM");
        } else if call.ends_with("module") {
            assert!(result["ok"] == false, "a bogus module is never loaded:\n{output}");
        } else {
            succeeded(&output);
        }
        let event = single(&seen, call);
        assert_exact(&event, id, BAD, probes.action(probe));
        assert!(evidence(&event).starts_with(&format!("syscall {call} (first argument ")), "{event}");
        assert!(message(&event).starts_with(&format!("{call}() from a pod")), "{event}");
    }

    // Normal: an exempt namespace's pod (a CNI loading eBPF) and the host itself.
    assert_silent(&guard, "an exempt namespace", &[("trusted/cni", &["bpf"]), ("trusted/cni", &["perf-event-open"])]);
    let seen = guard.during(|| {
        let host = std::process::Command::new(attack_path()).arg("bpf").output().expect("moat-attack on the host");
        assert!(host.status.success(), "{host:?}");
    });
    assert!(seen.is_empty(), "the host is silent: {seen:#?}");
}

#[test]
fn tracing_a_host_process_is_detected_and_the_pods_own_processes_are_not() {
    moat_integration::require_root();
    let guard = up(&[], &pods(), None);
    let id = "escape.ptrace";
    let probes = Probes::of(&guard);
    let refused = probes.refuses("ptrace");
    let mut target = HostProcess::start();
    let pid = target.pid().to_string();

    let (output, seen) = attack(&guard, HOSTPID, &["ptrace-attach", &pid]);
    let result = outcome(&output, refused);
    assert!(refused || result["detail"].as_str().unwrap_or_default().ends_with("detached"), "{output}");
    let event = single(&seen, "ptrace of a host process");
    assert_exact(&event, id, HOSTPID, probes.action("ptrace"));
    assert_eq!(evidence(&event), format!("ptrace target pid {pid}"), "{event}");
    assert!(message(&event).starts_with(&format!("ptrace on pid {pid} outside the pod")), "{event}");

    // One byte to an address the target has not mapped: after the permission check the
    // write fails (EFAULT) and nothing changes; BPF LSM refuses at the check (EPERM).
    let (output, seen) = attack(&guard, HOSTPID, &["process-vm-writev", &pid, "0x1000"]);
    failed_with(&output, if refused { "EPERM" } else { "EFAULT" });
    let event = single(&seen, "process_vm_writev into a host process");
    assert_exact(&event, id, HOSTPID, probes.action("ptrace"));
    assert_eq!(evidence(&event), format!("process_vm_writev target pid {pid}"), "{event}");

    // Security hooks see this open as the ptrace check it makes, naming the open call.
    // The kernel reports a refused ptrace check on this open as EACCES (mm_access).
    let (output, seen) = attack(&guard, HOSTPID, &["proc-mem", &pid]);
    if refused {
        failed_with(&output, "EACCES");
    } else {
        succeeded(&output);
    }
    let event = single(&seen, "/proc/PID/mem of a host process");
    assert_exact(&event, id, HOSTPID, probes.action("ptrace"));
    if probes.at_security_hooks("ptrace") {
        assert!(evidence(&event).starts_with("open") && evidence(&event).ends_with(&format!(" target pid {pid}")), "{event}");
    } else {
        assert_eq!(evidence(&event), format!("/proc/{pid}/mem"), "{event}");
    }
    assert!(target.running(), "the host process runs on, untraced");

    // Normal: the same three on a process the pod started itself, in its own PID namespace
    // and in the host's (hostPID: the target's cgroup says it is the pod's). The target
    // lives until the detections are in: the agent looks its cgroup up when decoding.
    let tool = attack_path();
    for pod in [BAD, HOSTPID] {
        let (output, seen) = script(
            &guard,
            pod,
            &format!(
                "sleep 60 >/dev/null 2>&1 & s=$!
                 echo target=$s
                 {tool} ptrace-attach $s; {tool} proc-mem $s; {tool} process-vm-writev $s 0x1000"
            ),
        );
        let sleeper = output.stdout.lines().find_map(|l| l.strip_prefix("target=")).unwrap_or_else(|| panic!("{output}"));
        guard.lab.exec(pod, &["kill", sleeper]).ok();
        let done = lines(&output);
        let allowed = |l: &&serde_json::Value| l["ok"] == true || (l["technique"] == "process-vm-writev" && l["errno"] == "EFAULT");
        assert!(done.len() == 3 && done.iter().all(|l| allowed(&l)), "all three pass the permission check:\n{output}");
        assert!(seen.is_empty(), "{pod}: tracing the pod's own process is silent: {seen:#?}");
    }
}

/// `escape.setns` in `mode`, in the agent config these tests start with.
fn setns_config(mode: &str) -> String {
    format!("events:\n  aggregationWindowMs: 0\nguard:\n  detections:\n    escape.setns: \"{mode}\"\n")
}

/// Whether `moat status` shows the probes only `escape.setns` needs as attached, once the
/// detection is configured as `mode`.
fn setns_planned(guard: &moat_integration::guard::GuardLab, mode: &str, attached: bool) -> bool {
    let status = guard.status();
    let configured = escapes::detection_status(&status, "escape.setns")["configured"] == mode;
    let probes = Probes::of(guard);
    configured && ["setns", "user-namespace"].iter().all(|probe| probes.kind(probe).is_empty() != attached)
}

#[test]
fn changing_a_mode_at_run_time_attaches_and_detaches_its_probes() {
    moat_integration::require_root();
    let guard = up(&[], &pods(), Some("guard:\n  detections:\n    escape.setns: \"off\"\n"));
    let kubelet_net = format!("/proc/{}/ns/net", guard.lab.kubelet_pid());
    let join: &[&str] = &["setns", &kubelet_net, "--type", "net"];
    assert!(setns_planned(&guard, "off", false), "off at start holds no probe: {}", guard.status());
    assert_silent(&guard, "escape.setns off", &[(HOSTPID, join)]);

    // detect, by editing the file: the agent re-reads it and attaches the probes.
    guard.rewrite_config(&setns_config("detect"));
    let planned = moat_integration::eventually(std::time::Duration::from_secs(20), || setns_planned(&guard, "detect", true).then_some(()));
    assert!(planned.is_some(), "re-planned for detect: {}\nagent log:\n{}", guard.status(), guard.lab.agent_log());
    let (output, seen) = attack(&guard, HOSTPID, join);
    succeeded(&output);
    let setns: Vec<_> = seen.iter().filter(|e| e["id"] == "escape.setns").collect();
    assert!(!setns.is_empty(), "the probes attached at run time see the technique: {seen:#?}");
    for event in setns {
        assert_exact(event, "escape.setns", HOSTPID, "detected");
    }

    // off again: detached, silent.
    guard.rewrite_config(&setns_config("off"));
    let planned = moat_integration::eventually(std::time::Duration::from_secs(20), || setns_planned(&guard, "off", false).then_some(()));
    assert!(planned.is_some(), "re-planned for off: {}\nagent log:\n{}", guard.status(), guard.lab.agent_log());
    assert_silent(&guard, "escape.setns off again", &[(HOSTPID, join)]);
    assert!(guard.lab.agent_log().contains("agent config reloaded"), "the reload is logged:\n{}", guard.lab.agent_log());
}
