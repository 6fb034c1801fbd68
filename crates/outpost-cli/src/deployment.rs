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
    "rollout.waves",
    "rollout.healthyForSecs",
    "rollout.waveTimeoutSecs",
    "rollout.maxFailures",
    "rollout.healthQuery",
    "rollout.state.phase",
    "rollout.state.wave",
    "rollout.state.waves",
    "rollout.state.counts.waiting",
    "rollout.state.counts.updating",
    "rollout.state.counts.healthy",
    "rollout.state.counts.failed",
    "rollout.state.counts.rolledBack",
    "rollout.state.counts.left",
    "rollout.state.failures",
    "rollout.state.supersededBy",
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
        /// Roll out in waves: cumulative device counts or percentages of the targeted devices (`1,10%,100%`).
        #[arg(long, value_name = "WAVES")]
        rollout: Option<String>,
        /// How long every device of a wave must stay healthy before the next wave (`60s`, `5m`).
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "60s",
            requires = "rollout"
        )]
        healthy_for: String,
        /// How long a wave may take before its devices that are not healthy count as failed (`10m`).
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "10m",
            requires = "rollout"
        )]
        wave_timeout: String,
        /// How many failed devices a wave tolerates.
        #[arg(long, default_value_t = 0, requires = "rollout")]
        max_failures: usize,
        /// A condition a healthy device's twin or one of its module twins matches
        /// (`properties.reported.selfTest = 'ok'`).
        #[arg(long, value_name = "COND", requires = "rollout")]
        health_query: Option<String>,
    },
    /// Pause a deployment's rollout: devices keep what they have, no wave is judged.
    Pause {
        /// The deployment id.
        id: String,
    },
    /// Resume a paused rollout (the current wave gets its whole timeout again).
    Resume {
        /// The deployment id.
        id: String,
    },
    /// Abort a rollout: the current wave goes back to what it had before.
    Abort {
        /// The deployment id.
        id: String,
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
            rollout,
            healthy_for,
            wave_timeout,
            max_failures,
            health_query,
        } => {
            let text = std::fs::read_to_string(&content)
                .with_context(|| format!("cannot read {}", content.display()))?;
            let document: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", content.display()))?;
            let content = document.get("content").cloned().unwrap_or(document);
            check_layering(&content, layered)?;
            let mut body = json!({
                "id": id,
                "schemaVersion": "1.0",
                "content": content,
                "targetCondition": target_condition,
                "priority": priority,
                "labels": {},
                "metrics": {"queries": metric_queries(&metrics)?},
            });
            if let Some(waves) = rollout {
                body["rollout"] = json!({
                    "waves": waves.split(',').map(str::trim).collect::<Vec<_>>(),
                    "healthyForSecs": seconds(&healthy_for)?,
                    "waveTimeoutSecs": seconds(&wave_timeout)?,
                    "maxFailures": max_failures,
                    "healthQuery": health_query,
                });
            }
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
        DeploymentCommand::Pause { id } => rollout_command(args, &client, &id, "pause").await?,
        DeploymentCommand::Resume { id } => rollout_command(args, &client, &id, "resume").await?,
        DeploymentCommand::Abort { id } => rollout_command(args, &client, &id, "abort").await?,
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

/// Sends a rollout command and prints the deployment it answers.
async fn rollout_command(
    args: &HubArgs,
    client: &ServiceClient,
    id: &str,
    command: &str,
) -> anyhow::Result<()> {
    let shown = client
        .call(
            Method::POST,
            &format!("/configurations/{}/rollout/{command}", segment(id)),
            None,
            None,
        )
        .await?;
    print_object(args.output, &shown, DEPLOYMENT_FIELDS);
    Ok(())
}

/// Reads a duration (`90`, `90s`, `10m`, `2h`) as seconds.
fn seconds(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration (90s, 10m, 2h)"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => bail!("{text:?} is not a duration (90s, 10m, 2h)"),
    };
    Ok(number * unit)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_minutes_or_hours() {
        assert_eq!(seconds("90").unwrap(), 90);
        assert_eq!(seconds("60s").unwrap(), 60);
        assert_eq!(seconds("10m").unwrap(), 600);
        assert_eq!(seconds("2h").unwrap(), 7200);
        assert!(seconds("10 minutes").is_err());
        assert!(seconds("m").is_err());
    }
}
