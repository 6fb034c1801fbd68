//! The provisioning service: a Device Provisioning Service (DPS) in the hub, so that devices that leave the
//! factory with a key (their own, or one derived from a group's) register themselves and are assigned to this
//! hub.
//!
//! Read [`model`] (enrollments and registration records in DPS's service API shape), then [`attest`] (pure: which
//! enrollment a proof belongs to, what a registration does), then [`Provisioning`], which runs a registration
//! over the hub's services: the registry creates or updates the device, the twins service applies the initial
//! twin (so that automatic deployments, which react to twin changes, pick the device up), and the registration
//! record is stored. [`head`] answers `outpost_mqtt::provisioning`'s requests with it. Enrollments and records
//! live in the hub's storage on both engines (`storage::provisioning`).

pub mod attest;
pub mod head;
pub mod model;
pub mod rest;

use chrono::Utc;
use outpost_core::provisioning::{
    DeviceRegistration, DeviceRegistrationResult, RegistrationOperationStatus, RegistrationStatus,
};
use serde_json::Value;

use crate::error::HubError;
use crate::identity::generate_key;
use crate::registry::{DeviceSpec, Precondition};
use crate::twins::TwinWrite;
use crate::Hub;
use attest::{Attested, DeviceCredentials, Plan};
use rustls::pki_types::CertificateDer;

use crate::identity::AuthenticationType;
use model::{
    Attestation, EnrollmentGroup, EnrollmentRef, EnrollmentSettings, IndividualEnrollment,
    RegistrationRecord, MAX_ENROLLMENT_GROUPS,
};

/// The setting that holds the hub's ID scope, made once.
pub const ID_SCOPE_SETTING: &str = "provisioning.id-scope";

/// A new ID scope: `0ne` and eight upper-case hex digits, as DPS's look.
pub fn new_id_scope() -> String {
    format!("0ne{:08X}", rand::random::<u32>())
}

/// DPS's error code for a refused registration body.
const BAD_REQUEST: u32 = 400_004;
/// DPS's error code for an enrollment that is gone or no longer matches.
const UNAUTHORIZED: u32 = 401_002;

/// The provisioning service of a hub: enrollments, groups, registrations (reached through
/// [`Hub::provisioning`]).
pub struct Provisioning<'a> {
    hub: &'a Hub,
}

/// How a registration request ended: the operation status to answer with, or a refusal before anything happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    /// The operation ran (assigned, disabled or failed): its record holds the answer (boxed: a refusal is
    /// small).
    Ran(Box<RegistrationRecord>),
    /// The request was refused as it stands (malformed body, another registration id): nothing changed.
    Refused {
        /// 400 or 401.
        status: u16,
        /// DPS's error code.
        error_code: u32,
        /// Why.
        message: String,
    },
}

impl<'a> Provisioning<'a> {
    pub(crate) fn new(hub: &'a Hub) -> Self {
        Self { hub }
    }

    /// The ID scope devices name in their registrations.
    pub fn id_scope(&self) -> &str {
        self.hub.id_scope()
    }

    // Enrollments (the service API).

    /// Creates or replaces an individual enrollment; empty keys are generated.
    pub async fn put_enrollment(
        &self,
        registration_id: &str,
        body: &Value,
    ) -> Result<IndividualEnrollment, HubError> {
        let mut enrollment = model::individual_from_body(registration_id, body)?;
        let id = registration_id.to_owned();
        self.hub
            .storage()
            .write(move |tx| {
                let existing = tx.individual_enrollment(&id)?;
                stamp(
                    &mut enrollment.settings,
                    existing.as_ref().map(|e| &e.settings),
                );
                tx.put_individual_enrollment(&enrollment)?;
                Ok::<_, HubError>(enrollment)
            })
            .await
    }

    /// One individual enrollment.
    pub async fn enrollment(
        &self,
        registration_id: &str,
    ) -> Result<IndividualEnrollment, HubError> {
        let id = registration_id.to_owned();
        self.hub
            .storage()
            .read(move |t| {
                t.individual_enrollment(&id)?
                    .ok_or(HubError::EnrollmentNotFound(id))
            })
            .await
    }

    /// Every individual enrollment.
    pub async fn enrollments(&self) -> Result<Vec<IndividualEnrollment>, HubError> {
        Ok(self
            .hub
            .storage()
            .read(|t| t.individual_enrollments())
            .await?)
    }

    /// Deletes an individual enrollment with its registration record (the device stays in the hub, as in DPS).
    pub async fn delete_enrollment(&self, registration_id: &str) -> Result<(), HubError> {
        let id = registration_id.to_owned();
        self.hub
            .storage()
            .write(move |tx| {
                if !tx.delete_individual_enrollment(&id)? {
                    return Err(HubError::EnrollmentNotFound(id));
                }
                tx.delete_registration(&id)?;
                Ok(())
            })
            .await
    }

    /// Creates or replaces an enrollment group; empty keys are generated. At most [`MAX_ENROLLMENT_GROUPS`].
    pub async fn put_group(&self, id: &str, body: &Value) -> Result<EnrollmentGroup, HubError> {
        let mut group = model::group_from_body(id, body)?;
        let id = id.to_owned();
        self.hub
            .storage()
            .write(move |tx| {
                let existing = tx.enrollment_group(&id)?;
                if existing.is_none() && tx.enrollment_groups()?.len() >= MAX_ENROLLMENT_GROUPS {
                    return Err(HubError::Throttled(format!(
                        "the hub keeps at most {MAX_ENROLLMENT_GROUPS} enrollment groups"
                    )));
                }
                stamp(&mut group.settings, existing.as_ref().map(|g| &g.settings));
                tx.put_enrollment_group(&group)?;
                Ok::<_, HubError>(group)
            })
            .await
    }

    /// One enrollment group.
    pub async fn group(&self, id: &str) -> Result<EnrollmentGroup, HubError> {
        let id = id.to_owned();
        self.hub
            .storage()
            .read(move |t| {
                t.enrollment_group(&id)?
                    .ok_or(HubError::EnrollmentNotFound(id))
            })
            .await
    }

    /// Every enrollment group.
    pub async fn groups(&self) -> Result<Vec<EnrollmentGroup>, HubError> {
        Ok(self.hub.storage().read(|t| t.enrollment_groups()).await?)
    }

    /// Deletes an enrollment group (its devices and their registration records stay).
    pub async fn delete_group(&self, id: &str) -> Result<(), HubError> {
        let id = id.to_owned();
        self.hub
            .storage()
            .write(move |tx| {
                if tx.delete_enrollment_group(&id)? {
                    Ok(())
                } else {
                    Err(HubError::EnrollmentNotFound(id))
                }
            })
            .await
    }

    /// One registration record.
    pub async fn registration(
        &self,
        registration_id: &str,
    ) -> Result<RegistrationRecord, HubError> {
        let id = registration_id.to_owned();
        self.hub
            .storage()
            .read(move |t| {
                t.registration(&id)?
                    .ok_or(HubError::RegistrationNotFound(id))
            })
            .await
    }

    /// Every registration record.
    pub async fn registrations(&self) -> Result<Vec<RegistrationRecord>, HubError> {
        Ok(self.hub.storage().read(|t| t.registrations()).await?)
    }

    /// Deletes a registration record (the device may register again as a first assignment).
    pub async fn delete_registration(&self, registration_id: &str) -> Result<(), HubError> {
        let id = registration_id.to_owned();
        self.hub
            .storage()
            .write(move |tx| {
                if tx.delete_registration(&id)? {
                    Ok(())
                } else {
                    Err(HubError::RegistrationNotFound(id))
                }
            })
            .await
    }

    // The device side.

    /// Checks a device's proof at CONNECT: the scope must be this hub's and the proof (a SAS token, or else the
    /// TLS client certificate chain, leaf first) must match an enrollment ([`attest::attest`]).
    pub async fn authenticate(
        &self,
        id_scope: &str,
        registration_id: &str,
        proof_token: Option<&str>,
        client_chain: &[CertificateDer<'static>],
    ) -> Result<Attested, HubError> {
        if id_scope != self.id_scope() {
            return Err(HubError::Unauthorized(format!(
                "unknown ID scope {id_scope}"
            )));
        }
        let token = proof_token
            .map(outpost_core::SasToken::parse)
            .transpose()
            .map_err(|e| HubError::Unauthorized(e.to_string()))?;
        let proof = match &token {
            Some(token) => attest::Proof::Token(token),
            None if !client_chain.is_empty() => attest::Proof::Certificate(client_chain),
            None => {
                return Err(HubError::Unauthorized(
                    "neither a SAS token nor a client certificate".into(),
                ))
            }
        };
        let id = registration_id.to_owned();
        let (individual, groups) = self
            .hub
            .storage()
            .read(move |t| {
                let individual = t.individual_enrollment(&id)?;
                let groups = if individual.is_some() {
                    Vec::new()
                } else {
                    t.enrollment_groups()?
                };
                Ok::<_, HubError>((individual, groups))
            })
            .await?;
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or_default();
        attest::attest(
            id_scope,
            registration_id,
            proof,
            individual.as_ref(),
            &groups,
            now,
        )
        .map_err(|e| HubError::Unauthorized(e.to_string()))
    }

    /// Runs a registration request of an attested device: checks the body, reads the enrollment as it is now,
    /// plans ([`attest::plan`]), creates or updates the device, applies the initial twin and stores the record.
    pub async fn register(&self, attested: &Attested, body: &[u8]) -> Result<Registered, HubError> {
        let request: DeviceRegistration = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(error) => {
                return Ok(Registered::Refused {
                    status: 400,
                    error_code: BAD_REQUEST,
                    message: format!("malformed registration request: {error}"),
                })
            }
        };
        if request.registration_id != attested.registration_id {
            return Ok(Registered::Refused {
                status: 400,
                error_code: BAD_REQUEST,
                message: format!(
                    "the request registers {:?}, the connection {:?}",
                    request.registration_id, attested.registration_id
                ),
            });
        }
        let Some((settings, device_id)) = self.enrollment_of(attested).await? else {
            return Ok(Registered::Refused {
                status: 401,
                error_code: UNAUTHORIZED,
                message: "the enrollment no longer exists".into(),
            });
        };
        let registry = self.hub.registry();
        let device_exists = match registry.device(&device_id).await {
            Ok(_) => true,
            Err(HubError::DeviceNotFound(_)) => false,
            Err(other) => return Err(other),
        };
        let previous = self
            .hub
            .storage()
            .read({
                let id = attested.registration_id.clone();
                move |t| t.registration(&id)
            })
            .await?;
        let now = Utc::now();
        let mut record = RegistrationRecord {
            registration_id: attested.registration_id.clone(),
            enrollment_group_id: match &attested.enrollment {
                EnrollmentRef::Individual => None,
                EnrollmentRef::Group(id) => Some(id.clone()),
            },
            device_id: device_id.clone(),
            assigned_hub: self.hub.host_name().to_owned(),
            status: RegistrationStatus::Assigned,
            substatus: String::new(),
            error_code: None,
            error_message: None,
            created_date_time_utc: previous.as_ref().map_or(now, |p| p.created_date_time_utc),
            last_updated_date_time_utc: now,
            etag: uuid::Uuid::new_v4().to_string(),
            operation_id: format!("4.{}.{}", self.id_scope(), uuid::Uuid::new_v4()),
        };
        match attest::plan(&settings, previous.as_ref(), device_exists) {
            Plan::Refuse => {
                record.status = RegistrationStatus::Disabled;
                record.device_id.clear();
                record.assigned_hub.clear();
                record.error_code = Some(UNAUTHORIZED);
                record.error_message = Some("the enrollment is disabled".into());
            }
            Plan::Assign {
                write_device,
                twin,
                substatus,
            } => {
                if write_device {
                    let mut spec = DeviceSpec {
                        device_id: device_id.clone(),
                        iot_edge: settings.capabilities.iot_edge,
                        ..DeviceSpec::default()
                    };
                    match &attested.credentials {
                        DeviceCredentials::Keys(keys) => {
                            spec.primary_key = Some(keys.primary.clone());
                            spec.secondary_key = Some(keys.secondary.clone());
                            spec.authentication = Some(AuthenticationType::Sas);
                        }
                        // A group member too: its own leaf's thumbprint, so that it connects to the hub with
                        // that certificate whether or not the hub holds the group's CA.
                        DeviceCredentials::Thumbprints { primary, secondary } => {
                            spec.authentication = Some(AuthenticationType::SelfSigned);
                            spec.primary_thumbprint = Some(primary.clone());
                            spec.secondary_thumbprint.clone_from(secondary);
                        }
                    }
                    registry.put_device(&spec, &Precondition::Any).await?;
                }
                if let Some((initial, replace)) = twin {
                    let write =
                        TwinWrite {
                            tags: initial.tags.clone().or_else(|| {
                                replace.then(|| Value::Object(serde_json::Map::default()))
                            }),
                            desired: initial.desired().cloned().or_else(|| {
                                replace.then(|| Value::Object(serde_json::Map::default()))
                            }),
                            replace,
                        };
                    if write.tags.is_some() || write.desired.is_some() {
                        self.hub
                            .twins()
                            .write_twin(&device_id, None, &write, &Precondition::Any)
                            .await?;
                    }
                }
                substatus.clone_into(&mut record.substatus);
            }
        }
        let stored = record.clone();
        self.hub
            .storage()
            .write(move |tx| tx.put_registration(&stored))
            .await?;
        tracing::info!(
            registration = %record.registration_id,
            device = %record.device_id,
            status = ?record.status,
            substatus = %record.substatus,
            "registration"
        );
        Ok(Registered::Ran(Box::new(record)))
    }

    /// The record of the operation `operation_id` of `registration_id`, if it is the latest one.
    pub async fn operation(
        &self,
        registration_id: &str,
        operation_id: &str,
    ) -> Result<Option<RegistrationRecord>, HubError> {
        let id = registration_id.to_owned();
        let record = self
            .hub
            .storage()
            .read(move |t| t.registration(&id))
            .await?;
        Ok(record.filter(|r| r.operation_id == operation_id))
    }

    /// The enrollment an attested device belongs to, as it is now, with the device id it gives; `None` when it
    /// was deleted (or its attestation changed) since the CONNECT.
    async fn enrollment_of(
        &self,
        attested: &Attested,
    ) -> Result<Option<(EnrollmentSettings, String)>, HubError> {
        let registration_id = attested.registration_id.clone();
        let found = match &attested.enrollment {
            EnrollmentRef::Individual => self
                .hub
                .storage()
                .read(move |t| t.individual_enrollment(&registration_id))
                .await?
                .map(|e| {
                    let device = e
                        .device_id
                        .clone()
                        .unwrap_or_else(|| e.registration_id.clone());
                    (e.settings, device)
                }),
            EnrollmentRef::Group(group) => {
                let group = group.clone();
                self.hub
                    .storage()
                    .read(move |t| t.enrollment_group(&group))
                    .await?
                    .map(|g| (g.settings, attested.registration_id.clone()))
            }
        };
        let keys = matches!(attested.credentials, DeviceCredentials::Keys(_));
        Ok(found.filter(|(settings, _)| {
            matches!(settings.attestation, Attestation::SymmetricKey { .. }) == keys
        }))
    }
}

/// Fills what the hub sets on a written enrollment: generated keys where none were given, the creation time
/// kept from the stored one, the update time and a new etag.
fn stamp(settings: &mut EnrollmentSettings, existing: Option<&EnrollmentSettings>) {
    if let Attestation::SymmetricKey { symmetric_key } = &mut settings.attestation {
        for key in [
            &mut symmetric_key.primary_key,
            &mut symmetric_key.secondary_key,
        ] {
            if key.is_empty() {
                *key = generate_key();
            }
        }
    }
    let now = Utc::now();
    settings.created_date_time_utc = existing.map_or(now, |e| e.created_date_time_utc);
    settings.last_updated_date_time_utc = now;
    settings.etag = uuid::Uuid::new_v4().to_string();
}

/// The operation status a record answers with: always a complete registration state (see
/// `outpost_core::provisioning::DeviceRegistrationResult`).
pub fn operation_status(record: &RegistrationRecord) -> RegistrationOperationStatus {
    RegistrationOperationStatus {
        operation_id: record.operation_id.clone(),
        status: record.status,
        registration_state: Some(DeviceRegistrationResult {
            registration_id: record.registration_id.clone(),
            created_date_time_utc: record.created_date_time_utc.to_rfc3339(),
            assigned_hub: record.assigned_hub.clone(),
            device_id: record.device_id.clone(),
            status: record.status,
            substatus: record.substatus.clone(),
            last_updated_date_time_utc: record.last_updated_date_time_utc.to_rfc3339(),
            etag: record.etag.clone(),
            error_code: record.error_code,
            error_message: record.error_message.clone(),
            payload: None,
        }),
    }
}
