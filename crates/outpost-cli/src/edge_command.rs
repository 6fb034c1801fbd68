//! `outpost edge`: run the edge daemon, and look after it on the device (list, logs, restart, check).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use outpost_edge::config::EdgeConfig;
use outpost_edge::management::api::{ManagementRequest, ModuleList, Restarted, Stats};
use outpost_edge::management::{self, refusal_message};
use serde_json::Value;

use crate::output::{print_table, OutputFormat};

/// Where the daemon's settings are unless `--config` says otherwise.
const DEFAULT_CONFIG: &str = "/etc/outpost/config.toml";

/// The `outpost edge` subcommands.
#[derive(Subcommand)]
pub enum EdgeCommand {
    /// Run the edge daemon: the agent, the module runtimes and the workload API.
    Run {
        /// The settings file (TOML, see docs/operations.md).
        #[arg(long, env = "OUTPOST_EDGE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// List the deployed modules with their status.
    List {
        /// The settings file.
        #[arg(long, env = "OUTPOST_EDGE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Output for people or for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
        output: OutputFormat,
    },
    /// Print a module's logs.
    Logs {
        /// The module.
        module: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// The settings file.
        #[arg(long, env = "OUTPOST_EDGE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Restart a module.
    Restart {
        /// The module.
        module: String,
        /// The settings file.
        #[arg(long, env = "OUTPOST_EDGE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the edge hub's store-and-forward counters (queued, delivered, expired, dropped) as JSON.
    Stats {
        /// The settings file.
        #[arg(long, env = "OUTPOST_EDGE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Write a support bundle (tar.gz) to attach to a ticket: settings and deployment with secrets redacted,
    /// module logs, check and stats output, versions.
    SupportBundle {
        /// Where to write the bundle.
        #[arg(long)]
        output: PathBuf,
        /// The settings file.
        #[arg(long, env = "OUTPOST_EDGE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check the settings, the hub, the clock, the certificates and the runtime.
    Check {
        /// The settings file.
        #[arg(long, env = "OUTPOST_EDGE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

pub async fn run(command: EdgeCommand) -> anyhow::Result<()> {
    match command {
        EdgeCommand::Run { config } => {
            hand_over_to_edged(&config)?;
            let config = EdgeConfig::load(&config)?;
            crate::hub_command::raise_open_files_limit();
            outpost_edge::daemon::run(config, crate::hub_command::shutdown_signal()).await?;
            Ok(())
        }
        EdgeCommand::List { config, output } => list(&EdgeConfig::load(&config)?, output).await,
        EdgeCommand::Logs {
            module,
            tail,
            follow,
            config,
        } => logs(&EdgeConfig::load(&config)?, &module, tail, follow).await,
        EdgeCommand::Restart { module, config } => {
            let config = EdgeConfig::load(&config)?;
            let request = ManagementRequest::Restart { module: &module };
            let answer: Restarted = management::call(&config.management_socket(), &request).await?;
            println!("restarted {}", answer.restarted);
            Ok(())
        }
        EdgeCommand::SupportBundle { output, config } => {
            support_bundle(&EdgeConfig::load(&config)?, &output).await
        }
        EdgeCommand::Check { config } => crate::edge_check::check(&config).await,
        EdgeCommand::Stats { config } => {
            let config = EdgeConfig::load(&config)?;
            let stats: Stats =
                management::call(&config.management_socket(), &ManagementRequest::Stats).await?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(())
        }
    }
}

/// Set (to anything) to run the daemon in this process even where `outpost-edged` is installed.
const IN_PROCESS: &str = "OUTPOST_EDGE_IN_PROCESS";

/// Replaces this process with `outpost-edged` from the directory of this executable, if it is there and
/// [`IN_PROCESS`] is not set: the same daemon with a smaller resident set, under the same process id. Returns
/// only when there is nothing to hand over to; an `exec` that fails is an error.
fn hand_over_to_edged(config: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os(IN_PROCESS).is_some() {
        return Ok(());
    }
    let Some(edged) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("outpost-edged")))
        .filter(|path| path.is_file())
    else {
        return Ok(());
    };
    tracing::debug!(path = %edged.display(), "handing over to the lean edge daemon");
    let error = std::process::Command::new(&edged)
        .arg("--config")
        .arg(config)
        .exec();
    Err(error).with_context(|| format!("cannot run {}", edged.display()))
}

async fn list(config: &EdgeConfig, output: OutputFormat) -> anyhow::Result<()> {
    let listing: ModuleList =
        management::call(&config.management_socket(), &ManagementRequest::ListModules).await?;
    let modules: Vec<Value> = listing
        .modules
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let columns = [
        ("NAME", "name"),
        ("STATUS", "status"),
        ("DESCRIPTION", "description"),
        ("IMAGE", "image"),
    ];
    print_table(output, &modules, &columns);
    Ok(())
}

async fn logs(
    config: &EdgeConfig,
    module: &str,
    tail: Option<usize>,
    follow: bool,
) -> anyhow::Result<()> {
    let request = ManagementRequest::Logs {
        module,
        tail,
        follow,
    };
    let mut answer = management::send(&config.management_socket(), &request).await?;
    if answer.status != 200 {
        bail!("{}", refusal_message(&answer.bytes().await?));
    }
    let mut stdout = std::io::stdout();
    while let Some(chunk) = answer.next_chunk().await {
        stdout.write_all(&chunk)?;
        stdout.flush()?;
    }
    Ok(())
}

/// Asks the daemon for its support bundle and writes it to `output`, readable by this user only (it holds
/// logs), replacing the file only once the whole bundle has arrived.
async fn support_bundle(config: &EdgeConfig, output: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut answer = management::send(
        &config.management_socket(),
        &ManagementRequest::SupportBundle,
    )
    .await?;
    if answer.status != 200 {
        bail!("{}", refusal_message(&answer.bytes().await?));
    }
    let partial = output.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let mut size = 0;
    while let Some(chunk) = answer.next_chunk().await {
        file.write_all(&chunk)?;
        size += chunk.len();
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(&partial, output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!("wrote {} ({size} bytes)", output.display());
    Ok(())
}

/// Whether a file exists and parses as PEM certificates.
pub fn certificates_in(path: &Path) -> anyhow::Result<usize> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let count = rustls_pemfile::certs(&mut pem.as_slice()).flatten().count();
    if count == 0 {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(count)
}
