//! `moat-test-apiserver`: the test API server as a process.

use clap::Parser;
use moat_testapi::{kubeconfig, load_path, serve, Store, StoreOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    name = "moat-test-apiserver",
    about = "Test Kubernetes API server (list/watch over plain HTTP)"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Custom resources to serve from the start, by CRD name
    /// (`clusternetworkpolicies.policy.networking.k8s.io`); others can be installed later with
    /// `POST /testapi/crds/<name>`.
    #[arg(long)]
    crd: Vec<String>,
    /// Manifest files or directories (YAML/JSON, multi-document, `kind: List`) to load at start.
    #[arg(long)]
    load: Vec<PathBuf>,
    /// Write a kubeconfig pointing at this server here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Write the bound port number here.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Start the global resourceVersion here (continue above a previous server's versions).
    #[arg(long, default_value_t = 1)]
    start_resource_version: u64,
    /// How many changes to keep for resuming watches and continuing lists.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
}

async fn run(args: Args) -> Result<(), String> {
    let store = Store::with_options(StoreOptions {
        start_resource_version: args.start_resource_version,
        history_limit: args.history,
        ..StoreOptions::default()
    });
    for name in &args.crd {
        let kind = moat_testapi::kinds::crd_by_name(name).ok_or_else(|| format!("--crd {name}: not a custom resource this server knows"))?;
        store.install(kind);
    }
    for path in &args.load {
        let n = load_path(&store, path).map_err(|e| e.to_string())?;
        tracing::info!(path = %path.display(), objects = n, "loaded manifests");
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let url = format!("http://{addr}");
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, kubeconfig(&url))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.port_file {
        std::fs::write(path, format!("{}\n", addr.port()))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    println!("listening on {url}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        res = serve(listener, store) => res.map_err(|e| e.to_string()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("moat-test-apiserver: {err}");
            ExitCode::FAILURE
        }
    }
}
