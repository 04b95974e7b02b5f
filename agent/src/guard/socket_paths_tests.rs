use std::os::unix::net::UnixListener;

use super::*;

const DISK: u64 = kernel_dev(254, 0);
const RUN: u64 = kernel_dev(0, 25);
const SOCKET: &str = "/run/containerd/containerd.sock";

fn mount(dev: u64, root: &str, point: &str) -> Mount {
    Mount { dev, root: root.into(), point: point.into() }
}

fn paths(found: &BTreeSet<PathBuf>) -> Vec<&str> {
    found.iter().map(|p| p.to_str().unwrap()).collect()
}

#[test]
fn parses_mountinfo_with_escapes_and_optional_fields() {
    let text = b"\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 27 0:25 /run\\040dir /mnt/with\\040space\\011tab rw master:3 shared:7 - tmpfs tmpfs rw
31 27 0:25 /a /b\\134c rw - tmpfs tmpfs rw
32 27 0:25 / /caf\xff rw - tmpfs tmpfs rw
";
    let mounts = parse_mountinfo(text);
    assert_eq!(mounts.len(), 4);
    assert_eq!(mounts[0], mount(DISK, "/", "/"));
    assert_eq!(mounts[1], mount(RUN, "/run dir", "/mnt/with space\ttab"));
    assert_eq!(mounts[2], mount(RUN, "/a", "/b\\c"));
    assert_eq!(mounts[3].point.as_os_str().as_bytes(), b"/caf\xff", "not UTF-8, kept as is");
}

#[test]
fn skips_malformed_mountinfo_lines() {
    let text = b"\n\
27 1 254:0 / / rw shared:1 ext4 /dev/vda rw
28 1 x:y / /a rw - ext4 /dev/vda rw
29 1 254:0 / /b rw -
30 1 254:0 /
31 1 254:0 / relative rw - ext4 /dev/vda rw
32 1 254:0 / /ok rw - ext4 /dev/vda rw";
    assert_eq!(parse_mountinfo(text), vec![mount(DISK, "/", "/ok")]);
}

#[test]
fn unescapes_three_octal_digits_only() {
    let cases: [(&[u8], &[u8]); 7] = [
        (br"/a\040b", b"/a b"),
        (br"/x\011y\012", b"/x\ty\n"),
        (br"\134", b"\\"),
        (br"\8", br"\8"),
        (br"/end\04", br"/end\04"),
        (br"\400", br"\400"),
        (br"/trailing\", br"/trailing\"),
    ];
    for (field, want) in cases {
        assert_eq!(unescape(field), want, "{}", String::from_utf8_lossy(field));
    }
}

#[test]
fn locates_a_socket_inside_its_filesystem() {
    let agent = [
        mount(DISK, "/", "/"),
        mount(RUN, "/", "/run"),
        mount(RUN, "/containerd", "/run/containerd-bind"),
        mount(RUN, "/", "/host/run"),
        mount(RUN, "/containerd/containerd.sock", "/cri.sock"),
        mount(kernel_dev(0, 26), "/", "/run/cont"),
    ];
    let relative = |dev, path: &str| fs_relative(&agent, dev, Path::new(path));
    assert_eq!(relative(RUN, SOCKET), Some("/containerd/containerd.sock".into()));
    assert_eq!(relative(RUN, "/run/containerd-bind/containerd.sock"), Some("/containerd/containerd.sock".into()));
    assert_eq!(relative(RUN, "/host/run/containerd/containerd.sock"), Some("/containerd/containerd.sock".into()));
    assert_eq!(relative(RUN, "/cri.sock"), Some("/containerd/containerd.sock".into()), "the socket bound alone");
    assert_eq!(relative(DISK, "/var/run/docker.sock"), Some("/var/run/docker.sock".into()));
    assert_eq!(relative(kernel_dev(0, 26), "/run/containerd/x.sock"), None, "/run/cont: not a component-wise prefix");
    assert_eq!(relative(kernel_dev(9, 9), SOCKET), None);
}

#[test]
fn the_top_of_stacked_mounts_locates() {
    let agent = [mount(RUN, "/", "/run"), mount(RUN, "/over", "/run")];
    assert_eq!(fs_relative(&agent, RUN, Path::new("/run/x.sock")), Some("/over/x.sock".into()));
}

#[test]
fn candidates_are_the_mounts_exposing_the_socket() {
    let cases = [
        (mount(DISK, SOCKET, "/var/run/cri.sock"), Some("/var/run/cri.sock")),
        (mount(DISK, "/run/containerd", "/host/run/containerd"), Some("/host/run/containerd/containerd.sock")),
        (mount(DISK, "/", "/host"), Some("/host/run/containerd/containerd.sock")),
        (mount(DISK, "/", "/"), Some(SOCKET)),
        (mount(RUN, "/run/containerd", "/other-device"), None),
        (mount(DISK, "/var/lib/kubelet/pods/u/etc-hosts", "/etc/hosts"), None),
        (mount(DISK, "/run/contain", "/partial"), None),
        (mount(DISK, "/run/containerd/containerd.sock//deleted", "/stale.sock"), None),
    ];
    for (mount, want) in cases {
        let found = candidates(std::slice::from_ref(&mount), DISK, Path::new(SOCKET));
        assert_eq!(paths(&found), want.into_iter().collect::<Vec<_>>(), "{mount:?}");
    }
}

#[test]
fn candidates_are_listed_once_and_fit_sun_path() {
    // `point/containerd.sock` is 16 bytes longer than `point`.
    let fits = format!("/{}", "a".repeat(90));
    let too_long = format!("/{}", "b".repeat(91));
    let mounts = [
        mount(DISK, "/run/containerd", "/host/run/containerd"),
        mount(DISK, "/", "/host"),
        mount(DISK, "/run/containerd", &fits),
        mount(DISK, "/run/containerd", &too_long),
    ];
    let found = candidates(&mounts, DISK, Path::new(SOCKET));
    let fitting = format!("{fits}/containerd.sock");
    assert_eq!(fitting.len(), SOCKET_PATH_LEN - 1);
    assert_eq!(paths(&found), [fitting.as_str(), "/host/run/containerd/containerd.sock"]);
}

#[test]
fn pids_of_a_cgroup_and_its_descendants() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    std::fs::create_dir_all(pod.join("c1/deep")).unwrap();
    std::fs::create_dir_all(pod.join("c2")).unwrap();
    std::fs::write(pod.join("cgroup.procs"), "10\n11\n").unwrap();
    std::fs::write(pod.join("c1/cgroup.procs"), "12\n0\nnot-a-pid\n").unwrap();
    std::fs::write(pod.join("c1/deep/cgroup.procs"), " 13 \n\n").unwrap();
    let pids = cgroup_pids(&[pod, dir.path().join("absent")]);
    assert_eq!(pids.into_iter().collect::<Vec<_>>(), [10, 11, 12, 13]);
}

/// A unix socket in a temporary directory, as a runtime socket.
struct Listening {
    dir: tempfile::TempDir,
    _listener: UnixListener,
    socket: RuntimeSocket,
}

fn listen(name: &str) -> Listening {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let listener = UnixListener::bind(&path).unwrap();
    let socket = RuntimeSocket { file: file_key(&path).unwrap(), path };
    Listening { dir, _listener: listener, socket }
}

/// This test process's cgroup v2 directory, as a pod's.
fn own_pod(tag: u64) -> PodProcesses {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let cgroup = text.lines().find_map(|line| line.strip_prefix("0::")).expect("a cgroup v2 line in /proc/self/cgroup");
    let mount = crate::node::mounts::cgroup2().unwrap();
    PodProcesses { tag, cgroups: vec![mount.join(cgroup.trim_start_matches('/'))] }
}

fn key(tag: u64, path: &Path) -> SocketPath {
    SocketPath::new(tag, path.as_os_str().as_bytes()).unwrap()
}

#[test]
fn finds_its_own_socket_and_reads_nothing_again() {
    let listening = listen("runtime.sock");
    let sockets = [listening.socket.clone()];
    let pods = [own_pod(7)];
    let mut cache = SocketPaths::default();
    let first = cache.compute(&sockets, &pods);
    assert_eq!(first.get(&key(7, &listening.socket.path)), Some(&listening.socket.file), "{first:?}");
    assert!(first.keys().all(|k| k.pod == 7) && first.values().all(|f| *f == listening.socket.file));
    let scans = cache.scans();
    assert!(scans > 0);

    assert_eq!(cache.compute(&sockets, &pods), first);
    assert_eq!(cache.scans(), scans, "no mount table read again");
}

#[test]
fn a_path_to_another_file_is_not_listed() {
    let listening = listen("runtime.sock");
    let other = listening.dir.path().join("plain");
    std::fs::write(&other, "").unwrap();
    // The socket's path, but the identity of a file on the same filesystem.
    let wrong = RuntimeSocket { path: listening.socket.path.clone(), file: file_key(&other).unwrap() };
    let found = SocketPaths::default().compute(&[wrong], &[own_pod(7)]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn new_sockets_rescan_and_gone_pods_are_forgotten() {
    let first = listen("a.sock");
    let second = listen("b.sock");
    let pods = [own_pod(7)];
    let mut cache = SocketPaths::default();
    cache.compute(std::slice::from_ref(&first.socket), &pods);
    let scans = cache.scans();

    let both = cache.compute(&[second.socket.clone(), first.socket.clone()], &pods);
    assert!(cache.scans() > scans, "the socket set changed");
    assert_eq!(both.get(&key(7, &first.socket.path)), Some(&first.socket.file));
    assert_eq!(both.get(&key(7, &second.socket.path)), Some(&second.socket.file));
    let scans = cache.scans();
    assert_eq!(cache.compute(&[first.socket.clone(), second.socket.clone()], &pods), both, "order does not matter");
    assert_eq!(cache.scans(), scans);

    assert!(cache.compute(std::slice::from_ref(&first.socket), &[]).is_empty());
    assert!(cache.namespaces.is_empty());
}

#[test]
fn pods_without_processes_and_no_sockets_find_nothing() {
    let listening = listen("runtime.sock");
    let ghost = PodProcesses { tag: 3, cgroups: vec![listening.dir.path().join("no-such-cgroup")] };
    let mut cache = SocketPaths::default();
    assert!(cache.compute(std::slice::from_ref(&listening.socket), &[ghost]).is_empty());
    assert!(cache.compute(&[], &[own_pod(7)]).is_empty());
    assert_eq!(cache.scans(), 0);
}
