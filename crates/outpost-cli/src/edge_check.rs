//! `outpost edge check`: what an operator looks at first when a device misbehaves.

use std::path::Path;

use outpost_edge::config::{EdgeConfig, RuntimeConfig};
use outpost_edge::hub_client::HubClient;

/// The clock skew SAS tokens tolerate.
const MAX_SKEW_SECS: i64 = 300;

struct Report {
    failures: usize,
}

impl Report {
    fn line(&mut self, ok: bool, what: &str, detail: &str) {
        if !ok {
            self.failures += 1;
        }
        println!("{} {what}: {detail}", if ok { "ok  " } else { "FAIL" });
    }
}

/// Runs every check and fails if any does.
pub async fn check(config_path: &Path) -> anyhow::Result<()> {
    let mut report = Report { failures: 0 };
    let config = match EdgeConfig::load(config_path) {
        Ok(config) => {
            report.line(true, "configuration", &config_path.display().to_string());
            config
        }
        Err(error) => {
            report.line(false, "configuration", &error.to_string());
            anyhow::bail!("1 check failed");
        }
    };
    match crate::edge_command::certificates_in(&config.hub_ca) {
        Ok(count) => report.line(
            true,
            "hub CA",
            &format!("{} ({count} certificate(s))", config.hub_ca.display()),
        ),
        Err(error) => report.line(false, "hub CA", &error.to_string()),
    }
    let edge_ca = config.data_dir.join("pki").join("ca.pem");
    match crate::edge_command::certificates_in(&edge_ca) {
        Ok(_) => report.line(true, "edge CA", &edge_ca.display().to_string()),
        Err(_) => report.line(
            true,
            "edge CA",
            "not created yet (the daemon creates it on first start)",
        ),
    }
    match HubClient::new(&config) {
        Ok(hub) => match hub.reachable().await {
            Ok(Some(hub_time)) => {
                report.line(true, "hub", "reachable with this device's credentials");
                let skew = (chrono::Utc::now() - hub_time).num_seconds();
                report.line(
                    skew.abs() <= MAX_SKEW_SECS,
                    "clock",
                    &format!("{skew} s from the hub's clock (tokens allow ±{MAX_SKEW_SECS} s)"),
                );
            }
            Ok(None) => report.line(true, "hub", "reachable (no Date header to compare clocks)"),
            Err(error) => report.line(false, "hub", &error.to_string()),
        },
        Err(error) => report.line(false, "hub", &error.to_string()),
    }
    match &config.runtime {
        RuntimeConfig::Docker { socket, .. } => {
            let reachable = tokio::net::UnixStream::connect(socket).await;
            report.line(
                reachable.is_ok(),
                "runtime",
                &format!("docker at {}", socket.display()),
            );
        }
        RuntimeConfig::Process => report.line(true, "runtime", "native processes"),
    }
    let daemon =
        outpost_edge::management::request(&config.management_socket(), "GET", "/modules").await;
    report.line(
        daemon.is_ok(),
        "daemon",
        &config.management_socket().display().to_string(),
    );
    if report.failures > 0 {
        anyhow::bail!("{} check(s) failed", report.failures);
    }
    Ok(())
}
