//! The operator commands: registry, twins, deployments, methods, messages and the event monitor.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use outpost_core::ConnectionString;
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{print_object, print_table, OutputFormat};
use crate::service::{segment, ServiceClient};
use crate::HubArgs;

const DEVICE_FIELDS: &[&str] = &[
    "deviceId",
    "status",
    "connectionState",
    "capabilities.iotEdge",
    "deviceScope",
    "generationId",
    "etag",
    "authentication.symmetricKey.primaryKey",
    "authentication.symmetricKey.secondaryKey",
];
const MODULE_FIELDS: &[&str] = &[
    "deviceId",
    "moduleId",
    "managedBy",
    "connectionState",
    "generationId",
    "etag",
    "authentication.symmetricKey.primaryKey",
    "authentication.symmetricKey.secondaryKey",
];

/// `outpost device ...`
#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Create a device (keys are generated unless given).
    Create {
        /// The device id.
        id: String,
        /// Make it an edge device.
        #[arg(long)]
        edge: bool,
        /// The edge device this device connects through.
        #[arg(long)]
        parent: Option<String>,
        /// The primary key (base64); generated when absent.
        #[arg(long)]
        primary_key: Option<String>,
        /// The secondary key (base64); generated when absent.
        #[arg(long)]
        secondary_key: Option<String>,
    },
    /// Show a device.
    Show {
        /// The device id.
        id: String,
    },
    /// List devices.
    List,
    /// Delete a device with its modules.
    Delete {
        /// The device id.
        id: String,
    },
    /// Print a device's connection string.
    ConnectionString {
        /// The device id.
        id: String,
    },
}

/// `outpost module ...`
#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Create a module identity.
    Create {
        /// The device.
        device: String,
        /// The module name.
        module: String,
        /// Who manages it (for example `IotEdge`).
        #[arg(long)]
        managed_by: Option<String>,
    },
    /// Show a module identity.
    Show {
        /// The device.
        device: String,
        /// The module name.
        module: String,
    },
    /// List the modules of a device.
    List {
        /// The device.
        device: String,
    },
    /// Delete a module identity.
    Delete {
        /// The device.
        device: String,
        /// The module name.
        module: String,
    },
    /// Print a module's connection string.
    ConnectionString {
        /// The device.
        device: String,
        /// The module name.
        module: String,
    },
}

/// `outpost twin ...`
#[derive(Subcommand)]
pub enum TwinCommand {
    /// Show a device or module twin.
    Show {
        /// The device.
        device: String,
        /// The module, for a module twin.
        #[arg(long)]
        module: Option<String>,
    },
    /// Merge a patch into a twin: `{"properties":{"desired":{..}}}` and/or `{"tags":{..}}`; any other object is
    /// taken as a desired-properties patch. `null` deletes a key. `--tags` and `--desired` add to the patch.
    Update {
        /// The device.
        device: String,
        /// The patch (JSON); optional with `--tags` or `--desired`.
        patch: Option<String>,
        /// Tags to merge (JSON object).
        #[arg(long)]
        tags: Option<String>,
        /// Desired properties to merge (JSON object).
        #[arg(long)]
        desired: Option<String>,
        /// The module, for a module twin.
        #[arg(long)]
        module: Option<String>,
        /// Apply only if the twin still has this etag.
        #[arg(long)]
        etag: Option<String>,
    },
}

/// `outpost method ...`
#[derive(Subcommand)]
pub enum MethodCommand {
    /// Invoke a direct method and print its answer.
    Invoke {
        /// The device.
        device: String,
        /// The method name.
        method: String,
        /// The module, for a module method.
        #[arg(long)]
        module: Option<String>,
        /// The payload (JSON).
        #[arg(long, default_value = "null")]
        payload: String,
        /// Seconds to wait for the answer (5 to 300).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Seconds to wait for the target to come online (0 to 300).
        #[arg(long, default_value_t = 0)]
        connect_timeout: u64,
    },
}

/// `outpost message ...`
#[derive(Subcommand)]
pub enum MessageCommand {
    /// Send a cloud-to-device message.
    Send {
        /// The device.
        device: String,
        /// The message body (text).
        body: String,
        /// An application property, `key=value` (repeatable).
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// The message id (generated when absent).
        #[arg(long)]
        message_id: Option<String>,
        /// The correlation id.
        #[arg(long)]
        correlation_id: Option<String>,
        /// The content type.
        #[arg(long)]
        content_type: Option<String>,
    },
}

/// `outpost monitor` options.
#[derive(Args)]
pub struct MonitorArgs {
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds (fails if `--count` messages have not arrived by then).
    #[arg(long)]
    timeout: Option<u64>,
    /// Only messages from this device.
    #[arg(long)]
    device: Option<String>,
    /// Only messages from this module (of any device, or of `--device`).
    #[arg(long)]
    module: Option<String>,
    /// Start at the oldest stored message instead of the ones arriving from now on.
    #[arg(long)]
    from_start: bool,
    /// Twin change events too (`"messageSource": "twinChangeEvents"`), not only device-to-cloud messages.
    #[arg(long)]
    twin_changes: bool,
}

pub async fn device(args: &HubArgs, command: DeviceCommand) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    match command {
        DeviceCommand::Create {
            id,
            edge,
            parent,
            primary_key,
            secondary_key,
        } => {
            let mut body = json!({
                "deviceId": id,
                "status": "enabled",
                "authentication": {"type": "sas", "symmetricKey": {"primaryKey": primary_key.unwrap_or_default(), "secondaryKey": secondary_key.unwrap_or_default()}},
                "capabilities": {"iotEdge": edge},
            });
            if let Some(parent) = parent {
                body["parentDeviceId"] = parent.into();
            }
            let device = client
                .call(
                    Method::PUT,
                    &format!("/devices/{}", segment(&id)),
                    Some(&body),
                    None,
                )
                .await?;
            print_object(args.output, &device, DEVICE_FIELDS);
        }
        DeviceCommand::Show { id } => {
            let device = client
                .call(
                    Method::GET,
                    &format!("/devices/{}", segment(&id)),
                    None,
                    None,
                )
                .await?;
            print_object(args.output, &device, DEVICE_FIELDS);
        }
        DeviceCommand::List => {
            let devices = client.call(Method::GET, "/devices", None, None).await?;
            let rows = devices.as_array().cloned().unwrap_or_default();
            let columns = [
                ("DEVICE", "deviceId"),
                ("STATUS", "status"),
                ("CONNECTION", "connectionState"),
                ("EDGE", "capabilities/iotEdge"),
            ];
            print_table(args.output, &rows, &columns);
        }
        DeviceCommand::Delete { id } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/devices/{}", segment(&id)),
                    None,
                    Some("*"),
                )
                .await?;
            done(args.output, &json!({"deleted": id}));
        }
        DeviceCommand::ConnectionString { id } => {
            let device = client
                .call(
                    Method::GET,
                    &format!("/devices/{}", segment(&id)),
                    None,
                    None,
                )
                .await?;
            let key = primary_key(&device)?;
            print_connection_string(
                args.output,
                &ConnectionString::device(&client.host_name, &id, key),
            );
        }
    }
    Ok(())
}

pub async fn module(args: &HubArgs, command: ModuleCommand) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    let path = |device: &str, module: &str| {
        format!("/devices/{}/modules/{}", segment(device), segment(module))
    };
    match command {
        ModuleCommand::Create {
            device,
            module,
            managed_by,
        } => {
            let mut body = json!({
                "deviceId": device,
                "moduleId": module,
                "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
            });
            if let Some(managed_by) = managed_by {
                body["managedBy"] = managed_by.into();
            }
            let created = client
                .call(Method::PUT, &path(&device, &module), Some(&body), None)
                .await?;
            print_object(args.output, &created, MODULE_FIELDS);
        }
        ModuleCommand::Show { device, module } => {
            let shown = client
                .call(Method::GET, &path(&device, &module), None, None)
                .await?;
            print_object(args.output, &shown, MODULE_FIELDS);
        }
        ModuleCommand::List { device } => {
            let modules = client
                .call(
                    Method::GET,
                    &format!("/devices/{}/modules", segment(&device)),
                    None,
                    None,
                )
                .await?;
            let rows = modules.as_array().cloned().unwrap_or_default();
            let columns = [
                ("MODULE", "moduleId"),
                ("MANAGED BY", "managedBy"),
                ("CONNECTION", "connectionState"),
            ];
            print_table(args.output, &rows, &columns);
        }
        ModuleCommand::Delete { device, module } => {
            client
                .call(Method::DELETE, &path(&device, &module), None, Some("*"))
                .await?;
            done(
                args.output,
                &json!({"deleted": format!("{device}/{module}")}),
            );
        }
        ModuleCommand::ConnectionString { device, module } => {
            let shown = client
                .call(Method::GET, &path(&device, &module), None, None)
                .await?;
            let key = primary_key(&shown)?;
            print_connection_string(
                args.output,
                &ConnectionString::module(&client.host_name, &device, &module, key),
            );
        }
    }
    Ok(())
}

fn twin_path(device: &str, module: Option<&str>) -> String {
    match module {
        Some(module) => format!("/twins/{}/modules/{}", segment(device), segment(module)),
        None => format!("/twins/{}", segment(device)),
    }
}

pub async fn twin(args: &HubArgs, command: TwinCommand) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    let twin = match command {
        TwinCommand::Show { device, module } => {
            client
                .call(
                    Method::GET,
                    &twin_path(&device, module.as_deref()),
                    None,
                    None,
                )
                .await?
        }
        TwinCommand::Update {
            device,
            patch,
            tags,
            desired,
            module,
            etag,
        } => {
            let body = twin_patch(patch.as_deref(), tags.as_deref(), desired.as_deref())?;
            let etag = etag.unwrap_or_else(|| "*".to_owned());
            client
                .call(
                    Method::PATCH,
                    &twin_path(&device, module.as_deref()),
                    Some(&body),
                    Some(&etag),
                )
                .await?
        }
    };
    // A twin is nested JSON: people read it best as JSON too.
    println!("{}", serde_json::to_string_pretty(&twin)?);
    Ok(())
}

/// The body of a twin PATCH from `outpost twin update`'s patch, `--tags` and `--desired`.
fn twin_patch(
    patch: Option<&str>,
    tags: Option<&str>,
    desired: Option<&str>,
) -> anyhow::Result<Value> {
    let object = |text: &str, what: &str| -> anyhow::Result<Value> {
        let value: Value =
            serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON"))?;
        if !value.is_object() {
            bail!("{what} must be a JSON object");
        }
        Ok(value)
    };
    let mut body = match patch {
        Some(patch) => {
            let patch = object(patch, "the patch")?;
            if patch.get("properties").is_some() || patch.get("tags").is_some() {
                patch
            } else {
                json!({"properties": {"desired": patch}})
            }
        }
        None if tags.is_none() && desired.is_none() => {
            bail!("give a patch, --tags or --desired")
        }
        None => json!({}),
    };
    if let Some(tags) = tags {
        body["tags"] = object(tags, "--tags")?;
    }
    if let Some(desired) = desired {
        body["properties"]["desired"] = object(desired, "--desired")?;
    }
    Ok(body)
}

pub async fn deploy(args: &HubArgs, device: &str, manifest: &Path) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let content: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", manifest.display()))?;
    let content = content.get("content").cloned().unwrap_or(content);
    client
        .call(
            Method::POST,
            &format!("/devices/{}/applyConfigurationContent", segment(device)),
            Some(&content),
            None,
        )
        .await?;
    done(args.output, &json!({"deployed": device}));
    Ok(())
}

pub async fn method(args: &HubArgs, command: MethodCommand) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    let MethodCommand::Invoke {
        device,
        method,
        module,
        payload,
        timeout,
        connect_timeout,
    } = command;
    let payload: Value = serde_json::from_str(&payload).context("--payload is not valid JSON")?;
    let body = json!({
        "methodName": method,
        "payload": payload,
        "responseTimeoutInSeconds": timeout,
        "connectTimeoutInSeconds": connect_timeout,
    });
    let path = format!("{}/methods", twin_path(&device, module.as_deref()));
    let answer = client.call(Method::POST, &path, Some(&body), None).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

pub async fn message(args: &HubArgs, command: MessageCommand) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    let MessageCommand::Send {
        device,
        body,
        properties,
        message_id,
        correlation_id,
        content_type,
    } = command;
    let mut bag = serde_json::Map::new();
    for property in properties {
        let (key, value) = property
            .split_once('=')
            .with_context(|| format!("--property {property:?} is not KEY=VALUE"))?;
        bag.insert(key.to_owned(), value.into());
    }
    let request = json!({
        "body": body,
        "properties": bag,
        "messageId": message_id,
        "correlationId": correlation_id,
        "contentType": content_type,
    });
    let answer = client
        .call(
            Method::POST,
            &format!("/devices/{}/messages/deviceBound", segment(&device)),
            Some(&request),
            None,
        )
        .await?;
    done(args.output, &answer);
    Ok(())
}

pub async fn monitor(args: &HubArgs, options: &MonitorArgs) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    let deadline = options
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut after: Option<i64> = if options.from_start { Some(0) } else { None };
    let mut printed = 0usize;
    loop {
        if options.count.is_some_and(|count| printed >= count) {
            return Ok(());
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            if let Some(count) = options.count {
                bail!("timed out after {printed} of {count} messages");
            }
            return Ok(());
        }
        let wait = remaining.map_or(20, |r| r.as_secs().clamp(1, 20));
        let mut query = match after {
            Some(after) => format!("/events?after={after}&waitSecs={wait}"),
            None => format!("/events?waitSecs={wait}"),
        };
        if options.twin_changes {
            query.push_str("&includeTwinChanges=true");
        }
        let answer = client.call(Method::GET, &query, None, None).await?;
        after = Some(answer.get("next").and_then(Value::as_i64).unwrap_or(0));
        for event in answer
            .get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = |name: &str| event.get(name).and_then(Value::as_str);
            let unwanted = |wanted: &Option<String>, name: &str| {
                wanted.as_deref().is_some_and(|w| field(name) != Some(w))
            };
            if unwanted(&options.device, "deviceId") || unwanted(&options.module, "moduleId") {
                continue;
            }
            println!("{}", serde_json::to_string(event)?);
            printed += 1;
            if options.count.is_some_and(|count| printed >= count) {
                return Ok(());
            }
        }
    }
}

fn primary_key(identity: &Value) -> anyhow::Result<&str> {
    identity
        .pointer("/authentication/symmetricKey/primaryKey")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .context("the identity has no symmetric key")
}

fn print_connection_string(format: OutputFormat, connection: &ConnectionString) {
    match format {
        OutputFormat::Json => println!("{}", json!({"connectionString": connection.to_string()})),
        OutputFormat::Human => println!("{connection}"),
    }
}

fn done(format: OutputFormat, result: &Value) {
    if format == OutputFormat::Json {
        println!("{result}");
    }
}
