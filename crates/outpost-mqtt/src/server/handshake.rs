//! The start of a connection: the first packet must be a CONNECT, whose client id, user name and token
//! must be acceptable before the session starts.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_core::sas::{SasToken, MAX_CLOCK_SKEW_SECS};
use outpost_core::Identity;

use crate::ops::{ConnectRefusal, DeviceOperations};
use crate::packet::{Connect, ConnectReturnCode, PROTOCOL_LEVEL_3_1_1};

/// Checks a CONNECT and asks the backend to authenticate it; the error is the CONNACK refusal to send.
/// `client_chain` is the certificate chain the client presented at the TLS handshake, if any: a CONNECT
/// without a password is then authenticated by it (X.509), one with a password by its SAS token.
pub async fn authenticate<O: DeviceOperations>(
    ops: &O,
    connect: &Connect,
    client_chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Result<Identity, ConnectReturnCode> {
    // [MQTT-3.1.2-2] an unsupported protocol level is answered with 0x01, then the connection closes.
    if connect.protocol_level != PROTOCOL_LEVEL_3_1_1 {
        return Err(ConnectReturnCode::UnacceptableProtocolVersion);
    }
    // [MQTT-3.1.3-9] a client id the server refuses is answered with 0x02. IoT Hub wants "d" or "d/m".
    let identity = Identity::parse_client_id(&connect.client_id)
        .map_err(|_| ConnectReturnCode::IdentifierRejected)?;
    let Some(username) = connect.username.as_deref() else {
        return Err(ConnectReturnCode::BadUserNameOrPassword);
    };
    if !username_names_client(username, &connect.client_id) {
        return Err(ConnectReturnCode::BadUserNameOrPassword);
    }
    match (connect.password.as_deref(), client_chain) {
        (None, Some(chain)) if !chain.is_empty() => {
            ops.authenticate_certificate(&identity, username, chain)
                .await
        }
        (password, _) => ops.authenticate(&identity, username, password).await,
    }
    .map_err(ConnectRefusal::return_code)?;
    Ok(identity)
}

/// When the SAS token a CONNECT carries stops being valid: its `se` plus the clock skew the hub allows when
/// it checks one ([`MAX_CLOCK_SKEW_SECS`]). `None` without a parsable token (the backend accepted another
/// kind of credential, whose lifetime is its own to enforce).
pub fn token_expiry(connect: &Connect) -> Option<Instant> {
    let token = std::str::from_utf8(connect.password.as_deref()?).ok()?;
    let expiry = SasToken::parse(token).ok()?.expiry;
    let valid_until = UNIX_EPOCH + Duration::from_secs(expiry.saturating_add(MAX_CLOCK_SKEW_SECS));
    let left = valid_until
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Instant::now().checked_add(left)
}

/// Whether the user name is `{host}/{clientId}`, optionally followed by `/` and a query
/// (`/?api-version=...` as the SDK sends it, or the older `/api-version=...` without `?`).
pub fn username_names_client(username: &str, client_id: &str) -> bool {
    let Some((host, rest)) = username.split_once('/') else {
        return false;
    };
    let Some(after) = rest.strip_prefix(client_id) else {
        return false;
    };
    !host.is_empty() && (after.is_empty() || after.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_device_username_names_its_client() {
        let username = "myhub.azure-devices.net/devA/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0";
        assert!(username_names_client(username, "devA"));
    }

    #[test]
    fn the_sdk_module_username_names_its_client() {
        assert!(username_names_client(
            "myhub.azure-devices.net/dev1/mod1/?api-version=2019-10-01",
            "dev1/mod1"
        ));
    }

    #[test]
    fn a_username_without_question_mark_or_query_is_accepted() {
        assert!(username_names_client(
            "hub/devA/api-version=2016-11-14",
            "devA"
        ));
        assert!(username_names_client("hub/devA/", "devA"));
        assert!(username_names_client("hub/devA", "devA"));
    }

    #[test]
    fn a_username_for_another_client_is_refused() {
        assert!(!username_names_client("hub/devB/?api-version=1", "devA"));
        assert!(!username_names_client("hub/devAB/?api-version=1", "devA"));
        assert!(!username_names_client(
            "hub/dev1/?api-version=1",
            "dev1/mod1"
        ));
        assert!(!username_names_client("/devA/", "devA"));
        assert!(!username_names_client("devA", "devA"));
    }
}
