//! `outpost hub ca`: the CA certificates a hub trusts device certificates to (X.509 `certificateAuthority`
//! identities). Like `outpost hub consumer-group`, it works on the hub's database through its data directory
//! (SQLite, or the PostgreSQL database `hub.json` names), whether or not the hub runs: the hub reads the CA
//! certificates at every X.509 CONNECT, so an addition or a removal applies to the next connection.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use outpost_hub::storage::transaction;
use outpost_hub::x509_auth::{add_ca, CaError, CaRecord};
use serde_json::json;

use crate::hub_command::open_engine;
use crate::output::OutputFormat;

/// `outpost hub ca`.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Add a CA certificate (one PEM certificate with `basicConstraints` CA, valid now).
    Add {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Its name: letters, digits, `-`, `_`, `.`, at most 64.
        name: String,
        /// The PEM file of the certificate.
        certificate: PathBuf,
    },
    /// List the CA certificates.
    List {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Output for people (`human`) or for scripts (`json`).
        #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
        output: OutputFormat,
    },
    /// Remove a CA certificate: devices whose certificates chain only to it can no longer connect.
    Remove {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Its name.
        name: String,
    },
}

/// Runs an `outpost hub ca` command.
pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Add {
            data_dir,
            name,
            certificate,
        } => {
            let pem = std::fs::read_to_string(&certificate)
                .with_context(|| format!("cannot read {}", certificate.display()))?;
            let record = CaRecord::new(&name, &pem, chrono::Utc::now())
                .with_context(|| format!("{} is refused", certificate.display()))?;
            let engine = open_engine(&data_dir)?;
            transaction(&*engine, |tables| add_ca(tables, &record))?;
            println!(
                "added CA certificate {name} ({}, SHA-1 {})",
                record.subject, record.thumbprint
            );
        }
        CaCommand::List { data_dir, output } => {
            let engine = open_engine(&data_dir)?;
            let records = transaction(&*engine, |tables| {
                tables.ca_certificates().map_err(CaError::from)
            })?;
            match output {
                OutputFormat::Json => {
                    let list: Vec<_> = records
                        .iter()
                        .map(|r| {
                            json!({
                                "name": r.name,
                                "subject": r.subject,
                                "thumbprint": r.thumbprint,
                                "thumbprintSha256": r.thumbprint_sha256,
                                "expiry": r.expiry.to_rfc3339(),
                                "added": r.added.to_rfc3339(),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                }
                OutputFormat::Human => {
                    for r in &records {
                        println!(
                            "{}  {}  SHA-1 {}  expires {}",
                            r.name,
                            r.subject,
                            r.thumbprint,
                            r.expiry.format("%Y-%m-%d")
                        );
                    }
                }
            }
        }
        CaCommand::Remove { data_dir, name } => {
            let engine = open_engine(&data_dir)?;
            let removed = transaction(&*engine, |tables| {
                tables.remove_ca_certificate(&name).map_err(CaError::from)
            })?;
            if !removed {
                anyhow::bail!("no CA certificate named {name}");
            }
            println!("removed CA certificate {name}");
        }
    }
    Ok(())
}
