//! `outpost enrollment ...` and `outpost enrollment-group ...`: the provisioning service's enrollments, through
//! the hub's `/enrollments` and `/enrollmentGroups` routes (DPS's service API shape).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{print_object, print_table};
use crate::service::{segment, ServiceClient};
use crate::HubArgs;

/// How devices of an enrollment prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttestationKind {
    /// A symmetric key (a group's devices prove the key derived from the group key and their registration id).
    SymmetricKey,
    /// X.509 certificates: the device presents its certificate (common name = registration id) at the TLS
    /// handshake.
    X509,
}

/// What a device registering again gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reprovision {
    /// Keep the device's twin (`deviceDataMigrated`).
    Migrate,
    /// Set the twin back to the initial twin (`deviceDataReset`).
    Reset,
    /// Leave the device as it is.
    Never,
}

/// What `create` of both kinds takes.
#[derive(Args, Debug)]
pub struct EnrollmentSpec {
    /// How devices prove membership.
    #[arg(long, value_enum, default_value_t = AttestationKind::SymmetricKey)]
    attestation: AttestationKind,
    /// The primary key (base64, 16 to 64 bytes); generated when absent.
    #[arg(long)]
    primary_key: Option<String>,
    /// The secondary key; generated when absent.
    #[arg(long)]
    secondary_key: Option<String>,
    /// The certificate (PEM file) of an x509 attestation: the device's own for an enrollment, the CA's for a group.
    #[arg(long)]
    certificate: Option<PathBuf>,
    /// A second certificate (PEM file).
    #[arg(long)]
    secondary_certificate: Option<PathBuf>,
    /// Devices are created as IoT Edge devices.
    #[arg(long)]
    edge: bool,
    /// The initial twin (JSON file: `{"tags": {..}, "properties": {"desired": {..}}}`).
    #[arg(long, value_name = "FILE")]
    initial_twin: Option<PathBuf>,
    /// Create it disabled: registrations are refused until it is enabled.
    #[arg(long)]
    disabled: bool,
    /// What a device registering again gets.
    #[arg(long, value_enum, default_value_t = Reprovision::Migrate)]
    reprovision: Reprovision,
}

/// `outpost enrollment ...`
#[derive(Subcommand)]
pub enum EnrollmentCommand {
    /// Create (or replace) the enrollment of one device.
    Create {
        /// The registration id the device registers with.
        registration_id: String,
        /// The device id in the hub (the registration id when absent).
        #[arg(long)]
        device_id: Option<String>,
        #[command(flatten)]
        spec: EnrollmentSpec,
    },
    /// List the individual enrollments.
    List,
    /// Show one enrollment (with its keys) and its registration, if any.
    Show {
        /// The registration id.
        registration_id: String,
    },
    /// Delete an enrollment (the device stays in the hub).
    Delete {
        /// The registration id.
        registration_id: String,
    },
}

/// `outpost enrollment-group ...`
#[derive(Subcommand)]
pub enum EnrollmentGroupCommand {
    /// Create (or replace) an enrollment group.
    Create {
        /// The group's id.
        id: String,
        #[command(flatten)]
        spec: EnrollmentSpec,
    },
    /// List the enrollment groups.
    List,
    /// Show one group (with its keys).
    Show {
        /// The group's id.
        id: String,
    },
    /// Delete a group (its devices stay in the hub).
    Delete {
        /// The group's id.
        id: String,
    },
}

const FIELDS: &[&str] = &[
    "registrationId",
    "enrollmentGroupId",
    "deviceId",
    "attestation.type",
    "attestation.symmetricKey.primaryKey",
    "attestation.symmetricKey.secondaryKey",
    "capabilities.iotEdge",
    "provisioningStatus",
    "reprovisionPolicy.updateHubAssignment",
    "reprovisionPolicy.migrateDeviceData",
    "createdDateTimeUtc",
    "lastUpdatedDateTimeUtc",
    "registration.status",
    "registration.substatus",
    "registration.deviceId",
    "registration.assignedHub",
];

fn read_certificate(path: &Path) -> anyhow::Result<Value> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the certificate {}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!("{} is not a PEM certificate", path.display());
    }
    Ok(json!({"certificate": pem}))
}

/// The body's common part: attestation, capabilities, initial twin, status, policy.
fn settings(spec: &EnrollmentSpec, group: bool) -> anyhow::Result<Value> {
    let attestation = match spec.attestation {
        AttestationKind::SymmetricKey => {
            if spec.certificate.is_some() {
                bail!("--certificate goes with --attestation x509");
            }
            json!({"type": "symmetricKey", "symmetricKey": {
                "primaryKey": spec.primary_key.clone().unwrap_or_default(),
                "secondaryKey": spec.secondary_key.clone().unwrap_or_default(),
            }})
        }
        AttestationKind::X509 => {
            let primary = spec
                .certificate
                .as_deref()
                .context("--attestation x509 needs --certificate FILE")?;
            let mut certificates = json!({"primary": read_certificate(primary)?});
            if let Some(secondary) = &spec.secondary_certificate {
                certificates["secondary"] = read_certificate(secondary)?;
            }
            let kind = if group {
                "signingCertificates"
            } else {
                "clientCertificates"
            };
            json!({"type": "x509", "x509": {kind: certificates}})
        }
    };
    let mut body = json!({
        "attestation": attestation,
        "capabilities": {"iotEdge": spec.edge},
        "provisioningStatus": if spec.disabled { "disabled" } else { "enabled" },
        "reprovisionPolicy": {
            "updateHubAssignment": spec.reprovision != Reprovision::Never,
            "migrateDeviceData": spec.reprovision == Reprovision::Migrate,
        },
    });
    if let Some(path) = &spec.initial_twin {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the initial twin {}", path.display()))?;
        let twin: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        if !twin.is_object() {
            bail!("the initial twin must be a JSON object");
        }
        body["initialTwin"] = twin;
    }
    Ok(body)
}

fn list_columns(first: (&'static str, &'static str)) -> [(&'static str, &'static str); 5] {
    [
        first,
        ("ATTESTATION", "attestation/type"),
        ("EDGE", "capabilities/iotEdge"),
        ("STATUS", "provisioningStatus"),
        ("UPDATED", "lastUpdatedDateTimeUtc"),
    ]
}

/// Runs `outpost enrollment ...`.
pub async fn enrollment(args: &HubArgs, command: EnrollmentCommand) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    match command {
        EnrollmentCommand::Create {
            registration_id,
            device_id,
            spec,
        } => {
            let mut body = settings(&spec, false)?;
            body["registrationId"] = registration_id.clone().into();
            if let Some(device) = device_id {
                body["deviceId"] = device.into();
            }
            let path = format!("/enrollments/{}", segment(&registration_id));
            let created = client.call(Method::PUT, &path, Some(&body), None).await?;
            print_object(args.output, &created, FIELDS);
        }
        EnrollmentCommand::List => {
            let rows = client.call(Method::GET, "/enrollments", None, None).await?;
            let rows = rows.as_array().cloned().unwrap_or_default();
            print_table(
                args.output,
                &rows,
                &list_columns(("REGISTRATION", "registrationId")),
            );
        }
        EnrollmentCommand::Show { registration_id } => {
            let id = segment(&registration_id);
            let mut enrollment = client
                .call(Method::GET, &format!("/enrollments/{id}"), None, None)
                .await?;
            // The registration, when the device has registered: one view of "what happened to it".
            if let Ok(registration) = client
                .call(Method::GET, &format!("/registrations/{id}"), None, None)
                .await
            {
                enrollment["registration"] = registration;
            }
            print_object(args.output, &enrollment, FIELDS);
        }
        EnrollmentCommand::Delete { registration_id } => {
            let path = format!("/enrollments/{}", segment(&registration_id));
            client.call(Method::DELETE, &path, None, None).await?;
            println!("deleted enrollment {registration_id}");
        }
    }
    Ok(())
}

/// Runs `outpost enrollment-group ...`.
pub async fn enrollment_group(
    args: &HubArgs,
    command: EnrollmentGroupCommand,
) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    match command {
        EnrollmentGroupCommand::Create { id, spec } => {
            let mut body = settings(&spec, true)?;
            body["enrollmentGroupId"] = id.clone().into();
            let path = format!("/enrollmentGroups/{}", segment(&id));
            let created = client.call(Method::PUT, &path, Some(&body), None).await?;
            print_object(args.output, &created, FIELDS);
        }
        EnrollmentGroupCommand::List => {
            let rows = client
                .call(Method::GET, "/enrollmentGroups", None, None)
                .await?;
            let rows = rows.as_array().cloned().unwrap_or_default();
            print_table(
                args.output,
                &rows,
                &list_columns(("GROUP", "enrollmentGroupId")),
            );
        }
        EnrollmentGroupCommand::Show { id } => {
            let path = format!("/enrollmentGroups/{}", segment(&id));
            let group = client.call(Method::GET, &path, None, None).await?;
            print_object(args.output, &group, FIELDS);
        }
        EnrollmentGroupCommand::Delete { id } => {
            let path = format!("/enrollmentGroups/{}", segment(&id));
            client.call(Method::DELETE, &path, None, None).await?;
            println!("deleted enrollment group {id}");
        }
    }
    Ok(())
}
