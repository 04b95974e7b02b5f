use clap::{Parser, Subcommand};

use moat_agent::{bench, cli, explain, lab, runtime};

/// moat: tenant isolation and runtime guard for shared Kubernetes nodes, in eBPF.
#[derive(Parser)]
#[command(name = "moat", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: load the eBPF programs and keep the kernel in step with the cluster.
    Agent(runtime::AgentArgs),
    /// Explain what the datapath decides for a flow, and every rule that decided it.
    Explain(explain::ExplainArgs),
    /// A local playground: a node with pods (cgroups and namespaces), a stand-in kubelet and
    /// an agent, on the real kernel.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Follow flows and detections live, from the agent's admin socket.
    Observe(cli::observe::ObserveArgs),
    /// The agent's health: kernel capabilities, programs, maps, sync, lost events.
    Status(cli::status::StatusArgs),
    /// Runs inside a lab pod: serves its container ports.
    #[command(name = "__pod-serve", hide = true)]
    PodServe(lab::serve::ServeArgs),
    /// A lab pod's sandbox: makes the pod's namespaces and root, then holds them as PID 1.
    #[command(name = "__pod-sandbox", hide = true)]
    PodSandbox(lab::sandbox::SandboxArgs),
    /// Runs inside a lab pod: floods UDP datagrams from one socket (event-path stress).
    #[command(name = "__pod-burst", hide = true)]
    PodBurst(lab::burst::BurstArgs),
    /// Runs inside a lab pod: makes one connection attempt and prints the verdict.
    #[command(name = "__pod-connect", hide = true)]
    PodConnect(lab::connect::ConnectArgs),
    /// Benchmark: per-packet cost of the programs under BPF_PROG_TEST_RUN (JSON).
    #[command(name = "__bench-datapath", hide = true)]
    BenchDatapath(bench::datapath::DatapathArgs),
    /// Benchmark: time and memory to compile a synthetic cluster (JSON).
    #[command(name = "__bench-compile", hide = true)]
    BenchCompile(bench::compile::CompileArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => {
            init_json_logs();
            runtime::run(args)?
        }
        Command::Explain(args) => explain::run(args)?,
        Command::Lab(command) => lab::run(command)?,
        Command::Observe(args) => cli::observe::run(args)?,
        Command::Status(args) => cli::status::run(args)?,
        Command::PodServe(args) => lab::serve::run(args)?,
        Command::PodSandbox(args) => lab::sandbox::run(args)?,
        Command::PodBurst(args) => lab::burst::run(args)?,
        Command::PodConnect(args) => std::process::exit(lab::connect::run(args)?),
        Command::BenchDatapath(args) => bench::datapath::run(args)?,
        Command::BenchCompile(args) => bench::compile::run(args)?,
    }
    Ok(())
}

/// The agent logs, and reports events, as JSON lines on stdout.
fn init_json_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();
}
