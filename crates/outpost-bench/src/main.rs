//! `outpost-bench`: the benchmark harness. It runs the real `outpost` binary on loopback, drives it the way
//! services and devices do, prints the figures as Markdown tables and records them in `docs/benchmarks.md`.
//!
//! A benchmark, not a test: nothing here asserts a time. Start reading at [`Command`]: each subcommand is one
//! benchmark (a module with its own `Args`, resolved against the [`Profile`] into parameters, and a `run` that
//! returns a [`report::Section`]); `all` runs every one. The shared parts: [`hub_process`] starts and watches a
//! hub, [`service`] is the REST client, [`device`] the MQTT side, [`stats`] reduces latencies, [`system`] reads
//! memory and limits from `/proc`, and [`report`] writes the Markdown.

mod device;
mod edge;
mod edge_process;
mod eventhub;
mod fleet;
mod hub;
mod hub_process;
mod loadgen;
mod mosquitto;
mod report;
mod rumqttd;
mod service;
mod soak;
mod stats;
mod system;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use crate::report::{Provenance, Section};
use crate::system::{Machine, OpenFilesLimit};

/// Benchmarks of Outpost, run against the real `outpost` binary on loopback.
#[derive(Parser)]
#[command(name = "outpost-bench", about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every benchmark takes.
#[derive(clap::Args)]
struct CommonArgs {
    /// The `outpost` binary to benchmark (build it with `cargo build --release -p outpost-cli`).
    #[arg(long, global = true, default_value = "target/release/outpost")]
    outpost: PathBuf,
    /// A smoke run of a few seconds with small counts; its figures are printed, not recorded.
    #[arg(long, global = true)]
    quick: bool,
    /// Record the figures in this Markdown file [default: docs/benchmarks.md of the workspace].
    #[arg(long, global = true)]
    report: Option<PathBuf>,
    /// Print the figures without recording them.
    #[arg(long, global = true, conflicts_with = "report")]
    no_report: bool,
}

/// The benchmarks.
#[derive(Subcommand)]
enum Command {
    /// The hub: desired-patch propagation latency, and device connections held with memory per connection.
    Hub(hub::HubArgs),
    /// The edge daemon: routed throughput and latency against mosquitto and rumqttd, footprint, offline backlog, deployment.
    Edge(edge::EdgeArgs),
    /// The Event Hubs-compatible endpoint: events/s per partition consumer from 1,000 devices' telemetry, and
    /// the latency from a device's PUBACK to the consumer.
    Eventhub(eventhub::EventhubArgs),
    /// The hub's memory under PINGREQ and twin-GET floods from clients that never read, and 1,000 idle HTTPS
    /// connections.
    Soak(soak::SoakArgs),
    /// The registry at fleet size: devices imported in bulk, and queries over all of them.
    Fleet(fleet::FleetArgs),
    /// Every benchmark, each with its defaults for the profile.
    All,
}

/// How big a run is: a full run whose figures are recorded, or a quick smoke run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The counts and durations the recorded figures use.
    Full,
    /// Small counts, a few seconds: checks that the harness and the hub work.
    Quick,
}

/// What every benchmark gets from the harness.
pub struct Bench {
    /// The `outpost` binary.
    pub outpost: PathBuf,
    /// Full or quick.
    pub profile: Profile,
    /// The open-files limit the harness and its hubs run with.
    pub open_files: OpenFilesLimit,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the whole process: two enabled providers make rustls panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let common = cli.common;
    if !common.outpost.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p outpost-cli`, or pass --outpost PATH",
            common.outpost.display()
        );
    }
    let profile = if common.quick {
        Profile::Quick
    } else {
        Profile::Full
    };
    let open_files = system::raise_open_files_limit();
    eprintln!("open files limit: {open_files}");
    let bench = Bench {
        outpost: common.outpost.clone(),
        profile,
        open_files,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let sections: Vec<Section> = runtime.block_on(async {
        match &cli.command {
            Command::Hub(args) => Ok::<_, anyhow::Error>(vec![hub::run(&bench, args).await?]),
            Command::Edge(args) => Ok(vec![edge::run(&bench, args).await?]),
            Command::Soak(args) => Ok(vec![soak::run(&bench, args).await?]),
            Command::Eventhub(args) => Ok(vec![eventhub::run(&bench, args).await?]),
            Command::Fleet(args) => Ok(vec![fleet::run(&bench, args).await?]),
            Command::All => Ok(vec![
                hub::run(&bench, &hub::HubArgs::default()).await?,
                edge::run(&bench, &edge::EdgeArgs::default()).await?,
                soak::run(&bench, &soak::SoakArgs::default()).await?,
                eventhub::run(&bench, &eventhub::EventhubArgs::default()).await?,
            ]),
        }
    })?;

    let provenance = Provenance {
        machine: Machine::describe().to_string(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: command_line(),
    };
    for section in &sections {
        println!("{}", section.to_markdown(&provenance));
    }
    let report = match (&common.report, common.no_report, profile) {
        (Some(path), false, _) => Some(path.clone()),
        (None, false, Profile::Full) => Some(default_report()),
        // --no-report, or a quick run not told where to record.
        _ => None,
    };
    if let Some(path) = report {
        report::write(&path, &sections, &provenance)?;
        eprintln!("figures recorded in {}", path.display());
    }
    Ok(())
}

/// `docs/benchmarks.md` of the workspace this harness was built in.
fn default_report() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/outpost-bench → the workspace root.
    let root = crate_dir.ancestors().nth(2).unwrap_or(crate_dir);
    root.join("docs").join("benchmarks.md")
}

/// The command line as it was typed (arguments with spaces quoted).
fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                format!("'{arg}'")
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
