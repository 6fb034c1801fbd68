//! Who may do what: SAS tokens of devices and modules (MQTT) and of shared access policies (REST), and edge devices
//! that manage their modules by token or by client certificate (REST).

use outpost_core::{DeviceId, Identity, SasToken};

use crate::error::HubError;
use crate::identity::{AccessPolicy, Credentials, DeviceRecord, IdentityStatus, Right};
use crate::storage::Tables;
use crate::Hub;

/// What a REST request authenticates with, for the checks that a device may pass as well as a policy.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// Its `Authorization` header (a shared access signature), if it has one.
    Token(Option<&'a str>),
    /// A device, by the TLS client certificate it presented, which
    /// [`authenticate_certificate`](Hub::authenticate_certificate) has accepted for it.
    Certificate(&'a DeviceId),
}

fn now_unix() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// Compares a token's audience host with the hub's host name, ignoring case and a `:port` on either side.
pub(crate) fn same_host(token_host: &str, hub_host: &str) -> bool {
    let strip = |h: &str| {
        h.rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(h, |(host, _)| host)
            .to_ascii_lowercase()
    };
    strip(token_host) == strip(hub_host)
}

/// The credentials `identity` connects with, read in `tables`: its device must exist and be enabled, and a module
/// identity's module must exist. The outer `Result` is storage's, the inner one the refusal.
pub(crate) fn identity_credentials(
    tables: &mut dyn Tables,
    identity: &Identity,
) -> Result<Result<Credentials, HubError>, HubError> {
    let unauthorized = |why: &str| HubError::Unauthorized(format!("{identity}: {why}"));
    let Some(device) = tables.device(&identity.device)? else {
        return Ok(Err(unauthorized("no such device")));
    };
    if device.status != IdentityStatus::Enabled {
        return Ok(Err(unauthorized("the device is disabled")));
    }
    let Some(module) = &identity.module else {
        return Ok(Ok(device.credentials));
    };
    Ok(tables
        .module(&identity.device, module)?
        .map(|module| module.credentials)
        .ok_or_else(|| unauthorized("no such module")))
}

impl Hub {
    /// Checks the SAS token a device or module connects with: right audience, not expired, signed with the
    /// identity's own key, and the identity enabled.
    pub async fn authenticate_identity(
        &self,
        identity: &Identity,
        password: &str,
    ) -> Result<(), HubError> {
        let unauthorized = |why: &str| HubError::Unauthorized(format!("{identity}: {why}"));
        let token = SasToken::parse(password).map_err(|e| unauthorized(&e.to_string()))?;
        let scope = token.scope().map_err(|e| unauthorized(&e.to_string()))?;
        if !same_host(&scope.host, &self.host_name) {
            return Err(unauthorized("the token is for another hub"));
        }
        let device_matches = scope
            .device
            .as_deref()
            .is_some_and(|d| d.eq_ignore_ascii_case(identity.device.as_str()));
        let module_matches = match (&identity.module, &scope.module) {
            (Some(m), Some(scoped)) => m.as_str() == scoped,
            (None, None) => true,
            _ => false,
        };
        if !device_matches || !module_matches {
            return Err(unauthorized("the token is for another identity"));
        }
        let read = identity.clone();
        let credentials = self
            .storage
            .read(move |tables| identity_credentials(tables, &read))
            .await??;
        token
            .verify(&credentials.keys(), now_unix())
            .map_err(|e| unauthorized(&e.to_string()))
    }

    /// Checks a request on the modules of `device`: a shared access policy granting `right`, or that edge device
    /// itself, which manages the modules it owns (the edge runtime creates and deletes them), by its own SAS token
    /// or by the client certificate it presented.
    pub async fn authorize_module_management(
        &self,
        caller: Caller<'_>,
        right: Right,
        device: &str,
    ) -> Result<(), HubError> {
        let header = match caller {
            Caller::Token(header) => header.ok_or_else(|| {
                HubError::Unauthorized("the Authorization header is missing".into())
            })?,
            Caller::Certificate(certified) => {
                if certified.as_str() != device {
                    return Err(HubError::Unauthorized(format!(
                        "the client certificate does not belong to edge device {device}"
                    )));
                }
                return self.enabled_edge_device(device).await.map(drop);
            }
        };
        let token = SasToken::parse(header).map_err(|e| HubError::Unauthorized(e.to_string()))?;
        if token.key_name.is_some() {
            return self.authorize_service(Some(header), right).map(drop);
        }
        let scope = token
            .scope()
            .map_err(|e| HubError::Unauthorized(e.to_string()))?;
        if scope.module.is_some() || scope.device.as_deref() != Some(device) {
            return Err(HubError::Unauthorized(format!(
                "the token does not belong to edge device {device}"
            )));
        }
        let record = self.enabled_edge_device(device).await?;
        self.authenticate_identity(&Identity::device(record.device_id), header)
            .await
    }

    /// The record of `device`, which must be an enabled edge device.
    async fn enabled_edge_device(&self, device: &str) -> Result<DeviceRecord, HubError> {
        let device_id = crate::registry::device_id(device)?;
        let record = self
            .storage
            .read(move |tables| tables.device(&device_id))
            .await?
            .ok_or_else(|| HubError::Unauthorized(format!("no such device {device}")))?;
        if !record.iot_edge || record.status != IdentityStatus::Enabled {
            return Err(HubError::Unauthorized(format!(
                "{device} is not an enabled edge device"
            )));
        }
        Ok(record)
    }

    /// Checks that `authorization` is a valid SAS token of this hub: a shared access policy's (whatever rights it
    /// grants), or an enabled device's or module's signed with its own key. The REST API asks this of every
    /// request before reading its body; the handler then checks the right it needs.
    pub async fn authenticate_token(&self, authorization: Option<&str>) -> Result<(), HubError> {
        let unauthorized = |why: &str| HubError::Unauthorized(why.to_owned());
        let header =
            authorization.ok_or_else(|| unauthorized("the Authorization header is missing"))?;
        let token = SasToken::parse(header).map_err(|e| unauthorized(&e.to_string()))?;
        if token.key_name.is_some() {
            return self.verified_policy(header).map(drop);
        }
        let scope = token.scope().map_err(|e| unauthorized(&e.to_string()))?;
        let device = scope
            .device
            .ok_or_else(|| unauthorized("the token names neither a policy nor a device"))?;
        let device =
            outpost_core::DeviceId::new(device).map_err(|e| unauthorized(&e.to_string()))?;
        let identity = match scope.module {
            Some(module) => Identity::module(
                device,
                outpost_core::ModuleId::new(module).map_err(|e| unauthorized(&e.to_string()))?,
            ),
            None => Identity::device(device),
        };
        self.authenticate_identity(&identity, header).await
    }

    /// Checks the `Authorization` header of a service request and that its policy grants `right`.
    pub fn authorize_service(
        &self,
        authorization: Option<&str>,
        right: Right,
    ) -> Result<AccessPolicy, HubError> {
        let policy = self.verified_policy(authorization.ok_or_else(|| {
            HubError::Unauthorized("the Authorization header is missing".into())
        })?)?;
        if !policy.grants(right) {
            return Err(HubError::Unauthorized(format!(
                "policy {} does not grant {right:?}",
                policy.name
            )));
        }
        Ok(policy)
    }

    /// The shared access policy whose key signed the token in `header`, scoped to this hub and not expired.
    fn verified_policy(&self, header: &str) -> Result<AccessPolicy, HubError> {
        let unauthorized = |why: &str| HubError::Unauthorized(why.to_owned());
        let token = SasToken::parse(header).map_err(|e| unauthorized(&e.to_string()))?;
        let name = token
            .key_name
            .clone()
            .ok_or_else(|| unauthorized("the token names no shared access policy (skn)"))?;
        let scope = token.scope().map_err(|e| unauthorized(&e.to_string()))?;
        if !same_host(&scope.host, &self.host_name) || scope.device.is_some() {
            return Err(unauthorized("the token is not scoped to this hub"));
        }
        let policy = self
            .policy(&name)
            .cloned()
            .ok_or_else(|| unauthorized(&format!("no shared access policy named {name}")))?;
        token
            .verify(
                &[policy.primary_key.as_str(), policy.secondary_key.as_str()],
                now_unix(),
            )
            .map_err(|e| unauthorized(&e.to_string()))?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_compare_without_case_or_port() {
        assert!(same_host("127.0.0.2:8443", "127.0.0.2"));
        assert!(same_host("MyHub.local", "myhub.local"));
        assert!(!same_host("other", "myhub"));
    }
}
