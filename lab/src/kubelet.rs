//! The lab's stand-in kubelet: `<node>/usr/bin/kubelet kubelet-run --name N`, a copy of
//! moat-lab with an inode of its own, in the cgroup `<lab cgroup>/kubelet`. Like a kubelet it
//! reads its credentials (current client certificate through the rotation symlink, serving
//! pair, kubeconfigs) every 2 s and then talks to the API server if the lab knows one; it
//! rotates its client certificate itself when asked; and it serves the runtime stand-in's
//! socket. `moat lab kubelet read|rotate` ask it over its control socket and return once it
//! has done so, so tests can check the guard's silence deterministically.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::node::{self, NodeLayout};
use super::fsutil::tail;
use super::state::{KubeletState, LabState};
use super::{cgroup, pki, process, LabError, NameArg};

const PERIOD: Duration = Duration::from_secs(2);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Subcommand)]
pub enum KubeletCommand {
    /// Rotate its client certificate as kubelet's certificate manager does (a new dated file,
    /// then the `kubelet-client-current.pem` symlink replaced atomically). Prints the new file.
    Rotate(NameArg),
    /// Make it read its credentials (and reach the API server) now; returns once it has.
    Read(NameArg),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub name: NameArg,
}

/// In the kubelet's command line, and nowhere else: the path of its executable is the lab's.
pub fn marker(lab: &str) -> String {
    format!("{} kubelet-run --name {lab}", NodeLayout::of(lab).kubelet_executable.display())
}

pub fn run_command(command: KubeletCommand) -> Result<(), LabError> {
    match command {
        KubeletCommand::Rotate(args) => {
            let answer = ask(&args.name, "rotate")?;
            println!("{answer}");
        }
        KubeletCommand::Read(args) => {
            ask(&args.name, "read")?;
            println!("kubelet of lab {} read its credentials", args.name);
        }
    }
    Ok(())
}

/// Sends one request over the control socket; the kubelet's answer after `ok `.
pub fn ask(lab: &str, request: &str) -> Result<String, LabError> {
    let layout = NodeLayout::of(lab);
    let socket = &layout.control_socket;
    let failed = |message: String| LabError::Usage(format!("kubelet of lab {lab} ({}): {message}", socket.display()));
    let mut stream = UnixStream::connect(socket).map_err(|e| failed(format!("connecting: {e}; is the lab up?")))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| failed(e.to_string()))?;
    stream.write_all(format!("{request}\n").as_bytes()).map_err(|e| failed(format!("sending: {e}")))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(|e| failed(format!("no answer: {e}")))?;
    let answer = answer.trim();
    match answer.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim().to_string()),
        None => Err(failed(answer.to_string())),
    }
}

/// Starts the stand-in kubelet (detached, in its cgroup) and waits until it answers.
pub fn start(lab: &str, pods_root: &Path) -> Result<KubeletState, LabError> {
    let layout = NodeLayout::of(lab);
    let dir = cgroup::kubelet_dir(pods_root);
    cgroup::create(&dir)?;
    let procs_path = dir.join("cgroup.procs");
    let procs = OpenOptions::new().write(true).open(&procs_path).map_err(|e| LabError::io("opening", &procs_path, e))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&layout.kubelet_log)
        .map_err(|e| LabError::io("opening", &layout.kubelet_log, e))?;
    let log_err = log.try_clone().map_err(|e| LabError::io("opening", &layout.kubelet_log, e))?;
    let mut command = Command::new(&layout.kubelet_executable);
    command.args(["kubelet-run", "--name", lab]).stdin(Stdio::null()).stdout(log).stderr(log_err);
    // SAFETY: setsid(2) and write(2) on an fd opened above are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::setsid() < 0 || libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|source| LabError::Spawn { command: marker(lab), source })?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ask(lab, "ping").is_ok() {
            return Ok(KubeletState { pid: child.id(), cgroup: dir });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Internal(format!(
                "the stand-in kubelet exited ({status}); log {}:\n{}",
                layout.kubelet_log.display(),
                tail(&layout.kubelet_log, 10)
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Internal(format!("the stand-in kubelet did not answer within {} s", READY_TIMEOUT.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops it (SIGTERM, then SIGKILL); found by its command line, so no state is needed.
pub fn stop(lab: &str) {
    let marker = marker(lab);
    for pid in process::find(&marker) {
        process::terminate(pid, &marker, Duration::from_secs(2));
    }
}

/// `moat-lab kubelet-run`: the stand-in kubelet process itself.
pub fn run(args: RunArgs) -> Result<(), LabError> {
    let lab = args.name.name;
    let layout = NodeLayout::of(&lab);
    let kubelet = Arc::new(Mutex::new(Kubelet { lab: lab.clone(), layout: layout.clone() }));
    let control = listen(&layout.control_socket)?;
    for socket in &layout.runtime_sockets {
        let runtime = listen(socket)?;
        // The runtime's socket accepts and hangs up: reaching it is what matters.
        std::thread::spawn(move || {
            for connection in runtime.incoming() {
                drop(connection);
            }
        });
    }
    let periodic = Arc::clone(&kubelet);
    std::thread::spawn(move || loop {
        std::thread::sleep(PERIOD);
        if let Ok(kubelet) = periodic.lock() {
            if let Err(error) = kubelet.read_credentials() {
                eprintln!("kubelet: {error}");
            }
        }
    });
    println!("kubelet[{}]: ready", std::process::id());
    for connection in control.incoming() {
        let Ok(stream) = connection else { continue };
        let answer = match kubelet.lock() {
            Ok(kubelet) => kubelet.answer(&stream),
            Err(_) => "error: lock poisoned".into(),
        };
        let mut stream = stream;
        let _ = stream.write_all(format!("{answer}\n").as_bytes());
    }
    Ok(())
}

fn listen(path: &Path) -> Result<UnixListener, LabError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(LabError::io("removing", path, error)),
        _ => {}
    }
    UnixListener::bind(path).map_err(|e| LabError::io("listening on", path, e))
}

struct Kubelet {
    lab: String,
    layout: NodeLayout,
}

impl Kubelet {
    fn answer(&self, stream: &UnixStream) -> String {
        let mut request = String::new();
        let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
        if BufReader::new(stream).read_line(&mut request).is_err() {
            return "error: no request".into();
        }
        let result = match request.trim() {
            "ping" => Ok(String::new()),
            "read" => self.read_credentials().map(|()| String::new()),
            "rotate" => pki::rotate_client(&self.lab, &self.layout.pki_dir).map(|file| file.display().to_string()),
            other => Err(LabError::Usage(format!("unknown request {other:?}"))),
        };
        match result {
            Ok(text) => format!("ok {text}"),
            Err(error) => format!("error: {error}"),
        }
    }

    /// What a kubelet does all the time: open and read its credentials, then reach the API
    /// server with them.
    fn read_credentials(&self) -> Result<(), LabError> {
        for file in self.layout.credentials() {
            let mut bytes = Vec::new();
            std::fs::File::open(&file)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| LabError::io("reading", &file, e))?;
        }
        let server = LabState::load(&self.lab).ok().and_then(|state| state.api_server);
        if let Some(address) = server.as_deref().and_then(node::host_port) {
            contact(&address);
        }
        Ok(())
    }
}

/// One request to the API server; failures are the server's business, not the kubelet's.
fn contact(address: &str) {
    use std::net::ToSocketAddrs;
    let Some(target) = address.to_socket_addrs().ok().and_then(|mut all| all.next()) else {
        return;
    };
    if let Ok(mut stream) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(request.as_bytes());
        let mut buffer = [0u8; 512];
        let _ = stream.read(&mut buffer);
    }
}
