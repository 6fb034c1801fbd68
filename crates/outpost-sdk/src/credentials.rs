//! Where a client's SAS tokens come from (AZURE-COMPAT §2.1): signed here with a key from a connection
//! string, signed by the edge runtime's workload API (the key never reaches the module), or given ready-made.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_core::Identity;

use crate::error::ClientError;
use crate::quote::quote;
use crate::workload::WorkloadClient;

/// How a client proves who it is.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// `SharedAccessKey` of a connection string: tokens are signed locally.
    Key(String),
    /// `SharedAccessSignature` of a connection string: one token, which cannot be renewed.
    Token(String),
    /// The edge runtime signs with the module's key.
    Workload {
        /// The workload API.
        client: WorkloadClient,
        /// `IOTEDGE_MODULEGENERATIONID`.
        generation_id: String,
    },
}

/// A token and when to replace it.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    /// The `SharedAccessSignature sr=..&sig=..&se=..` string.
    pub(crate) token: String,
    /// How long until the client should reconnect with a new one; `None` for a token it cannot renew.
    pub(crate) renew_after: Option<Duration>,
}

impl Credential {
    /// A token for `identity` at `hub_host`, valid for `ttl`.
    pub(crate) async fn issue(
        &self,
        hub_host: &str,
        identity: &Identity,
        ttl: Duration,
        renew_after: Duration,
    ) -> Result<IssuedToken, ClientError> {
        let resource = match &identity.module {
            Some(module) => format!("{hub_host}/devices/{}/modules/{module}", identity.device),
            None => format!("{hub_host}/devices/{}", identity.device),
        };
        let sr = quote(&resource);
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs();
        let to_sign = format!("{sr}\n{expiry}");
        let signature = match self {
            Self::Token(token) => {
                return Ok(IssuedToken {
                    token: token.clone(),
                    renew_after: None,
                })
            }
            Self::Key(key) => outpost_core::sign(key, to_sign.as_bytes()).map_err(|_| {
                ClientError::Configuration("SharedAccessKey is not valid base64".into())
            })?,
            Self::Workload {
                client,
                generation_id,
            } => {
                let module = identity.module.as_ref().ok_or_else(|| {
                    ClientError::Configuration("the workload API signs for modules only".into())
                })?;
                client
                    .sign(module.as_str(), generation_id, to_sign.as_bytes())
                    .await?
            }
        };
        Ok(IssuedToken {
            token: token(&sr, &signature, expiry),
            renew_after: Some(renew_after),
        })
    }
}

/// The device SDK's token layout: `sr` and `sig` quoted with `safe=""`, fields `sr,sig,se`.
fn token(sr: &str, signature: &str, expiry: u64) -> String {
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}",
        quote(signature)
    )
}

#[cfg(test)]
mod tests {
    use outpost_core::{DeviceId, ModuleId, SasToken};

    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn module() -> Identity {
        Identity::module(
            DeviceId::new("dev1").unwrap(),
            ModuleId::new("$edgeHub").unwrap(),
        )
    }

    #[tokio::test]
    async fn a_key_signed_token_is_the_one_core_builds_and_verifies() {
        let issued = Credential::Key(KEY.into())
            .issue(
                "hub.local",
                &module(),
                Duration::from_hours(1),
                Duration::from_mins(58),
            )
            .await
            .unwrap();
        let parsed = SasToken::parse(&issued.token).unwrap();
        assert_eq!(
            issued.token,
            outpost_core::module_token("hub.local", "dev1", "$edgeHub", KEY, parsed.expiry)
                .unwrap()
        );
        assert!(parsed.resource_raw.contains("%24edgeHub"));
        parsed.verify(&[KEY], parsed.expiry - 3600).unwrap();
        assert_eq!(issued.renew_after, Some(Duration::from_mins(58)));
    }

    #[tokio::test]
    async fn a_ready_made_token_is_used_as_given_and_never_renewed() {
        let issued = Credential::Token("SharedAccessSignature sr=a&sig=b&se=1".into())
            .issue(
                "h",
                &module(),
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        assert_eq!(issued.token, "SharedAccessSignature sr=a&sig=b&se=1");
        assert_eq!(issued.renew_after, None);
    }

    #[tokio::test]
    async fn a_key_that_is_not_base64_is_a_configuration_error() {
        let error = Credential::Key("not base64!".into())
            .issue(
                "h",
                &module(),
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .await;
        assert!(matches!(error, Err(ClientError::Configuration(_))));
    }
}
