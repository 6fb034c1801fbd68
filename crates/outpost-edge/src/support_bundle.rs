//! The support bundle: one tar.gz an operator attaches to a ticket, built here for both `outpost edge
//! support-bundle` (through the management socket) and `$edgeAgent`'s `UploadSupportBundle`.
//!
//! It holds the settings and the deployment in force with secrets redacted, the agent's report, the edge hub's
//! counters, `outpost edge check`'s output, versions, the daemon's own recent log ([`crate::daemon_log`]) and
//! each module's recent log (bounded). Everything that goes in passes through [`redact_text`] or [`redact_json`].

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde_json::{json, Value};

use crate::agent::methods::log_filter::LogFilter;
use crate::agent::methods::logs::{self, Layout, ModuleQuery, Origin};
use crate::agent::methods::wire::{LogContentType, LogEncoding};
use crate::agent::Agent;
use crate::edgehub::EdgeHub;

/// The most lines of one module's log in a bundle.
pub const MODULE_LOG_LINES: usize = 1000;
/// The most bytes of one module's log in a bundle.
pub const MODULE_LOG_BYTES: usize = 1 << 20;
/// How long `outpost edge check` may run for the bundle.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// What replaces a secret.
const REDACTED: &str = "<redacted>";

/// What a bundle is made from: the daemon's agent and edge hub.
#[derive(Clone)]
pub struct BundleSources {
    /// The agent: settings, deployment, report, runtime.
    pub agent: Arc<Agent>,
    /// The edge hub: store-and-forward counters.
    pub edge_hub: Arc<EdgeHub>,
}

/// Which module logs go in.
#[derive(Debug, Clone, Default)]
pub struct BundleOptions {
    /// Module lines written since.
    pub since: Option<DateTime<Utc>>,
    /// Module lines written until.
    pub until: Option<DateTime<Utc>>,
    /// Leave module logs out (Azure's `edgeRuntimeOnly`).
    pub runtime_only: bool,
}

/// Errors of building a bundle.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the support bundle: {0}")]
pub struct BundleError(#[from] std::io::Error);

/// Builds the bundle: the bytes of a tar.gz.
pub async fn build(
    sources: &BundleSources,
    options: &BundleOptions,
) -> Result<Vec<u8>, BundleError> {
    let agent = &sources.agent;
    let now = Utc::now();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    files.push(("README.txt".into(), readme(now).into_bytes()));
    files.push(("versions.json".into(), pretty(&versions(agent))));
    files.push((
        "settings.toml".into(),
        settings(agent.config.source.as_deref()).into_bytes(),
    ));
    let deployment = match agent.lkg.load() {
        Ok(Some(deployment)) => {
            json!({"version": deployment.version, "desired": redact_json(&deployment.desired)})
        }
        Ok(None) => json!({"message": "no deployment accepted yet"}),
        Err(error) => {
            json!({"message": format!("cannot read the last-known-good deployment: {error}")})
        }
    };
    files.push(("deployment.json".into(), pretty(&deployment)));
    agent.refresh_report().await;
    let report = redact_json(&agent.reported.borrow().clone());
    files.push(("agent-reported.json".into(), pretty(&report)));
    files.push((
        "stats.json".into(),
        pretty(&crate::management::stats_document(&sources.edge_hub)),
    ));
    files.push((
        "check.txt".into(),
        check(agent.config.source.as_deref()).await.into_bytes(),
    ));
    files.push(("daemon.log".into(), daemon_log(None).into_bytes()));
    if !options.runtime_only {
        for (module, text) in module_logs(agent, options).await {
            files.push((format!("logs/{module}.log"), text.into_bytes()));
        }
    }
    let tar = tokio::task::spawn_blocking(move || archive(&files, now))
        .await
        .map_err(std::io::Error::other)??;
    Ok(tar)
}

fn pretty(value: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn archive(files: &[(String, Vec<u8>)], now: DateTime<Utc>) -> std::io::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    let root = format!("outpost-support-bundle-{}", now.format("%Y%m%dT%H%M%SZ"));
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(u64::try_from(now.timestamp()).unwrap_or(0));
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("{root}/{name}"), bytes.as_slice())?;
    }
    tar.into_inner()?.finish()
}

fn readme(now: DateTime<Utc>) -> String {
    format!(
        "Outpost edge support bundle, made {now}.\n\
         \n\
         versions.json        Outpost's version, the OS and the module runtime\n\
         settings.toml        the daemon's settings file, secrets redacted\n\
         deployment.json      the deployment in force (the last-known-good $edgeAgent desired properties), secrets redacted\n\
         agent-reported.json  the $edgeAgent reported properties: each module's status, exit code, restarts\n\
         stats.json           the edge hub's store-and-forward counters (outpost edge stats)\n\
         check.txt            the output of outpost edge check\n\
         daemon.log           the daemon's own most recent log lines, as it also writes them to stderr: at most {} lines\n\
         \x20                    and {} KiB (under systemd, older ones are in `journalctl -u <its unit>`)\n\
         logs/MODULE.log      each module's most recent output: at most {MODULE_LOG_LINES} lines and {} KiB\n\
         \n\
         Secrets (shared access keys and signatures, passwords, tokens, registry credentials) are replaced by\n\
         {REDACTED}. Module logs are included as the modules wrote them (with the same redaction); they may hold\n\
         personal data.\n",
        crate::daemon_log::MAX_LINES,
        crate::daemon_log::MAX_BYTES / 1024,
        MODULE_LOG_BYTES / 1024
    )
}

fn versions(agent: &Agent) -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    json!({
        "outpost": env!("CARGO_PKG_VERSION"),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "kernel": kernel,
        "runtime": agent.runtime.kind(),
        "daemonStarted": agent.started.to_rfc3339(),
    })
}

fn settings(source: Option<&Path>) -> String {
    let Some(path) = source else {
        return "# the daemon was not started from a settings file\n".into();
    };
    match std::fs::read_to_string(path) {
        Ok(text) => format!(
            "# {}, secrets redacted\n{}",
            path.display(),
            redact_text(&text)
        ),
        Err(error) => format!("# cannot read {}: {error}\n", path.display()),
    }
}

/// `outpost edge check` on the daemon's settings, run as a child of this same binary.
async fn check(source: Option<&Path>) -> String {
    let Some(path) = source else {
        return "outpost edge check was not run: the daemon was not started from a settings file\n"
            .into();
    };
    let exe = match std::env::current_exe() {
        // The lean daemon has no `edge check`: the `outpost` beside it has.
        Ok(exe) if exe.file_name().is_some_and(|n| n == "outpost-edged") => {
            exe.with_file_name("outpost")
        }
        Ok(exe) => exe,
        Err(error) => return format!("cannot find the outpost binary: {error}\n"),
    };
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["edge", "check", "--config"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(CHECK_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => redact_text(&format!(
            "{}{}(exit status: {})\n",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            output.status
        )),
        Ok(Err(error)) => format!("cannot run outpost edge check: {error}\n"),
        Err(_) => format!("outpost edge check did not finish within {CHECK_TIMEOUT:?}\n"),
    }
}

/// The daemon's own recent log lines ([`crate::daemon_log::RECENT`]), the last `tail` of them, redacted: what
/// the bundle holds as `daemon.log` and the management API serves.
pub fn daemon_log(tail: Option<usize>) -> String {
    redact_text(&crate::daemon_log::RECENT.text(tail))
}

/// Each deployed module's recent log (or why it could not be read), redacted.
async fn module_logs(agent: &Agent, options: &BundleOptions) -> Vec<(String, String)> {
    let modules = agent.deployed_module_names().await;
    let origin = Origin {
        hub: &agent.device.hub_hostname,
        device: &agent.device.device_id,
    };
    let mut layout = Layout::upload(LogContentType::Text, LogEncoding::None);
    layout.budget = MODULE_LOG_BYTES;
    let mut found = Vec::new();
    for module in modules {
        let query = ModuleQuery {
            module: module.clone(),
            filter: LogFilter {
                since: options.since,
                until: options.until,
                ..LogFilter::default()
            },
            tail: Some(MODULE_LOG_LINES),
        };
        let text = match logs::read(agent.runtime.as_ref(), &query, layout, origin).await {
            Ok(selection) => {
                let text = logs::render(&selection, layout, origin, &module);
                redact_text(&String::from_utf8_lossy(&text))
            }
            Err(error) => format!("{error}\n"),
        };
        found.push((module, text));
    }
    found
}

/// `NAME=value` pairs whose name says secret (`SharedAccessKey=`, `PASSWORD=`), SAS signatures, and TOML or
/// YAML settings named like secrets.
static SECRET_PAIR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b([a-z0-9_]*(?:key|password|passwd|secret|token)[a-z0-9_]*=)[^;&\s,\x22']+")
        .expect("a valid pattern")
});
static SAS_SIGNATURE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(sig=)[^&\s\x22',;]+").expect("a valid pattern"));
static SECRET_SETTING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?im)^(\s*[a-z0-9_]*(?:key|password|passwd|secret|token)[a-z0-9_]*\s*[=:]\s*).+$")
        .expect("a valid pattern")
});
static SECRET_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(password|passwd|secret|token|key$|^key|_key|accesskey|connectionstring|credential|signature)")
        .expect("a valid pattern")
});

/// Text with secrets replaced: settings lines and `NAME=value` pairs named like secrets, and SAS signatures.
pub fn redact_text(text: &str) -> String {
    let text = SECRET_SETTING.replace_all(text, format!("${{1}}\"{REDACTED}\""));
    let text = SECRET_PAIR.replace_all(&text, format!("${{1}}{REDACTED}"));
    SAS_SIGNATURE
        .replace_all(&text, format!("${{1}}{REDACTED}"))
        .into_owned()
}

/// A JSON document with every value under a field named like a secret replaced (registry credentials, keys,
/// passwords, `env` entries such as `DB_PASSWORD`), and [`redact_text`] applied to every other string (a
/// `createOptions` string may hold `Env` pairs).
pub fn redact_json(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .map(|(name, inner)| {
                    let inner = if SECRET_FIELD.is_match(name) {
                        redact_all(inner)
                    } else {
                        redact_json(inner)
                    };
                    (name.clone(), inner)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_json).collect()),
        Value::String(text) => Value::String(redact_text(text)),
        other => other.clone(),
    }
}

/// Every scalar inside `value` replaced, the shape kept.
fn redact_all(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .map(|(name, inner)| (name.clone(), redact_all(inner)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_all).collect()),
        Value::Null => Value::Null,
        _ => Value::String(REDACTED.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_log_is_the_rings_last_lines_with_secrets_redacted() {
        let ring = &crate::daemon_log::RECENT;
        ring.push("2026-12-02T00:00:00Z  INFO start: edge hub listening");
        ring.push(
            "2026-12-02T00:00:01Z  WARN bad settings connection_string=\"HostName=h;DeviceId=d;\
             SharedAccessKey=c2VrcmV0LWtleQ==\" url=https://b/c?sv=1&sig=c2lnbmF0dXJl%2B",
        );
        let last = daemon_log(Some(1));
        assert_eq!(last.lines().count(), 1, "{last}");
        assert!(!last.contains("c2VrcmV0LWtleQ"), "{last}");
        assert!(!last.contains("c2lnbmF0dXJl"), "{last}");
        assert!(last.contains("SharedAccessKey=<redacted>"), "{last}");
        assert!(daemon_log(None).contains("edge hub listening"));
    }

    #[test]
    fn a_connection_string_loses_its_key_and_keeps_the_rest() {
        let settings = "connection_string = \"HostName=hub.local;DeviceId=edge-1;SharedAccessKey=c2VjcmV0Cg==\"\n\
                        hub_ca = \"/etc/outpost/ca.pem\"\n";
        let redacted = redact_text(settings);
        assert!(!redacted.contains("c2VjcmV0Cg=="), "{redacted}");
        assert!(redacted.contains("HostName=hub.local;DeviceId=edge-1;SharedAccessKey=<redacted>"));
        assert!(redacted.contains("hub_ca = \"/etc/outpost/ca.pem\""));
    }

    #[test]
    fn settings_named_like_secrets_and_sas_signatures_are_redacted() {
        let text = "api_token = \"abc\"\nurl = \"https://a.blob/c?sv=1&sig=s%2Bg&se=2\"\nenv PASSWORD=hunter2 next";
        let redacted = redact_text(text);
        for secret in ["abc", "s%2Bg", "hunter2"] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        assert!(redacted.contains("se=2") && redacted.contains("next"));
    }

    #[test]
    fn a_deployment_loses_registry_passwords_and_secret_env_values() {
        let deployment = json!({
            "runtime": {"settings": {"registryCredentials": {"acr": {"address": "r.io", "username": "u", "password": "p4ss"}}}},
            "modules": {"filter": {
                "env": {"DB_PASSWORD": {"value": "p4ss2"}, "LEVEL": {"value": "debug"}},
                "settings": {"image": "r.io/filter:1", "createOptions": "{\"Env\":[\"API_KEY=k3y\"]}"}
            }}
        });
        let redacted = redact_json(&deployment).to_string();
        for secret in ["p4ss", "p4ss2", "k3y", "\"u\""] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        assert!(redacted.contains("r.io/filter:1") && redacted.contains("debug"));
    }
}
