//! The wire contract of the edge runtime's workload API (AZURE-COMPAT §6.2): every request and answer body as a
//! serde type that both ends import, and the API versions. The daemon's side is `outpost_edge::workload`, the
//! module's side `outpost_sdk::WorkloadClient`; Azure's SDKs inside modules speak it too, so the names are those
//! of aziot-edged's workload API and do not change.
//!
//! | route                                             | request                      | answer                        |
//! |---------------------------------------------------|------------------------------|-------------------------------|
//! | `GET /trust-bundle`                               |                              | [`TrustBundleResponse`]       |
//! | `POST /modules/{m}/genid/{g}/sign`                | [`SignRequest`]              | [`SignResponse`]              |
//! | `POST /modules/{m}/genid/{g}/certificate/server`  | [`ServerCertificateRequest`] | [`ServerCertificateResponse`] |
//!
//! Every request names an [`ApiVersion`] in its `api-version` query parameter; every refusal is an
//! [`ErrorResponse`]. A missing field is an error, except where a field is documented as optional.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The query parameter that carries the [`ApiVersion`].
pub const API_VERSION_PARAM: &str = "api-version";

/// A workload API version this runtime speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiVersion(&'static str);

impl ApiVersion {
    /// Every version the workload API accepts, oldest first: those aziot-edged has announced.
    pub const ALL: [Self; 7] = [
        Self("2018-06-28"),
        Self("2019-01-30"),
        Self("2019-10-22"),
        Self("2019-11-05"),
        Self("2020-07-07"),
        Self("2021-12-07"),
        Self("2022-08-03"),
    ];

    /// The version the runtime announces to modules (`IOTEDGE_APIVERSION`).
    pub const CURRENT: Self = Self::ALL[Self::ALL.len() - 1];

    /// The version `text` names, if this runtime speaks it.
    pub fn parse(text: &str) -> Result<Self, ApiVersionError> {
        Self::ALL
            .into_iter()
            .find(|v| v.0 == text)
            .ok_or_else(|| ApiVersionError::Unsupported(text.to_owned()))
    }

    /// The version a request's query names (its [`API_VERSION_PARAM`]).
    pub fn of_query(query: Option<&str>) -> Result<Self, ApiVersionError> {
        let prefix = format!("{API_VERSION_PARAM}=");
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix(prefix.as_str()))
            .ok_or(ApiVersionError::Missing)
            .and_then(Self::parse)
    }

    /// Its wire form.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Why a request's API version is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiVersionError {
    /// The request names no version.
    #[error("api-version not specified")]
    Missing,
    /// The request names a version this runtime does not speak.
    #[error("invalid api-version {0:?}")]
    Unsupported(String),
}

/// `GET /trust-bundle`: the PEM certificates the gateway's server certificate chains to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundleResponse {
    /// The certificates, PEM.
    pub certificate: String,
}

/// The signature algorithm of a [`SignRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignAlgorithm {
    /// HMAC-SHA256, the only one the workload API offers.
    #[serde(rename = "HMACSHA256")]
    HmacSha256,
}

/// `POST .../sign`: sign `data` with the module's key (which never leaves the runtime).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignRequest {
    /// Which key: the SDKs send `primary`, and the primary key signs whatever this says, as in aziot-edged.
    pub key_id: String,
    /// The algorithm.
    pub algo: SignAlgorithm,
    /// What to sign, base64.
    pub data: String,
}

impl SignRequest {
    /// A request to sign `data` with the module's primary key, as the SDKs send it.
    pub fn primary(data: &[u8]) -> Self {
        Self {
            key_id: "primary".to_owned(),
            algo: SignAlgorithm::HmacSha256,
            data: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data),
        }
    }
}

/// The answer to a [`SignRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResponse {
    /// `base64(HMAC-SHA256(key, data))`.
    pub digest: String,
}

/// `POST .../certificate/server`: a server certificate for the module, issued by the edge device's CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCertificateRequest {
    /// The certificate's common name.
    pub common_name: String,
    /// Optional: the expiry the caller would like (RFC 3339). The runtime's configured lifetime wins, as in
    /// aziot-edged; the answer says which expiry was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

/// The kind of a [`PrivateKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivateKeyKind {
    /// The key itself, in `bytes`.
    Key,
}

/// The private key of an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateKey {
    /// Always [`PrivateKeyKind::Key`].
    #[serde(rename = "type")]
    pub kind: PrivateKeyKind,
    /// The key, PEM.
    pub bytes: String,
}

/// The answer to a [`ServerCertificateRequest`] (`201 Created`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCertificateResponse {
    /// Its private key.
    pub private_key: PrivateKey,
    /// The certificate and its chain, PEM.
    pub certificate: String,
    /// Its `notAfter`, RFC 3339: the SDKs ask for a new one before then.
    pub expiration: String,
}

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::edge_link::tests::round_trip;

    #[test]
    fn a_sign_request_is_what_the_azure_sdks_send() {
        // azure-iot-device's edge_hsm.py, the C# and Node SDKs: keyId, algo and data.
        let request: SignRequest =
            round_trip(json!({"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}));
        assert_eq!(request, SignRequest::primary(b"hi"));
        round_trip::<SignResponse>(json!({"digest": "ZGln"}));
    }

    #[test]
    fn a_sign_request_missing_a_field_or_naming_another_algorithm_does_not_parse() {
        for body in [
            json!({"keyId": "primary", "algo": "HMACSHA256"}),
            json!({"keyId": "primary", "data": "aGk="}),
            json!({"algo": "HMACSHA256", "data": "aGk="}),
            json!({"keyId": "primary", "algo": "RSA", "data": "aGk="}),
        ] {
            assert!(
                serde_json::from_value::<SignRequest>(body.clone()).is_err(),
                "{body}"
            );
        }
        assert!(serde_json::from_value::<SignResponse>(json!({})).is_err());
    }

    #[test]
    fn a_server_certificate_request_and_answer_round_trip() {
        let request: ServerCertificateRequest = round_trip(json!({"commonName": "filter"}));
        assert_eq!(request.expiration, None);
        round_trip::<ServerCertificateRequest>(
            json!({"commonName": "filter", "expiration": "2027-01-01T00:00:00Z"}),
        );
        assert!(serde_json::from_value::<ServerCertificateRequest>(json!({})).is_err());
        let answer: ServerCertificateResponse = round_trip(json!({
            "privateKey": {"type": "key", "bytes": "KEY"},
            "certificate": "CERT",
            "expiration": "2027-01-01T00:00:00+00:00",
        }));
        assert_eq!(answer.private_key.kind, PrivateKeyKind::Key);
        assert!(serde_json::from_value::<ServerCertificateResponse>(
            json!({"certificate": "CERT", "expiration": "x"})
        )
        .is_err());
    }

    #[test]
    fn trust_bundle_and_error_bodies_round_trip() {
        round_trip::<TrustBundleResponse>(json!({"certificate": "PEM"}));
        round_trip::<ErrorResponse>(json!({"message": "forbidden"}));
        assert!(serde_json::from_value::<TrustBundleResponse>(json!({})).is_err());
    }

    #[test]
    fn the_api_version_is_read_from_the_query() {
        assert_eq!(
            ApiVersion::of_query(Some("api-version=2022-08-03")),
            Ok(ApiVersion::CURRENT)
        );
        assert_eq!(
            ApiVersion::of_query(Some("a=b&api-version=2019-01-30"))
                .unwrap()
                .to_string(),
            "2019-01-30"
        );
        assert_eq!(ApiVersion::of_query(None), Err(ApiVersionError::Missing));
        assert_eq!(
            ApiVersion::of_query(Some("api-version=1999-01-01")),
            Err(ApiVersionError::Unsupported("1999-01-01".into()))
        );
    }
}
