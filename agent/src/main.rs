use clap::{Parser, Subcommand};

use moat_agent::{cli, runtime};

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
    Explain(cli::explain::ExplainArgs),
    /// A local playground: a node with pods (cgroups and namespaces), a stand-in kubelet and
    /// an agent, on the real kernel. Runs the separate `moat-lab` binary.
    Lab(cli::lab::LabArgs),
    /// Follow flows and detections live, from the agent's admin socket.
    Observe(cli::observe::ObserveArgs),
    /// The agent's health: kernel capabilities, programs, maps, sync, lost events.
    Status(cli::status::StatusArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => {
            init_json_logs();
            runtime::run(args)?
        }
        Command::Explain(args) => cli::explain::run(args)?,
        Command::Lab(args) => cli::lab::run(args)?,
        Command::Observe(args) => cli::observe::run(args)?,
        Command::Status(args) => cli::status::run(args)?,
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
