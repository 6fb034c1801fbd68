//! Connection strings (AZURE-COMPAT §2.2): `Key=Value` pairs separated by `;`.
//!
//! Parsing follows azure-iot-device's `connection_string.py`: keys are case-sensitive, a value is everything
//! after the first `=`, and an empty value counts as absent (the SDK tests values for truthiness).

use std::fmt;
use std::str::FromStr;

/// Why a connection string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A part is not `Key=Value`, or a key appears twice.
    #[error("malformed connection string: {0}")]
    Malformed(String),
    /// A key the SDKs do not know.
    #[error("unknown connection string key {0:?}")]
    UnknownKey(String),
    /// A required key is absent.
    #[error("connection string lacks {0}")]
    Missing(&'static str),
    /// Keys that may not be combined.
    #[error("conflicting connection string keys: {0}")]
    Conflict(String),
}

/// A parsed connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionString {
    /// `HostName`, possibly with a `:port`.
    pub host_name: String,
    /// `DeviceId`.
    pub device_id: Option<String>,
    /// `ModuleId`.
    pub module_id: Option<String>,
    /// `SharedAccessKeyName` (service policy).
    pub shared_access_key_name: Option<String>,
    /// `SharedAccessKey` (base64).
    pub shared_access_key: Option<String>,
    /// `SharedAccessSignature` (a ready-made token).
    pub shared_access_signature: Option<String>,
    /// `GatewayHostName` (connect through an edge hub).
    pub gateway_host_name: Option<String>,
    /// `x509=true`.
    pub x509: bool,
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, ConnectionStringError> {
        let mut cs = Self::default();
        let mut host_name = None;
        let mut x509 = None;
        let mut seen: Vec<&str> = Vec::new();
        // A trailing ';' (or an empty part) carries nothing; the SDKs never write one, tolerate it.
        for part in s.split(';').filter(|p| !p.trim().is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ConnectionStringError::Malformed(format!("{part:?} is not Key=Value"))
            })?;
            if seen.contains(&key) {
                return Err(ConnectionStringError::Malformed(format!(
                    "{key} appears twice"
                )));
            }
            seen.push(key);
            let value = (!value.is_empty()).then(|| value.to_owned());
            match key {
                "HostName" => host_name = value,
                "DeviceId" => cs.device_id = value,
                "ModuleId" => cs.module_id = value,
                "SharedAccessKeyName" => cs.shared_access_key_name = value,
                "SharedAccessKey" => cs.shared_access_key = value,
                "SharedAccessSignature" => cs.shared_access_signature = value,
                "GatewayHostName" => cs.gateway_host_name = value,
                "x509" => x509 = value,
                _ => return Err(ConnectionStringError::UnknownKey(key.to_owned())),
            }
        }
        cs.host_name = host_name.ok_or(ConnectionStringError::Missing("HostName"))?;
        cs.x509 = match x509.as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(ConnectionStringError::Malformed(format!(
                    "x509={v} is neither true nor false"
                )))
            }
        };
        cs.validate()?;
        Ok(cs)
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName={}", self.host_name)?;
        let optional = [
            ("DeviceId", &self.device_id),
            ("ModuleId", &self.module_id),
            ("SharedAccessKeyName", &self.shared_access_key_name),
            ("SharedAccessKey", &self.shared_access_key),
            ("SharedAccessSignature", &self.shared_access_signature),
            ("GatewayHostName", &self.gateway_host_name),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                write!(f, ";{key}={value}")?;
            }
        }
        if self.x509 {
            f.write_str(";x509=true")?;
        }
        Ok(())
    }
}

impl ConnectionString {
    /// `HostName={host};DeviceId={device};SharedAccessKey={key}`.
    pub fn device(host: &str, device: &str, key: &str) -> Self {
        Self {
            host_name: host.to_owned(),
            device_id: Some(device.to_owned()),
            shared_access_key: Some(key.to_owned()),
            ..Self::default()
        }
    }

    /// `HostName={host};DeviceId={device};ModuleId={module};SharedAccessKey={key}`.
    pub fn module(host: &str, device: &str, module: &str, key: &str) -> Self {
        Self {
            module_id: Some(module.to_owned()),
            ..Self::device(host, device, key)
        }
    }

    /// `HostName={host};SharedAccessKeyName={policy};SharedAccessKey={key}`.
    pub fn service(host: &str, policy: &str, key: &str) -> Self {
        Self {
            host_name: host.to_owned(),
            shared_access_key_name: Some(policy.to_owned()),
            shared_access_key: Some(key.to_owned()),
            ..Self::default()
        }
    }

    /// Splits `HostName` into host and optional port: `"host:8443"` gives `("host", Some(8443))`.
    ///
    /// A suffix that is not a port, and a bare IPv6 address, leave the whole name as the host.
    pub fn host_and_port(&self) -> (&str, Option<u16>) {
        let whole = (self.host_name.as_str(), None);
        let Some((host, port)) = self.host_name.rsplit_once(':') else {
            return whole;
        };
        let bare_ipv6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
        // `u16::from_str` would also take "+443"; a port is digits only.
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        match port.parse::<u16>() {
            Ok(port) if digits && !host.is_empty() && !bare_ipv6 => (host, Some(port)),
            _ => whole,
        }
    }

    /// The SDK's completeness rules: a device or module needs a key, x509 or a token; without a device
    /// it is a service string and needs a policy name with a key or token.
    fn validate(&self) -> Result<(), ConnectionStringError> {
        if self.x509 && self.shared_access_key.is_some() {
            return Err(ConnectionStringError::Conflict(
                "SharedAccessKey with x509=true".to_owned(),
            ));
        }
        if self.shared_access_key.is_some() && self.shared_access_signature.is_some() {
            return Err(ConnectionStringError::Conflict(
                "SharedAccessKey with SharedAccessSignature".to_owned(),
            ));
        }
        let has_secret = self.shared_access_key.is_some() || self.shared_access_signature.is_some();
        if self.device_id.is_some() {
            if has_secret || self.x509 {
                return Ok(());
            }
            return Err(ConnectionStringError::Missing("SharedAccessKey"));
        }
        if self.module_id.is_some() || self.x509 || self.gateway_host_name.is_some() || !has_secret
        {
            return Err(ConnectionStringError::Missing("DeviceId"));
        }
        if self.shared_access_key_name.is_none() {
            return Err(ConnectionStringError::Missing("SharedAccessKeyName"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ConnectionString, ConnectionStringError> {
        s.parse()
    }

    #[test]
    fn a_device_connection_string_parses_and_prints_back() {
        let s = "HostName=myhub.azure-devices.net;DeviceId=devA;SharedAccessKey=a2tra2s=";
        let cs = parse(s).unwrap();
        assert_eq!(
            cs,
            ConnectionString::device("myhub.azure-devices.net", "devA", "a2tra2s=")
        );
        assert_eq!(cs.to_string(), s);
    }

    #[test]
    fn a_value_keeps_everything_after_the_first_equals_sign() {
        let cs = parse("HostName=h;DeviceId=d;SharedAccessKey=YWJj==").unwrap();
        assert_eq!(cs.shared_access_key.as_deref(), Some("YWJj=="));
    }

    #[test]
    fn a_module_connection_string_prints_in_canonical_order() {
        let cs = parse("SharedAccessKey=k;ModuleId=m;GatewayHostName=edge;DeviceId=d;HostName=h")
            .unwrap();
        assert_eq!(
            cs.to_string(),
            "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=k;GatewayHostName=edge"
        );
        assert_eq!(
            ConnectionString::module("h", "d", "m", "k").to_string(),
            "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=k"
        );
    }

    #[test]
    fn a_service_connection_string_parses_with_a_port() {
        let cs = parse("HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=k")
            .unwrap();
        assert_eq!(
            cs,
            ConnectionString::service("localhost:8443", "iothubowner", "k")
        );
        assert_eq!(cs.host_and_port(), ("localhost", Some(8443)));
        assert_eq!(
            cs.to_string(),
            "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=k"
        );
    }

    #[test]
    fn host_and_port_leaves_hosts_without_a_valid_port_whole() {
        let host = |h: &str| ConnectionString {
            host_name: h.to_owned(),
            ..ConnectionString::default()
        };
        assert_eq!(host("h").host_and_port(), ("h", None));
        assert_eq!(host("h:+443").host_and_port(), ("h:+443", None));
        assert_eq!(host("h:70000").host_and_port(), ("h:70000", None));
        assert_eq!(host(":443").host_and_port(), (":443", None));
        assert_eq!(host("::1").host_and_port(), ("::1", None));
        assert_eq!(host("[::1]:8883").host_and_port(), ("[::1]", Some(8883)));
    }

    #[test]
    fn an_x509_device_needs_no_key() {
        let cs = parse("HostName=h;DeviceId=d;x509=true").unwrap();
        assert!(cs.x509);
        assert_eq!(cs.to_string(), "HostName=h;DeviceId=d;x509=true");
    }

    #[test]
    fn a_device_with_a_ready_made_token_is_accepted() {
        let cs = parse(
            "HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=h&sig=s&se=1",
        )
        .unwrap();
        assert_eq!(
            cs.shared_access_signature.as_deref(),
            Some("SharedAccessSignature sr=h&sig=s&se=1")
        );
    }

    #[test]
    fn unknown_and_lowercase_keys_are_refused() {
        assert_eq!(
            parse("HostName=h;DeviceId=d;SharedAccessKey=k;Foo=1"),
            Err(ConnectionStringError::UnknownKey("Foo".into()))
        );
        assert_eq!(
            parse("hostname=h;DeviceId=d;SharedAccessKey=k"),
            Err(ConnectionStringError::UnknownKey("hostname".into()))
        );
    }

    #[test]
    fn parts_without_equals_and_repeated_keys_are_malformed() {
        assert!(matches!(
            parse("HostName=h;DeviceId;SharedAccessKey=k"),
            Err(ConnectionStringError::Malformed(_))
        ));
        assert!(matches!(
            parse("HostName=h;HostName=g;DeviceId=d;SharedAccessKey=k"),
            Err(ConnectionStringError::Malformed(_))
        ));
        assert!(matches!(
            parse("HostName=h;DeviceId=d;x509=yes"),
            Err(ConnectionStringError::Malformed(_))
        ));
    }

    #[test]
    fn incomplete_strings_name_what_is_missing() {
        assert_eq!(parse(""), Err(ConnectionStringError::Missing("HostName")));
        assert_eq!(
            parse("HostName=;DeviceId=d;SharedAccessKey=k"),
            Err(ConnectionStringError::Missing("HostName"))
        );
        assert_eq!(
            parse("HostName=h;DeviceId=d"),
            Err(ConnectionStringError::Missing("SharedAccessKey"))
        );
        assert_eq!(
            parse("HostName=h;SharedAccessKey=k"),
            Err(ConnectionStringError::Missing("SharedAccessKeyName"))
        );
        assert_eq!(
            parse("HostName=h;ModuleId=m;SharedAccessKey=k"),
            Err(ConnectionStringError::Missing("DeviceId"))
        );
        assert_eq!(
            parse("HostName=h;SharedAccessKeyName=p"),
            Err(ConnectionStringError::Missing("DeviceId"))
        );
    }

    #[test]
    fn mixing_a_key_with_x509_or_a_token_is_a_conflict() {
        assert!(matches!(
            parse("HostName=h;DeviceId=d;SharedAccessKey=k;x509=true"),
            Err(ConnectionStringError::Conflict(_))
        ));
        assert!(matches!(
            parse("HostName=h;DeviceId=d;SharedAccessKey=k;SharedAccessSignature=t"),
            Err(ConnectionStringError::Conflict(_))
        ));
        assert!(parse("HostName=h;DeviceId=d;SharedAccessKey=k;x509=false").is_ok());
    }

    #[test]
    fn a_trailing_semicolon_is_tolerated() {
        assert!(parse("HostName=h;DeviceId=d;SharedAccessKey=k;").is_ok());
    }
}
