//! `simulated-temperature-sensor`: a sample Outpost module written with `outpost-sdk`.
//!
//! It sends a simulated reading (machine temperature and pressure, ambient temperature and humidity) to its
//! output `temperatureOutput` every `SendInterval` seconds while `SendData` is true (both desired
//! properties, reported back once applied), and answers the direct method `reset` by cooling the machine
//! back down. It connects as every module does: from the edge runtime's environment, or for local runs
//! from `EdgeHubConnectionString` and `EdgeModuleCACertificateFile`. Optional: `MessageCount` stops sending
//! after that many messages; `RUST_LOG` sets the log level. SIGTERM and Ctrl-C disconnect cleanly.

mod settings;
mod simulation;

use std::process::ExitCode;

use outpost_sdk::{ClientError, ClientOptions, Message, MethodCall, ModuleClient};
use serde_json::json;
use settings::Settings;
use simulation::Simulation;
use tokio::time::Instant;

/// The output readings are sent to.
const OUTPUT: &str = "temperatureOutput";

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
    let message_count = match std::env::var("MessageCount") {
        Ok(count) => Some(count.parse::<u64>().map_err(|_| {
            ClientError::Configuration(format!("MessageCount={count:?} is not a number"))
        })?),
        Err(_) => None,
    };
    let options = ClientOptions {
        product_info: concat!("simulated-temperature-sensor/", env!("CARGO_PKG_VERSION")).into(),
        ..ClientOptions::default()
    };
    let client = ModuleClient::from_environment_with(options).await?;
    tracing::info!(
        device = client.device_id(),
        module = client.module_id(),
        "connected"
    );
    let mut desired = client.desired_properties().await?;
    let mut methods = client.direct_methods().await?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let mut settings = Settings::default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut simulation = Simulation::new(seed);
    let mut sent: u64 = 0;
    let mut next_send = Instant::now() + settings.send_interval;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_send) => {
                next_send += settings.send_interval;
                let more = message_count.is_none_or(|count| sent < count);
                if settings.send_data && more {
                    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    let message = Message::json(&simulation.next_reading(time))
                        .with_property("sequenceNumber", sent.to_string());
                    match client.send_output(OUTPUT, message).await {
                        Ok(()) => sent += 1,
                        Err(error) if error.is_fatal() => return Err(error),
                        // Not sent this time (the hub is unreachable); the next reading is a new one.
                        Err(error) => tracing::warn!(%error, "a reading was not sent"),
                    }
                }
            }
            patch = desired.next() => {
                let Some(patch) = patch else { return Err(stopped(&client)) };
                settings.apply(&patch);
                // A new interval takes effect now rather than after the old one ran out.
                next_send = Instant::now() + settings.send_interval;
                tracing::info!(?settings, version = patch.version, "desired properties applied");
                report(&client, &settings).await?;
            }
            call = methods.next() => {
                let Some(call) = call else { return Err(stopped(&client)) };
                answer(call, &mut simulation).await?;
            }
            () = &mut shutdown => {
                tracing::info!("shutting down");
                client.close().await;
                return Ok(());
            }
        }
    }
}

/// Reports the settings in force; a refusal is logged, a stopped client ends the module.
async fn report(client: &ModuleClient, settings: &Settings) -> Result<(), ClientError> {
    match client.patch_reported(settings.reported()).await {
        Ok(_) => Ok(()),
        Err(error) if error.is_fatal() => Err(error),
        Err(error) => {
            tracing::warn!(%error, "the settings in force could not be reported");
            Ok(())
        }
    }
}

/// Answers a direct method: `reset` cools the machine down; anything else is not found.
async fn answer(call: MethodCall, simulation: &mut Simulation) -> Result<(), ClientError> {
    let result = match call.name() {
        "reset" => {
            simulation.reset();
            tracing::info!("reset");
            call.respond(200, json!({"message": "the machine temperature was reset"}))
                .await
        }
        other => {
            let message = format!("no method {other}; this module answers reset");
            call.respond(404, json!({"message": message})).await
        }
    };
    match result {
        Err(error) if error.is_fatal() => Err(error),
        Err(error) => {
            tracing::warn!(%error, "a method answer was not delivered");
            Ok(())
        }
        Ok(()) => Ok(()),
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
