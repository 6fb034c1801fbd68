//! `filter`: a sample Outpost module written with `outpost-sdk`.
//!
//! It reads temperature readings on its input `input1` and forwards to its output `output1` those whose
//! machine temperature is above the desired property `TemperatureThreshold` (25 °C until the twin says
//! otherwise), marked `MessageType: Alert`. It reports the threshold it applies as the reported property
//! `TemperatureThreshold`. It connects as every module does: from the edge runtime's environment, or for
//! local runs from `EdgeHubConnectionString` and `EdgeModuleCACertificateFile`. SIGTERM and Ctrl-C
//! disconnect cleanly.

mod rule;

use std::process::ExitCode;

use outpost_sdk::{ClientError, ClientOptions, ModuleClient};
use serde_json::json;

/// The input readings arrive on.
const INPUT: &str = "input1";
/// The output alerts are sent to.
const OUTPUT: &str = "output1";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: container and process-module logs are files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "stopping");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), ClientError> {
    let options = ClientOptions {
        product_info: concat!("filter/", env!("CARGO_PKG_VERSION")).into(),
        ..ClientOptions::default()
    };
    let client = ModuleClient::from_environment_with(options).await?;
    tracing::info!(
        device = client.device_id(),
        module = client.module_id(),
        "connected"
    );
    let mut desired = client.desired_properties().await?;
    let mut inputs = client.inputs().await?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let mut threshold = rule::DEFAULT_THRESHOLD;
    loop {
        tokio::select! {
            patch = desired.next() => {
                let Some(patch) = patch else { return Err(stopped(&client)) };
                threshold = rule::threshold_after(threshold, &patch);
                tracing::info!(threshold, version = patch.version, "threshold applied");
                match client.patch_reported(json!({"TemperatureThreshold": threshold})).await {
                    Err(error) if error.is_fatal() => return Err(error),
                    Err(error) => tracing::warn!(%error, "the threshold in force could not be reported"),
                    Ok(_) => {}
                }
            }
            message = inputs.next() => {
                let Some(message) = message else { return Err(stopped(&client)) };
                if message.input_name() != Some(INPUT) {
                    tracing::debug!(input = ?message.input_name(), "a message on another input was ignored");
                    continue;
                }
                let Some(alert) = rule::forward(&message, threshold) else {
                    continue;
                };
                match client.send_output(OUTPUT, alert).await {
                    Err(error) if error.is_fatal() => return Err(error),
                    Err(error) => tracing::warn!(%error, "an alert was not sent"),
                    Ok(()) => {}
                }
            }
            () = &mut shutdown => {
                tracing::info!("shutting down");
                client.close().await;
                return Ok(());
            }
        }
    }
}

/// Why the client's streams ended.
fn stopped(client: &ModuleClient) -> ClientError {
    client.close_reason().unwrap_or(ClientError::Closed)
}

/// Resolves on SIGTERM (what `docker stop` and the edge runtime send) or Ctrl-C. As PID 1 in a container
/// the process has no default SIGTERM handler, so it must listen itself.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
