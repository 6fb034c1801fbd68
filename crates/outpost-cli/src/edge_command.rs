//! `outpost edge`: run the edge daemon, and look after it on the device (list, logs, restart, check).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use outpost_edge::config::EdgeConfig;
use outpost_edge::management;
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
            let config = EdgeConfig::load(&config)?;
            crate::hub_command::raise_open_files_limit();
            outpost_edge::daemon::run(config, crate::hub_command::shutdown_signal()).await
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
            let answer = management::request(
                &config.management_socket(),
                "POST",
                &format!("/modules/{}/restart", segment(&module)),
            )
            .await?;
            let status = answer.status;
            let text = answer.text().await?;
            if status != 200 {
                bail!("{}", message(&text));
            }
            println!("restarted {module}");
            Ok(())
        }
        EdgeCommand::SupportBundle { output, config } => {
            support_bundle(&EdgeConfig::load(&config)?, &output).await
        }
        EdgeCommand::Check { config } => crate::edge_check::check(&config).await,
        EdgeCommand::Stats { config } => {
            let config = EdgeConfig::load(&config)?;
            let text = management::request(&config.management_socket(), "GET", "/stats")
                .await?
                .text()
                .await?;
            let stats: Value =
                serde_json::from_str(&text).context("the daemon answered with invalid JSON")?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(())
        }
    }
}

fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| text.to_owned())
}

async fn list(config: &EdgeConfig, output: OutputFormat) -> anyhow::Result<()> {
    let answer = management::request(&config.management_socket(), "GET", "/modules").await?;
    let text = answer.text().await?;
    let listing: Value =
        serde_json::from_str(&text).context("the daemon answered with invalid JSON")?;
    let modules = listing
        .get("modules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
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
    let tail = tail.map(|n| format!("&tail={n}")).unwrap_or_default();
    let path = format!("/modules/{}/logs?follow={follow}{tail}", segment(module));
    let mut answer = management::request(&config.management_socket(), "GET", &path).await?;
    if answer.status != 200 {
        let text = answer.text().await?;
        bail!("{}", message(&text));
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
    let mut answer =
        management::request(&config.management_socket(), "GET", "/support-bundle").await?;
    if answer.status != 200 {
        let text = answer.text().await?;
        bail!("{}", message(&text));
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
