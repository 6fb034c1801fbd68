//! `outpost edge check`: what an operator looks at first when a device misbehaves, and where its disk goes.

use std::path::Path;

use outpost_edge::agent::image_gc::{read_ledger, LEDGER_FILE};
use outpost_edge::config::{EdgeConfig, RuntimeConfig};
use outpost_edge::edgehub::free_space::disk_space;
use outpost_edge::hub_client::HubClient;
use outpost_edge::runtime::docker::disk_usage::disk_usage;

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

/// The device's own certificate, when it provisions itself with one: readable, its key's, valid now.
fn identity_certificate(report: &mut Report, config: &EdgeConfig) {
    use outpost_edge::config::AttestationConfig;
    use outpost_edge::device_certificate::DeviceCertificate;

    let Some(AttestationConfig::X509(attestation)) =
        config.provisioning.as_ref().map(|p| &p.attestation)
    else {
        return;
    };
    let now = outpost_pki::unix_now();
    match DeviceCertificate::load(&attestation.files(), now) {
        Ok(certificate) => report.line(
            true,
            "identity certificate",
            &format!(
                "CN={}, SHA-256 {}, expires in {} day(s)",
                certificate.common_name,
                certificate.thumbprint,
                (certificate.not_after - now) / 86_400
            ),
        ),
        Err(error) => report.line(false, "identity certificate", &error.to_string()),
    }
}

/// Runs every check and fails if any does.
pub async fn check(config_path: &Path) -> anyhow::Result<()> {
    let mut report = Report { failures: 0 };
    let config = match EdgeConfig::load(config_path) {
        Ok(config) => {
            report.line(true, "configuration", &config_path.display().to_string());
            identity_certificate(&mut report, &config);
            if config.provisioning.is_some() {
                let config = outpost_edge::provisioning::with_stored_assignment(config);
                let state = match config.device() {
                    Ok(device) => format!("{} on {}", device.device_id, device.hub_hostname),
                    Err(_) => "not yet: the daemon registers at its first start".into(),
                };
                report.line(true, "provisioning", &state);
                config
            } else {
                config
            }
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
    certificates(&mut report, &config);
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
    let daemon = outpost_edge::management::call::<outpost_edge::management::api::ModuleList>(
        &config.management_socket(),
        &outpost_edge::management::api::ManagementRequest::ListModules,
    )
    .await;
    report.line(
        daemon.is_ok(),
        "daemon",
        &config.management_socket().display().to_string(),
    );
    disk(&mut report, &config).await;
    if report.failures > 0 {
        anyhow::bail!("{} check(s) failed", report.failures);
    }
    Ok(())
}

/// The disk use of each part the daemon keeps, and the free space the message log's guard watches.
async fn disk(report: &mut Report, config: &EdgeConfig) {
    let edgehub = config.data_dir.join("edgehub");
    let log = edgehub.join("log");
    report.line(
        true,
        "disk: message log",
        &format!("{} in {}", size(tree_bytes(&log)), log.display()),
    );
    let twins: u64 = ["edgehub.sqlite", "edgehub.sqlite-wal", "edgehub.sqlite-shm"]
        .iter()
        .map(|f| std::fs::metadata(edgehub.join(f)).map_or(0, |m| m.len()))
        .sum();
    report.line(
        true,
        "disk: twin store",
        &format!(
            "{} in {}",
            size(twins),
            edgehub.join("edgehub.sqlite").display()
        ),
    );
    let (modules, bytes) = process_logs(&config.data_dir.join("processes"));
    let rotation = config.disk.log_rotation();
    report.line(
        true,
        "disk: process module logs",
        &format!(
            "{} for {modules} module(s) (each rotated at {} keeping {} files)",
            size(bytes),
            size(rotation.max_bytes),
            rotation.max_files
        ),
    );
    if let RuntimeConfig::Docker { socket, .. } = &config.runtime {
        let pulled: Vec<String> = read_ledger(&config.agent_dir().join(LEDGER_FILE))
            .map(|l| l.images.into_keys().collect())
            .unwrap_or_default();
        let device = config.device().map(|d| d.device_id).unwrap_or_default();
        match disk_usage(socket, &device, &pulled).await {
            Ok(usage) => {
                let logs: Vec<String> = usage
                    .container_logs
                    .iter()
                    .map(|(module, bytes)| match bytes {
                        Ok(bytes) => format!("{module} {}", size(*bytes)),
                        Err(why) => format!("{module} not readable ({why})"),
                    })
                    .collect();
                report.line(
                    true,
                    "disk: container logs",
                    &if logs.is_empty() {
                        "no module containers".to_owned()
                    } else {
                        logs.join(", ")
                    },
                );
                let present: Vec<&(String, Option<u64>)> =
                    usage.pulled.iter().filter(|(_, s)| s.is_some()).collect();
                report.line(
                    true,
                    "disk: images",
                    &format!(
                        "{} in {} image(s); {} pulled by Outpost for modules ({}), removed after {} s unused",
                        size(usage.image_bytes),
                        usage.image_count,
                        present.len(),
                        size(present.iter().filter_map(|(_, s)| *s).sum()),
                        config.disk.image_gc_unused_secs
                    ),
                );
            }
            Err(error) => report.line(false, "disk: images", &format!("docker: {error}")),
        }
    }
    let watched = if log.exists() {
        log
    } else {
        config.data_dir.clone()
    };
    let min_free = config.disk.min_free_mib.saturating_mul(1 << 20);
    match disk_space(&watched) {
        Ok(space) => {
            let low = min_free > 0 && space.free_bytes < min_free;
            let mut detail = format!(
                "{} free of {} on the file system of {} (min_free_mib = {})",
                size(space.free_bytes),
                size(space.total_bytes),
                watched.display(),
                config.disk.min_free_mib
            );
            if low {
                detail.push_str(": below it, the edge hub refuses new messages");
            }
            report.line(!low, "disk: free space", &detail);
        }
        Err(error) => report.line(
            false,
            "disk: free space",
            &format!("{}: {error}", watched.display()),
        ),
    }
}

/// How many process modules have logs under `dir`, and their bytes (rotated files included).
fn process_logs(dir: &Path) -> (usize, u64) {
    let mut modules = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let files: Vec<u64> = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().starts_with("output.log"))
            .filter_map(|f| f.metadata().ok().map(|m| m.len()))
            .collect();
        if !files.is_empty() {
            modules += 1;
            bytes += files.iter().sum::<u64>();
        }
    }
    (modules, bytes)
}

/// The bytes of the files under `path`.
fn tree_bytes(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_bytes(&e.path()))
            .sum(),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

/// A size for people: `512 B`, `12.3 KiB`, `4.0 MiB`, `1.2 GiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Each certificate the device depends on, with its subject, end and state: the edge CA (and the ones it
/// replaced, kept in the trust bundle until they expire), the edge hub's server certificate, the hub's CA.
///
/// A certificate in force past 80 % of its life fails the check: the daemon renews it then, so it is stopped or
/// cannot write its `pki/` directory. A replaced CA past 80 % is expected and only shown.
fn certificates(report: &mut Report, config: &EdgeConfig) {
    use outpost_pki::CertificateState;
    let now = outpost_pki::unix_now();
    let pki = config.data_dir.join("pki");
    let files = [
        ("edge CA", pki.join("ca.pem")),
        (
            "edge hub server certificate",
            pki.join(outpost_edge::edgehub::SERVER_CERTIFICATE_FILE),
        ),
        ("hub CA", config.hub_ca.clone()),
    ];
    for (what, path) in files {
        let infos = match std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|pem| Ok(outpost_pki::inspect_pem(&pem)?))
        {
            Ok(infos) => infos,
            Err(_) if what != "hub CA" => {
                report.line(
                    true,
                    what,
                    &format!(
                        "{} not created yet (the daemon creates it at start)",
                        path.display()
                    ),
                );
                continue;
            }
            Err(error) => {
                report.line(false, what, &format!("{}: {error}", path.display()));
                continue;
            }
        };
        // A server chain is its leaf then the CA: only the leaf is the server's. A bundle's first CA is the one
        // in force; the edge CA's next ones were replaced by it.
        let shown = if what.ends_with("server certificate") {
            &infos[..infos.len().min(1)]
        } else {
            &infos[..]
        };
        for (index, info) in shown.iter().enumerate() {
            let replaced = what == "edge CA" && index > 0;
            let state = info.state(now);
            let not_after = chrono::DateTime::from_timestamp(info.not_after, 0)
                .map_or_else(|| info.not_after.to_string(), |t| t.to_rfc3339());
            let detail = match (state, replaced) {
                (CertificateState::Valid, _) => "valid".to_owned(),
                (CertificateState::Expiring, true) => {
                    "replaced, kept in the trust bundle until it expires".to_owned()
                }
                (CertificateState::Expiring, false) => {
                    "expiring: past 80 % of its life and not renewed (is the daemon running?)"
                        .to_owned()
                }
                (CertificateState::Expired, _) => "EXPIRED".to_owned(),
            };
            let ok = state == CertificateState::Valid
                || (replaced && state == CertificateState::Expiring);
            report.line(
                ok,
                what,
                &format!("{}, not after {not_after}, {detail}", info.subject),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(10 << 20), "10.0 MiB");
        assert_eq!(size(1536), "1.5 KiB");
    }

    #[test]
    fn process_logs_count_rotated_files_per_module() {
        let dir = std::env::temp_dir().join(format!("outpost-check-{}", std::process::id()));
        for (module, files) in [
            ("a", &["output.log", "output.log.1"][..]),
            ("b", &["spec.json"][..]),
        ] {
            std::fs::create_dir_all(dir.join(module)).unwrap();
            for file in files {
                std::fs::write(dir.join(module).join(file), b"0123456789").unwrap();
            }
        }
        let counted = (process_logs(&dir), tree_bytes(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(counted, ((1, 20), 30));
    }
}
