//! `outpost deployment ...`: automatic configurations and IoT Edge deployments (`/configurations`), which the
//! hub applies to every device its target condition selects. `outpost deploy` applies one manifest to one
//! device by hand.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::output::{print_object, print_table};
use crate::service::{segment, ServiceClient};
use crate::HubArgs;

const DEPLOYMENT_FIELDS: &[&str] = &[
    "id",
    "targetCondition",
    "priority",
    "createdTimeUtc",
    "lastUpdatedTimeUtc",
    "etag",
    "systemMetrics.results.targetedCount",
    "systemMetrics.results.appliedCount",
    "systemMetrics.results.reportedSuccessfulCount",
    "systemMetrics.results.reportedFailedCount",
];

/// `outpost deployment ...`
#[derive(Subcommand)]
pub enum DeploymentCommand {
    /// Create an automatic deployment (or device configuration) that the hub applies to every device its
    /// target condition selects.
    Create {
        /// The deployment id (lower case).
        id: String,
        /// The content: a deployment manifest (`{"modulesContent": ...}`), or `{"deviceContent": ...}` or
        /// `{"moduleContent": ...}`, optionally inside `{"content": ...}`.
        #[arg(long)]
        content: PathBuf,
        /// Which devices it targets (`tags.site = 'north'`, `*` for all).
        #[arg(long)]
        target_condition: String,
        /// Among the deployments that target a device, the highest priority wins.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// A layered deployment: property paths applied on top of the device's base deployment.
        #[arg(long)]
        layered: bool,
        /// A custom metric, `NAME=QUERY` (`SELECT deviceId FROM devices WHERE ...`); repeatable.
        #[arg(long = "metric", value_name = "NAME=QUERY")]
        metrics: Vec<String>,
    },
    /// List deployments.
    List,
    /// Show a deployment with its metrics.
    Show {
        /// The deployment id.
        id: String,
    },
    /// Delete a deployment (devices keep what it gave them only where another deployment does not apply).
    Delete {
        /// The deployment id.
        id: String,
    },
}

/// Runs `outpost deployment ...`.
pub async fn deployment(args: &HubArgs, command: DeploymentCommand) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    match command {
        DeploymentCommand::Create {
            id,
            content,
            target_condition,
            priority,
            layered,
            metrics,
        } => {
            let text = std::fs::read_to_string(&content)
                .with_context(|| format!("cannot read {}", content.display()))?;
            let document: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", content.display()))?;
            let content = document.get("content").cloned().unwrap_or(document);
            check_layering(&content, layered)?;
            let body = json!({
                "id": id,
                "schemaVersion": "1.0",
                "content": content,
                "targetCondition": target_condition,
                "priority": priority,
                "labels": {},
                "metrics": {"queries": metric_queries(&metrics)?},
            });
            let created = client
                .call(
                    Method::PUT,
                    &format!("/configurations/{}", segment(&id)),
                    Some(&body),
                    None,
                )
                .await?;
            print_object(args.output, &created, DEPLOYMENT_FIELDS);
        }
        DeploymentCommand::List => {
            let list = client
                .call(Method::GET, "/configurations", None, None)
                .await?;
            let rows = list.as_array().cloned().unwrap_or_default();
            let columns = [
                ("ID", "id"),
                ("PRIORITY", "priority"),
                ("TARGETED", "systemMetrics/results/targetedCount"),
                ("APPLIED", "systemMetrics/results/appliedCount"),
                ("TARGET CONDITION", "targetCondition"),
            ];
            print_table(args.output, &rows, &columns);
        }
        DeploymentCommand::Show { id } => {
            let shown = client
                .call(
                    Method::GET,
                    &format!("/configurations/{}", segment(&id)),
                    None,
                    None,
                )
                .await?;
            print_object(args.output, &shown, DEPLOYMENT_FIELDS);
        }
        DeploymentCommand::Delete { id } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/configurations/{}", segment(&id)),
                    None,
                    Some("*"),
                )
                .await?;
            if args.output == crate::output::OutputFormat::Json {
                println!("{}", json!({ "deleted": id }));
            }
        }
    }
    Ok(())
}

/// Checks `--layered` against the content, as the hub tells them apart: a base deployment holds the whole
/// `$edgeAgent` desired properties, a layered one only paths under them.
fn check_layering(content: &Value, layered: bool) -> anyhow::Result<()> {
    let Some(modules) = content.get("modulesContent") else {
        if layered {
            bail!("--layered is for deployments (modulesContent)");
        }
        return Ok(());
    };
    let base = modules
        .get("$edgeAgent")
        .and_then(|agent| agent.get("properties.desired"))
        .is_some();
    match (base, layered) {
        (true, true) => bail!(
            "a layered deployment sets paths (\"properties.desired.modules.NAME\"), not the whole $edgeAgent"
        ),
        (false, false) => bail!(
            "this content has no whole $edgeAgent desired properties: pass --layered for a layered deployment"
        ),
        _ => Ok(()),
    }
}

/// Reads `--metric NAME=QUERY` arguments.
fn metric_queries(metrics: &[String]) -> anyhow::Result<Map<String, Value>> {
    metrics
        .iter()
        .map(|metric| match metric.split_once('=') {
            Some((name, query)) if !name.trim().is_empty() => {
                Ok((name.trim().to_owned(), Value::from(query.trim())))
            }
            _ => bail!("--metric takes NAME=QUERY, not {metric:?}"),
        })
        .collect()
}
