//! The hub's answers to the provisioning head of `outpost-mqtt` ([`ProvisioningOperations`]).
//!
//! A registration request runs to its end before it is answered (it takes a few storage writes), and is answered
//! as DPS answers it: `202` with the operation id and `assigning`; the device then polls the operation and gets
//! the final state with `200`. Refusals before anything ran (a malformed body) are `400` with DPS's error body.

use std::sync::Arc;

use outpost_core::provisioning::{
    ProvisioningErrorBody, RegistrationOperationStatus, RegistrationStatus,
};
use outpost_mqtt::provisioning::{ProvisioningAnswer, ProvisioningOperations};
use outpost_mqtt::ConnectRefusal;
use rustls::pki_types::CertificateDer;

use super::attest::Attested;
use super::{operation_status, Registered};
use crate::error::HubError;
use crate::Hub;

/// Seconds a device is asked to wait before polling an operation (the SDK waits 2 s before its first poll
/// whatever it is told).
const RETRY_AFTER_SECS: u32 = 1;

/// The hub as the provisioning head's backend.
pub struct HubProvisioning(pub Arc<Hub>);

#[async_trait::async_trait]
impl ProvisioningOperations for HubProvisioning {
    type Credential = Attested;

    async fn authenticate(
        &self,
        id_scope: &str,
        registration_id: &str,
        password: Option<&[u8]>,
        client_chain: &[CertificateDer<'static>],
    ) -> Result<Attested, ConnectRefusal> {
        let token = match password {
            Some(password) => {
                Some(std::str::from_utf8(password).map_err(|_| ConnectRefusal::NotAuthorized)?)
            }
            None => None,
        };
        self.0
            .provisioning()
            .authenticate(id_scope, registration_id, token, client_chain)
            .await
            .map_err(|error| {
                tracing::info!(registration = registration_id, %error, "provisioning connection refused");
                match error {
                    HubError::Storage(_) => ConnectRefusal::ServerUnavailable,
                    _ => ConnectRefusal::NotAuthorized,
                }
            })
    }

    async fn register(&self, attested: &Attested, body: &[u8]) -> ProvisioningAnswer {
        match self.0.provisioning().register(attested, body).await {
            Ok(Registered::Ran(record)) => json_answer(
                202,
                Some(RETRY_AFTER_SECS),
                &RegistrationOperationStatus {
                    operation_id: record.operation_id,
                    status: RegistrationStatus::Assigning,
                    registration_state: None,
                },
            ),
            Ok(Registered::Refused {
                status,
                error_code,
                message,
            }) => error_answer(status, error_code, &attested.registration_id, message),
            Err(error) => failure(&attested.registration_id, &error),
        }
    }

    async fn operation_status(
        &self,
        attested: &Attested,
        operation_id: &str,
    ) -> ProvisioningAnswer {
        match self
            .0
            .provisioning()
            .operation(&attested.registration_id, operation_id)
            .await
        {
            Ok(Some(record)) => json_answer(200, None, &operation_status(&record)),
            Ok(None) => error_answer(
                404,
                404_006,
                operation_id,
                format!(
                    "no operation {operation_id} of {}",
                    attested.registration_id
                ),
            ),
            Err(error) => failure(&attested.registration_id, &error),
        }
    }
}

fn json_answer(
    status: u16,
    retry_after: Option<u32>,
    body: &impl serde::Serialize,
) -> ProvisioningAnswer {
    ProvisioningAnswer {
        status,
        retry_after,
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

fn error_answer(
    status: u16,
    error_code: u32,
    tracking_id: &str,
    message: String,
) -> ProvisioningAnswer {
    json_answer(
        status,
        None,
        &ProvisioningErrorBody {
            error_code,
            tracking_id: tracking_id.to_owned(),
            message,
        },
    )
}

/// A failure of the hub itself: 503 with retry-after when the database is away (the SDK retries on 429 and
/// above), 500 otherwise; the cause is logged, not sent.
fn failure(registration_id: &str, error: &HubError) -> ProvisioningAnswer {
    tracing::warn!(registration = registration_id, %error, "registration failed");
    let status = error.status().max(500);
    let mut answer = error_answer(
        status,
        u32::from(status) * 1000,
        registration_id,
        "internal error".into(),
    );
    answer.retry_after = Some(5);
    answer
}
