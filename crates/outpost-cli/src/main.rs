//! `outpost`: the hub, the edge runtime and the operator commands in one binary.
//!
//! `hub` runs the cloud half (see `outpost-hub`); the other commands talk to a running hub's REST API through
//! [`service::ServiceClient`], finding it by `--hub` (a service connection string) and trusting `--ca`.

mod deployment;
mod edge_check;
mod edge_command;
mod enrollment_command;
mod hub_ca;
mod hub_command;
mod job_command;
mod operator;
mod output;
mod query_command;
mod quickstart;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::output::OutputFormat;

/// The allocator `outpost-edged` uses (see there), so that `outpost edge run` without it beside behaves the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Outpost: an IoT edge platform that speaks Azure IoT.
#[derive(Parser)]
#[command(name = "outpost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the operator commands reach the hub.
#[derive(clap::Args, Clone)]
pub struct HubArgs {
    /// The hub's service connection string (`HostName=..;SharedAccessKeyName=..;SharedAccessKey=..`).
    #[arg(
        long = "hub",
        env = "OUTPOST_HUB_CONNECTION_STRING",
        hide_env_values = true,
        global = true
    )]
    pub connection_string: Option<String>,
    /// The CA certificate (PEM) that the hub's TLS certificate chains to.
    #[arg(long = "ca", env = "OUTPOST_HUB_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Output for people (`human`) or for scripts (`json`).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human, global = true)]
    pub output: OutputFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a hub and an edge device with the sample modules on this machine, and show them at work.
    Quickstart {
        #[command(flatten)]
        args: quickstart::QuickstartArgs,
    },
    /// Run or inspect the hub.
    Hub {
        #[command(subcommand)]
        command: hub_command::HubCommand,
    },
    /// Run or look after the edge daemon on this device.
    Edge {
        #[command(subcommand)]
        command: edge_command::EdgeCommand,
    },
    /// Manage devices in the hub's registry.
    Device {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: operator::DeviceCommand,
    },
    /// Manage module identities.
    Module {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: operator::ModuleCommand,
    },
    /// Read and update device and module twins.
    Twin {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: operator::TwinCommand,
    },
    /// Query the twins of the fleet in IoT Hub's query language, every page.
    Query {
        #[command(flatten)]
        hub: HubArgs,
        #[command(flatten)]
        args: query_command::QueryArgs,
    },
    /// Apply a deployment manifest to an edge device.
    Deploy {
        #[command(flatten)]
        hub: HubArgs,
        /// The edge device.
        device: String,
        /// The manifest (`{"modulesContent": {...}}`, Azure IoT Edge format).
        manifest: PathBuf,
    },
    /// Manage automatic deployments and device configurations, applied to every device they target.
    Deployment {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: deployment::DeploymentCommand,
    },
    /// Invoke direct methods.
    Method {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: operator::MethodCommand,
    },
    /// Send cloud-to-device messages.
    Message {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: operator::MessageCommand,
    },
    /// Schedule twin updates and direct methods over many devices, and follow them.
    Job {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: job_command::JobCommand,
    },
    /// Manage the provisioning service's individual enrollments (devices that register by themselves).
    Enrollment {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: enrollment_command::EnrollmentCommand,
    },
    /// Manage the provisioning service's enrollment groups.
    EnrollmentGroup {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        command: enrollment_command::EnrollmentGroupCommand,
    },
    /// Print device-to-cloud messages as JSON lines.
    Monitor {
        #[command(flatten)]
        hub: HubArgs,
        #[command(flatten)]
        args: operator::MonitorArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| "info".into())
    };
    // The quickstart tells its own story on the terminal; the daemons' logs go to a file unless --verbose.
    // Where an edge daemon runs in this process, every line is also kept in the bounded ring its support bundle
    // reads (`outpost_edge::daemon_log`); other commands have no use for it.
    let runs_edge_daemon = matches!(
        &cli.command,
        Command::Quickstart { .. }
            | Command::Edge {
                command: edge_command::EdgeCommand::Run { .. }
            }
    );
    let recent = runs_edge_daemon.then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| outpost_edge::daemon_log::RECENT.writer())
    });
    let registry = tracing_subscriber::registry().with(filter()).with(recent);
    match &cli.command {
        Command::Quickstart { args } if !args.verbose => match quickstart_log(args) {
            Ok(file) => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(std::sync::Mutex::new(file)),
                )
                .init(),
            Err(error) => {
                eprintln!("error: cannot open the quickstart's log file: {error}");
                return ExitCode::FAILURE;
            }
        },
        _ => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
    // One crypto provider for the whole process: two enabled providers make rustls panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn quickstart_log(args: &quickstart::QuickstartArgs) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(args.dir()?)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.log_file()?)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Quickstart { args } => quickstart::run(args).await,
        Command::Hub { command } => hub_command::run(command).await,
        Command::Edge { command } => edge_command::run(command).await,
        Command::Device { hub, command } => operator::device(&hub, command).await,
        Command::Module { hub, command } => operator::module(&hub, command).await,
        Command::Twin { hub, command } => operator::twin(&hub, command).await,
        Command::Query { hub, args } => query_command::run(&hub, &args).await,
        Command::Deploy {
            hub,
            device,
            manifest,
        } => operator::deploy(&hub, &device, &manifest).await,
        Command::Deployment { hub, command } => deployment::deployment(&hub, command).await,
        Command::Method { hub, command } => operator::method(&hub, command).await,
        Command::Message { hub, command } => operator::message(&hub, command).await,
        Command::Monitor { hub, args } => operator::monitor(&hub, &args).await,
        Command::Job { hub, command } => job_command::job(&hub, command).await,
        Command::Enrollment { hub, command } => enrollment_command::enrollment(&hub, command).await,
        Command::EnrollmentGroup { hub, command } => {
            enrollment_command::enrollment_group(&hub, command).await
        }
    }
}
