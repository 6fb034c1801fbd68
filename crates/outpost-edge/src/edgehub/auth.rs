//! Who may connect to the edge hub: this device's modules and the devices whose parent it is, checked against
//! identities cached on the device so that authentication works while the hub is unreachable.

use std::time::{Duration, Instant};

use outpost_core::{Identity, SasToken};
use outpost_pki::client_auth;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

/// The credentials of one identity in scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedIdentity {
    /// `d` or `d/m`.
    pub client: String,
    /// Base64 keys that may sign its tokens.
    pub keys: Vec<String>,
    /// Whether it is enabled.
    pub enabled: bool,
    /// How it authenticates with a client certificate, if it does.
    pub x509: Option<X509Registration>,
}

/// How an identity in scope authenticates with a client certificate (IoT Hub's `selfSigned` and
/// `certificateAuthority`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum X509Registration {
    /// The leaf's thumbprint is one of these.
    Thumbprints(Vec<String>),
    /// The chain verifies to one of the hub's CA certificates, and the leaf names the device.
    CertificateAuthority,
}

/// The hub's CA certificates in a scope document (`caCertificates`, PEM), DER; what does not read is skipped.
pub fn scope_ca_certificates(scope: &Value) -> Vec<CertificateDer<'static>> {
    scope
        .get("caCertificates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|pem| rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok())
        .collect()
}

/// Reads the identities of a scope document (`{"devices":[Device..], "modules":[Module..]}`, the hub's JSON).
pub fn scoped_identities(scope: &Value) -> Vec<ScopedIdentity> {
    let keys = |entry: &Value| -> Vec<String> {
        ["primaryKey", "secondaryKey"]
            .iter()
            .filter_map(|k| {
                entry
                    .pointer(&format!("/authentication/symmetricKey/{k}"))
                    .and_then(Value::as_str)
            })
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let x509 = |entry: &Value| -> Option<X509Registration> {
        match entry
            .pointer("/authentication/type")
            .and_then(Value::as_str)?
        {
            "selfSigned" => Some(X509Registration::Thumbprints(
                ["primaryThumbprint", "secondaryThumbprint"]
                    .iter()
                    .filter_map(|t| {
                        entry
                            .pointer(&format!("/authentication/x509Thumbprint/{t}"))
                            .and_then(Value::as_str)
                    })
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
            "certificateAuthority" => Some(X509Registration::CertificateAuthority),
            _ => None,
        }
    };
    let mut identities = Vec::new();
    for device in scope
        .get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(id) = device.get("deviceId").and_then(Value::as_str) {
            let enabled = device.get("status").and_then(Value::as_str) != Some("disabled");
            identities.push(ScopedIdentity {
                client: id.to_owned(),
                keys: keys(device),
                enabled,
                x509: x509(device),
            });
        }
    }
    for module in scope
        .get("modules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(d), Some(m)) = (
            module.get("deviceId").and_then(Value::as_str),
            module.get("moduleId").and_then(Value::as_str),
        ) {
            identities.push(ScopedIdentity {
                client: format!("{d}/{m}"),
                keys: keys(module),
                enabled: true,
                x509: x509(module),
            });
        }
    }
    identities
}

/// How often at most an unknown client may make the edge hub ask the hub for its scope.
pub const UNKNOWN_CLIENT_REFRESH: Duration = Duration::from_secs(10);

/// Limits the scope refreshes that unknown clients cause: a client not in the cached scope may be a device or
/// module created since the last refresh, so the edge asks the hub, but at most once per [`UNKNOWN_CLIENT_REFRESH`]
/// over all clients, so that a client retrying with a made-up id cannot make the edge query the hub on every
/// attempt. One instant, so bounded by construction; a client refused meanwhile is refused until it retries after
/// the window (the SDKs retry with back-off).
#[derive(Debug, Default)]
pub struct ScopeRefreshGate {
    last: Option<Instant>,
}

impl ScopeRefreshGate {
    /// Whether a refresh may start at `now`; if so, it counts as started.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < UNKNOWN_CLIENT_REFRESH)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Why a client is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The identity is not behind this edge device (or not known here yet).
    #[error("{0} is not in this edge device's scope")]
    NotInScope(String),
    /// The identity is disabled.
    #[error("{0} is disabled")]
    Disabled(String),
    /// The client certificate does not authenticate the identity (see `outpost_pki::client_auth`).
    #[error("bad client certificate for {client}: {reason}")]
    BadCertificate {
        /// Who tried.
        client: String,
        /// Why it failed.
        reason: String,
    },
    /// The token is malformed, expired, for another identity or another hub, or wrongly signed.
    #[error("bad token for {client}: {reason}")]
    BadToken {
        /// Who tried.
        client: String,
        /// Why it failed.
        reason: String,
    },
}

/// Checks a SAS token for `identity`, whose keys are `scoped` (None when unknown). The audience host may be
/// the hub's host name or this edge device's.
pub fn check_token(
    identity: &Identity,
    token: &str,
    scoped: Option<&ScopedIdentity>,
    hosts: &[&str],
    now_unix: u64,
) -> Result<(), AuthError> {
    let client = identity.client_id();
    let bad = |reason: String| AuthError::BadToken {
        client: client.clone(),
        reason,
    };
    let scoped = scoped.ok_or_else(|| AuthError::NotInScope(client.clone()))?;
    if !scoped.enabled {
        return Err(AuthError::Disabled(client.clone()));
    }
    let token = SasToken::parse(token).map_err(|e| bad(e.to_string()))?;
    let scope = token.scope().map_err(|e| bad(e.to_string()))?;
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&scope.host)) {
        return Err(bad(format!(
            "the token is for {}, not this hub",
            scope.host
        )));
    }
    let same_device = scope
        .device
        .as_deref()
        .is_some_and(|d| d.eq_ignore_ascii_case(identity.device.as_str()));
    let same_module =
        scope.module.as_deref() == identity.module.as_ref().map(outpost_core::ModuleId::as_str);
    if !same_device || !same_module {
        return Err(bad("the token is for another identity".into()));
    }
    let keys: Vec<&str> = scoped.keys.iter().map(String::as_str).collect();
    token
        .verify(&keys, now_unix)
        .map_err(|e| bad(e.to_string()))
}

/// Checks the client certificate chain (leaf first) of `identity`, whose credentials are `scoped` (None when
/// unknown), as the hub does: its thumbprints, or a chain to one of `cas` (the hub's CA certificates, from the
/// scope) with the device id as the leaf's common name; at `now_unix`.
pub fn check_certificate(
    identity: &Identity,
    chain: &[CertificateDer<'static>],
    scoped: Option<&ScopedIdentity>,
    cas: &[CertificateDer<'static>],
    now_unix: i64,
) -> Result<(), AuthError> {
    let client = identity.client_id();
    let scoped = scoped.ok_or_else(|| AuthError::NotInScope(client.clone()))?;
    if !scoped.enabled {
        return Err(AuthError::Disabled(client));
    }
    let checked = match &scoped.x509 {
        Some(X509Registration::Thumbprints(thumbprints)) => {
            let thumbprints: Vec<&str> = thumbprints.iter().map(String::as_str).collect();
            client_auth::verify_self_signed(chain, &thumbprints, now_unix)
        }
        Some(X509Registration::CertificateAuthority) => {
            client_auth::verify_ca_signed(chain, cas, identity.device.as_str(), now_unix)
        }
        None => {
            return Err(AuthError::BadCertificate {
                client,
                reason: "the identity is not registered for X.509 authentication".into(),
            })
        }
    };
    checked.map_err(|e| AuthError::BadCertificate {
        client,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=";

    fn module(d: &str, m: &str) -> Identity {
        Identity::module(
            outpost_core::DeviceId::new(d).unwrap(),
            outpost_core::ModuleId::new(m).unwrap(),
        )
    }

    fn scope() -> Vec<ScopedIdentity> {
        scoped_identities(&json!({
            "devices": [{"deviceId": "leaf", "status": "enabled", "authentication": {"symmetricKey": {"primaryKey": KEY, "secondaryKey": ""}}}],
            "modules": [{"deviceId": "edge", "moduleId": "filter", "authentication": {"symmetricKey": {"primaryKey": KEY, "secondaryKey": ""}}}],
        }))
    }

    /// A certificate with common name `cn`, self-signed (a CA when `ca`) or signed by `issuer`.
    fn certificate(
        cn: &str,
        ca: bool,
        issuer: Option<&(rcgen::Certificate, rcgen::KeyPair)>,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = match issuer {
            Some((issuer, issuer_key)) => params.signed_by(&key, issuer, issuer_key).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        (cert, key)
    }

    #[test]
    fn x509_clients_in_scope_are_checked_against_their_thumbprints_or_the_hubs_cas_from_the_scope()
    {
        let ca = certificate("Fleet CA", true, None);
        let thumb = certificate("thumb", false, None);
        let signed = certificate("signed", false, Some(&ca));
        let print = outpost_pki::client_auth::thumbprints(thumb.0.der()).sha1;
        let document = json!({
            "devices": [
                {"deviceId": "thumb", "status": "enabled", "authentication": {"symmetricKey": {"primaryKey": "", "secondaryKey": ""},
                 "x509Thumbprint": {"primaryThumbprint": print, "secondaryThumbprint": null}, "type": "selfSigned"}},
                {"deviceId": "signed", "status": "enabled", "authentication": {"symmetricKey": {"primaryKey": "", "secondaryKey": ""},
                 "x509Thumbprint": {}, "type": "certificateAuthority"}},
                {"deviceId": "off", "status": "disabled", "authentication": {"symmetricKey": {"primaryKey": "", "secondaryKey": ""},
                 "x509Thumbprint": {}, "type": "certificateAuthority"}},
                {"deviceId": "leaf", "status": "enabled", "authentication": {"symmetricKey": {"primaryKey": KEY, "secondaryKey": ""},
                 "x509Thumbprint": {}, "type": "sas"}},
            ],
            "modules": [],
            "caCertificates": [ca.0.pem()],
        });
        let scoped = scoped_identities(&document);
        let cas = scope_ca_certificates(&document);
        assert_eq!(cas.len(), 1);
        let find = |c: &str| scoped.iter().find(|s| s.client == c);
        let device = |d: &str| Identity::device(outpost_core::DeviceId::new(d).unwrap());
        let now = outpost_pki::unix_now();
        let chain = |c: &(rcgen::Certificate, rcgen::KeyPair)| vec![c.0.der().clone()];
        check_certificate(&device("thumb"), &chain(&thumb), find("thumb"), &cas, now).unwrap();
        check_certificate(
            &device("signed"),
            &chain(&signed),
            find("signed"),
            &cas,
            now,
        )
        .unwrap();
        let bad =
            |d: &str, c: &(rcgen::Certificate, rcgen::KeyPair), cas: &[CertificateDer<'static>]| {
                check_certificate(&device(d), &chain(c), find(d), cas, now)
            };
        assert!(matches!(
            bad("thumb", &signed, &cas),
            Err(AuthError::BadCertificate { .. })
        ));
        assert!(matches!(
            bad("signed", &thumb, &cas),
            Err(AuthError::BadCertificate { .. })
        ));
        assert!(matches!(
            bad("signed", &signed, &[]),
            Err(AuthError::BadCertificate { .. })
        ));
        assert!(matches!(
            bad("leaf", &thumb, &cas),
            Err(AuthError::BadCertificate { .. })
        ));
        assert_eq!(
            bad("off", &signed, &cas),
            Err(AuthError::Disabled("off".into()))
        );
        assert_eq!(
            check_certificate(&device("nobody"), &chain(&thumb), None, &cas, now),
            Err(AuthError::NotInScope("nobody".into()))
        );
    }

    #[test]
    fn repeated_unknown_clients_cause_at_most_one_scope_refresh_per_window() {
        let mut gate = ScopeRefreshGate::default();
        let start = Instant::now();
        // 2,500 attempts, one every 10 ms for 25 s: refreshes at 0, 10 and 20 s only.
        let admitted: Vec<Duration> = (0..2_500u64)
            .map(|i| Duration::from_millis(i * 10))
            .filter(|&at| gate.admit(start + at))
            .collect();
        assert_eq!(
            admitted,
            vec![
                Duration::ZERO,
                UNKNOWN_CLIENT_REFRESH,
                2 * UNKNOWN_CLIENT_REFRESH
            ]
        );
    }

    #[test]
    fn a_module_token_signed_with_its_key_is_accepted_for_the_hub_or_the_edge_host() {
        let identity = module("edge", "filter");
        let scoped = scope();
        let entry = scoped.iter().find(|s| s.client == "edge/filter");
        for host in ["hub.local", "edge.local"] {
            let token =
                outpost_core::module_token(host, "edge", "filter", KEY, 4_000_000_000).unwrap();
            check_token(
                &identity,
                &token,
                entry,
                &["hub.local", "edge.local"],
                1_700_000_000,
            )
            .unwrap();
        }
    }

    #[test]
    fn forged_foreign_and_unknown_tokens_are_refused() {
        let scoped = scope();
        let leaf = outpost_core::Identity::device(outpost_core::DeviceId::new("leaf").unwrap());
        let entry = scoped.iter().find(|s| s.client == "leaf");
        let forged = outpost_core::device_token(
            "hub.local",
            "leaf",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            4_000_000_000,
        )
        .unwrap();
        assert!(matches!(
            check_token(&leaf, &forged, entry, &["hub.local"], 1_700_000_000),
            Err(AuthError::BadToken { .. })
        ));
        let other = outpost_core::device_token("hub.local", "other", KEY, 4_000_000_000).unwrap();
        assert!(matches!(
            check_token(&leaf, &other, entry, &["hub.local"], 1_700_000_000),
            Err(AuthError::BadToken { .. })
        ));
        let elsewhere =
            outpost_core::device_token("other-hub", "leaf", KEY, 4_000_000_000).unwrap();
        assert!(check_token(&leaf, &elsewhere, entry, &["hub.local"], 1_700_000_000).is_err());
        let stranger = module("edge", "stranger");
        assert_eq!(
            check_token(&stranger, &other, None, &["hub.local"], 0),
            Err(AuthError::NotInScope("edge/stranger".into()))
        );
    }
}
