use clap::{Parser, Subcommand};

use moat_lab::command::{self, LabCommand};
use moat_lab::{bench, burst, connect, sandbox, serve};

/// moat-lab: a local playground (a node with pods, a stand-in kubelet and an agent, on the
/// real kernel), usually run as `moat lab`.
#[derive(Parser)]
#[command(name = "moat lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Lab(LabCommand),
    /// Runs inside a lab pod: serves its container ports.
    #[command(name = "__pod-serve", hide = true)]
    PodServe(serve::ServeArgs),
    /// A lab pod's sandbox: makes the pod's namespaces and root, then holds them as PID 1.
    #[command(name = "__pod-sandbox", hide = true)]
    PodSandbox(sandbox::SandboxArgs),
    /// Runs inside a lab pod: floods UDP datagrams from one socket (event-path stress).
    #[command(name = "__pod-burst", hide = true)]
    PodBurst(burst::BurstArgs),
    /// Runs inside a lab pod: makes one connection attempt and prints the verdict.
    #[command(name = "__pod-connect", hide = true)]
    PodConnect(connect::ConnectArgs),
    /// Benchmark: per-packet cost of the programs under BPF_PROG_TEST_RUN (JSON).
    #[command(name = "__bench-datapath", hide = true)]
    BenchDatapath(bench::datapath::DatapathArgs),
    /// Benchmark: time and memory to compile a synthetic cluster (JSON).
    #[command(name = "__bench-compile", hide = true)]
    BenchCompile(bench::compile::CompileArgs),
    /// Benchmark: each moat program's runs and run time while a command runs (JSON).
    #[command(name = "__bench-prog-stats", hide = true)]
    BenchProgStats(bench::prog_stats::ProgStatsArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Lab(lab) => command::run(lab)?,
        Command::PodServe(args) => serve::run(args)?,
        Command::PodSandbox(args) => sandbox::run(args)?,
        Command::PodBurst(args) => burst::run(args)?,
        Command::PodConnect(args) => std::process::exit(connect::run(args)?),
        Command::BenchDatapath(args) => bench::datapath::run(args)?,
        Command::BenchCompile(args) => bench::compile::run(args)?,
        Command::BenchProgStats(args) => bench::prog_stats::run(args)?,
    }
    Ok(())
}
