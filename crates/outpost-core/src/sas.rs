//! Shared-access-signature tokens (AZURE-COMPAT §2.1): parse, verify, and build them as the Azure SDKs do.
//!
//! The string signed is the `sr` exactly as it appears in the token (already URL-encoded), `\n`, and the
//! decimal expiry; the HMAC-SHA256 key is the base64-decoded shared access key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::quote::{quote, quote_keep_slash, quote_plus, unquote};

/// The scheme word that starts every token.
const SCHEME: &str = "SharedAccessSignature";

/// How far a token's expiry may lie in the past and still be accepted (edgeHub's `MaxClockSkew`).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Why a SAS token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The token does not have the `SharedAccessSignature k=v&k=v` shape.
    #[error("malformed SAS token: {0}")]
    Malformed(String),
    /// A required field (`sr`, `sig` or `se`) is absent.
    #[error("SAS token lacks the field {0}")]
    MissingField(&'static str),
    /// The token expired (more than the allowed clock skew ago).
    #[error("SAS token expired at {expiry}")]
    Expired {
        /// The token's `se`, in Unix seconds.
        expiry: u64,
    },
    /// No key produces the token's signature.
    #[error("SAS signature does not match")]
    SignatureMismatch,
    /// A key is not valid base64.
    #[error("the shared access key is not valid base64")]
    BadKey,
    /// The token's resource is not of a recognised form.
    #[error("SAS token audience not accepted: {0}")]
    AudienceMismatch(String),
}

/// A parsed SAS token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as it appears in the token (still URL-encoded): it is what was signed.
    pub resource_raw: String,
    /// `sig`, URL-decoded: standard base64.
    pub signature: String,
    /// `se`: expiry in Unix seconds.
    pub expiry: u64,
    /// `skn`: the shared access policy name, for service tokens.
    pub key_name: Option<String>,
}

/// What a token grants access to, from its decoded `sr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScope {
    /// The hub host name.
    pub host: String,
    /// The device, for device and module tokens.
    pub device: Option<String>,
    /// The module, for module tokens.
    pub module: Option<String>,
}

impl SasToken {
    /// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]`.
    ///
    /// Fields may come in any order and their names are case-insensitive; unknown fields are ignored
    /// (as edgeHub does), a repeated field is refused.
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let mut words = token.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(SCHEME), Some(fields), None) => Self::parse_fields(fields),
            _ => Err(SasError::Malformed(format!(
                "expected \"{SCHEME} <fields>\""
            ))),
        }
    }

    fn parse_fields(fields: &str) -> Result<Self, SasError> {
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in fields.split('&') {
            let (name, value) = field
                .split_once('=')
                .ok_or_else(|| SasError::Malformed(format!("field {field:?} has no '='")))?;
            let slot = match name.to_ascii_lowercase().as_str() {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(SasError::Malformed(format!("field {name} appears twice")));
            }
        }
        let resource_raw = sr.ok_or(SasError::MissingField("sr"))?.to_owned();
        // Both `%2F` and a raw `/` occur in real signatures, and `+` is never a space here.
        let signature = decode_field("sig", sig.ok_or(SasError::MissingField("sig"))?)?;
        let expiry_text = decode_field("se", se.ok_or(SasError::MissingField("se"))?)?;
        let expiry = expiry_text
            .parse::<u64>()
            .map_err(|_| SasError::Malformed(format!("se {expiry_text:?} is not a Unix time")))?;
        let key_name = skn.map(|v| decode_field("skn", v)).transpose()?;
        if resource_raw.is_empty() || signature.is_empty() {
            return Err(SasError::Malformed("empty sr or sig".to_owned()));
        }
        Ok(Self {
            resource_raw,
            signature,
            expiry,
            key_name,
        })
    }

    /// Checks the expiry (allowing [`MAX_CLOCK_SKEW_SECS`]), then the signature against each key in fixed time.
    ///
    /// A key that is not valid base64 is skipped; if no key matched and some key was unusable, the answer
    /// is [`SasError::BadKey`] so that a broken registry entry is told apart from a forged token.
    pub fn verify(&self, keys_b64: &[&str], now_unix: u64) -> Result<(), SasError> {
        if self.expiry.saturating_add(MAX_CLOCK_SKEW_SECS) < now_unix {
            return Err(SasError::Expired {
                expiry: self.expiry,
            });
        }
        // A signature that is not base64 cannot match any key; still run the comparisons below so that
        // the time taken does not depend on it.
        let presented = STANDARD.decode(&self.signature).unwrap_or_default();
        let data = self.string_to_sign();
        let mut matched = subtle::Choice::from(0);
        let mut bad_key = false;
        for key in keys_b64 {
            match hmac_sha256(key, data.as_bytes()) {
                Ok(expected) => matched |= expected.as_slice().ct_eq(&presented),
                Err(_) => bad_key = true,
            }
        }
        if bool::from(matched) {
            Ok(())
        } else if bad_key {
            Err(SasError::BadKey)
        } else {
            Err(SasError::SignatureMismatch)
        }
    }

    /// Decodes `sr` into host, device and module: `host`, `host/devices/d` or `host/devices/d/modules/m`.
    pub fn scope(&self) -> Result<TokenScope, SasError> {
        let decoded = unquote(&self.resource_raw)
            .map_err(|_| SasError::AudienceMismatch(self.resource_raw.clone()))?;
        let refuse = || SasError::AudienceMismatch(decoded.clone());
        let parts: Vec<&str> = decoded.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(refuse());
        }
        let is = |i: usize, word: &str| parts[i].eq_ignore_ascii_case(word);
        let (device, module) = match parts.len() {
            1 => (None, None),
            3 if is(1, "devices") => (Some(parts[2]), None),
            5 if is(1, "devices") && is(3, "modules") => (Some(parts[2]), Some(parts[4])),
            _ => return Err(refuse()),
        };
        Ok(TokenScope {
            host: parts[0].to_owned(),
            device: device.map(str::to_owned),
            module: module.map(str::to_owned),
        })
    }

    /// `sr` as sent, `\n`, the decimal expiry.
    fn string_to_sign(&self) -> String {
        format!("{}\n{}", self.resource_raw, self.expiry)
    }
}

/// URL-decodes a token field.
fn decode_field(name: &str, value: &str) -> Result<String, SasError> {
    unquote(value)
        .map_err(|_| SasError::Malformed(format!("{name} is not valid UTF-8 once decoded")))
}

/// Raw HMAC-SHA256 of `data` with the base64-decoded key; an empty key is refused so it can never sign.
fn hmac_sha256(key_b64: &str, data: &[u8]) -> Result<Vec<u8>, SasError> {
    let key = STANDARD
        .decode(key_b64.trim())
        .map_err(|_| SasError::BadKey)?;
    if key.is_empty() {
        return Err(SasError::BadKey);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SasError::BadKey)?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// `base64(HMAC-SHA256(base64decode(key), data))`.
pub fn sign(key_b64: &str, data: &[u8]) -> Result<String, SasError> {
    hmac_sha256(key_b64, data).map(|mac| STANDARD.encode(mac))
}

/// A device token as azure-iot-device builds it: `sr=quote(host/devices/d)&sig=quote(sig)&se=expiry`.
pub fn device_token(
    host: &str,
    device: &str,
    key_b64: &str,
    expiry: u64,
) -> Result<String, SasError> {
    client_token(&format!("{host}/devices/{device}"), key_b64, expiry)
}

/// A module token as azure-iot-device builds it: like [`device_token`] with `/modules/m` in the resource.
pub fn module_token(
    host: &str,
    device: &str,
    module: &str,
    key_b64: &str,
    expiry: u64,
) -> Result<String, SasError> {
    client_token(
        &format!("{host}/devices/{device}/modules/{module}"),
        key_b64,
        expiry,
    )
}

/// The device SDK's format: both `sr` and `sig` quoted with `safe=""`, fields `sr,sig,se`.
fn client_token(resource: &str, key_b64: &str, expiry: u64) -> Result<String, SasError> {
    let sr = quote(resource);
    let sig = sign(key_b64, format!("{sr}\n{expiry}").as_bytes())?;
    Ok(format!("{SCHEME} sr={sr}&sig={}&se={expiry}", quote(&sig)))
}

/// A service (policy) token as azure-iot-hub builds it: `sr=quote_plus(host)`, `sig` quoted keeping `/`, then `se`, `skn`.
pub fn service_token(
    host: &str,
    policy: &str,
    key_b64: &str,
    expiry: u64,
) -> Result<String, SasError> {
    let sr = quote_plus(host);
    let sig = sign(key_b64, format!("{sr}\n{expiry}").as_bytes())?;
    Ok(format!(
        "{SCHEME} sr={sr}&sig={}&se={expiry}&skn={policy}",
        quote_keep_slash(&sig)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys and tokens of compat/wire/README.md, captured from the real SDKs.
    const MODULE_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const MODULE_TOKEN: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2Fmod1&sig=fwyouiWbu0DaWbXeErd0b10q7jA%2FWzE%2B1MuksO3aF8k%3D&se=1795455913";
    const DEVICE_KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=";
    const DEVICE_TOKEN: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FdevA&sig=iwE9ZK9RFz1TJ%2BfFJvInL6Zm1AIirdiDu%2FrGocfdN%2Bg%3D&se=1795455929";
    const SERVICE_KEY: &str = "c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M=";
    const SERVICE_TOKEN: &str = "SharedAccessSignature sr=localhost&sig=k1URs%2BT4sb0Jx8FxSqKaXshhan7q48S0LgrMqhorlOo%3D&se=1795455820&skn=iothubowner";
    /// A moment before all three tokens expire.
    const BEFORE_EXPIRY: u64 = 1_795_455_000;

    /// The same key with one bit of its first byte flipped.
    fn flipped(key: &str) -> String {
        let mut bytes = STANDARD.decode(key).unwrap();
        bytes[0] ^= 1;
        STANDARD.encode(bytes)
    }

    #[test]
    fn the_captured_sdk_tokens_verify_with_their_keys() {
        for (token, key) in [
            (MODULE_TOKEN, MODULE_KEY),
            (DEVICE_TOKEN, DEVICE_KEY),
            (SERVICE_TOKEN, SERVICE_KEY),
        ] {
            SasToken::parse(token)
                .unwrap()
                .verify(&[key], BEFORE_EXPIRY)
                .unwrap();
        }
    }

    #[test]
    fn the_captured_sdk_tokens_fail_with_a_flipped_key() {
        for (token, key) in [
            (MODULE_TOKEN, MODULE_KEY),
            (DEVICE_TOKEN, DEVICE_KEY),
            (SERVICE_TOKEN, SERVICE_KEY),
        ] {
            let parsed = SasToken::parse(token).unwrap();
            assert_eq!(
                parsed.verify(&[&flipped(key)], BEFORE_EXPIRY),
                Err(SasError::SignatureMismatch)
            );
        }
    }

    #[test]
    fn a_token_verifies_if_either_the_primary_or_the_secondary_key_signed_it() {
        let parsed = SasToken::parse(DEVICE_TOKEN).unwrap();
        parsed
            .verify(&[&flipped(DEVICE_KEY), DEVICE_KEY], BEFORE_EXPIRY)
            .unwrap();
    }

    #[test]
    fn a_token_is_accepted_until_five_minutes_after_its_expiry() {
        let parsed = SasToken::parse(DEVICE_TOKEN).unwrap();
        parsed.verify(&[DEVICE_KEY], 1_795_455_929 + 300).unwrap();
        assert_eq!(
            parsed.verify(&[DEVICE_KEY], 1_795_455_929 + 301),
            Err(SasError::Expired {
                expiry: 1_795_455_929
            })
        );
    }

    #[test]
    fn a_token_with_a_far_future_expiry_does_not_overflow() {
        let token = device_token("h", "d", DEVICE_KEY, u64::MAX).unwrap();
        SasToken::parse(&token)
            .unwrap()
            .verify(&[DEVICE_KEY], BEFORE_EXPIRY)
            .unwrap();
    }

    #[test]
    fn the_device_sdk_token_is_rebuilt_byte_for_byte() {
        assert_eq!(
            device_token("myhub.azure-devices.net", "devA", DEVICE_KEY, 1_795_455_929).unwrap(),
            DEVICE_TOKEN
        );
        assert_eq!(
            module_token(
                "myhub.azure-devices.net",
                "dev1",
                "mod1",
                MODULE_KEY,
                1_795_455_913
            )
            .unwrap(),
            MODULE_TOKEN
        );
    }

    #[test]
    fn the_service_sdk_token_is_rebuilt_byte_for_byte() {
        assert_eq!(
            service_token("localhost", "iothubowner", SERVICE_KEY, 1_795_455_820).unwrap(),
            SERVICE_TOKEN
        );
    }

    #[test]
    fn the_module_sign_request_of_the_workload_api_matches_the_token_signature() {
        // The workload API was asked to sign exactly this (base64 "data" of the captured /sign request).
        let data = b"myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2Fmod1\n1795455913";
        assert_eq!(
            sign(MODULE_KEY, data).unwrap(),
            "fwyouiWbu0DaWbXeErd0b10q7jA/WzE+1MuksO3aF8k="
        );
    }

    #[test]
    fn module_tokens_encode_the_dollar_of_system_modules() {
        let token = module_token("h", "d", "$edgeHub", MODULE_KEY, 10).unwrap();
        assert!(token
            .starts_with("SharedAccessSignature sr=h%2Fdevices%2Fd%2Fmodules%2F%24edgeHub&sig="));
        SasToken::parse(&token)
            .unwrap()
            .verify(&[MODULE_KEY], 0)
            .unwrap();
    }

    #[test]
    fn service_tokens_leave_slashes_of_the_signature_raw() {
        // Find an expiry whose signature contains a '/', to see it stay unencoded.
        let token = (0..200u64)
            .map(|se| service_token("localhost", "p", SERVICE_KEY, se).unwrap())
            .find(|t| {
                t.split("&sig=")
                    .nth(1)
                    .is_some_and(|rest| rest.split('&').next().unwrap().contains('/'))
            })
            .expect("some signature holds a slash");
        let parsed = SasToken::parse(&token).unwrap();
        assert!(parsed.signature.contains('/'));
        parsed.verify(&[SERVICE_KEY], 0).unwrap();
    }

    #[test]
    fn fields_parse_in_any_order_with_any_name_case() {
        let t =
            SasToken::parse("SharedAccessSignature SE=5&SKN=p&Sig=a%2Fb/c%3D&sR=h%2Fdevices%2Fd")
                .unwrap();
        assert_eq!(t.resource_raw, "h%2Fdevices%2Fd");
        assert_eq!(t.signature, "a/b/c=");
        assert_eq!(t.expiry, 5);
        assert_eq!(t.key_name.as_deref(), Some("p"));
    }

    #[test]
    fn a_plus_in_the_signature_stays_a_plus() {
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=h&sig=a+b&se=1")
                .unwrap()
                .signature,
            "a+b"
        );
    }

    #[test]
    fn malformed_tokens_are_refused_with_the_reason() {
        let err = |t: &str| SasToken::parse(t).unwrap_err();
        assert!(matches!(err(""), SasError::Malformed(_)));
        assert!(matches!(
            err("Bearer sr=h&sig=s&se=1"),
            SasError::Malformed(_)
        ));
        assert!(matches!(
            err("SharedAccessSignature sr=h&sig=s&se=1 extra"),
            SasError::Malformed(_)
        ));
        assert!(matches!(
            err("SharedAccessSignature sr=h&sig=s&se=soon"),
            SasError::Malformed(_)
        ));
        assert!(matches!(
            err("SharedAccessSignature sr=h&sig=s&se=-1"),
            SasError::Malformed(_)
        ));
        assert!(matches!(
            err("SharedAccessSignature sr=h&sig&se=1"),
            SasError::Malformed(_)
        ));
        assert!(matches!(
            err("SharedAccessSignature sr=h&sr=g&sig=s&se=1"),
            SasError::Malformed(_)
        ));
        assert!(matches!(
            err("SharedAccessSignature sr=h&sig=%FF&se=1"),
            SasError::Malformed(_)
        ));
        assert_eq!(
            err("SharedAccessSignature sig=s&se=1"),
            SasError::MissingField("sr")
        );
        assert_eq!(
            err("SharedAccessSignature sr=h&se=1"),
            SasError::MissingField("sig")
        );
        assert_eq!(
            err("SharedAccessSignature sr=h&sig=s"),
            SasError::MissingField("se")
        );
    }

    #[test]
    fn a_signature_that_is_not_base64_is_a_mismatch_not_a_panic() {
        let t = SasToken::parse("SharedAccessSignature sr=h&sig=!!!&se=1").unwrap();
        assert_eq!(t.verify(&[DEVICE_KEY], 0), Err(SasError::SignatureMismatch));
    }

    #[test]
    fn unusable_keys_are_reported_as_bad_keys() {
        let t = SasToken::parse(DEVICE_TOKEN).unwrap();
        assert_eq!(
            t.verify(&["not base64!"], BEFORE_EXPIRY),
            Err(SasError::BadKey)
        );
        assert_eq!(t.verify(&[""], BEFORE_EXPIRY), Err(SasError::BadKey));
        assert_eq!(
            t.verify(&[], BEFORE_EXPIRY),
            Err(SasError::SignatureMismatch)
        );
        assert_eq!(sign("", b"x"), Err(SasError::BadKey));
    }

    #[test]
    fn scopes_are_decoded_for_hub_device_and_module_tokens() {
        let scope = |t: &str| SasToken::parse(t).unwrap().scope();
        assert_eq!(
            scope(SERVICE_TOKEN).unwrap(),
            TokenScope {
                host: "localhost".into(),
                device: None,
                module: None
            }
        );
        assert_eq!(
            scope(DEVICE_TOKEN).unwrap(),
            TokenScope {
                host: "myhub.azure-devices.net".into(),
                device: Some("devA".into()),
                module: None
            }
        );
        assert_eq!(
            scope(MODULE_TOKEN).unwrap(),
            TokenScope {
                host: "myhub.azure-devices.net".into(),
                device: Some("dev1".into()),
                module: Some("mod1".into())
            }
        );
        // A device SDK token that was not URL-encoded still names its scope.
        let raw =
            scope("SharedAccessSignature sr=h/devices/d/modules/%24edgeHub&sig=s&se=1").unwrap();
        assert_eq!(raw.module.as_deref(), Some("$edgeHub"));
    }

    #[test]
    fn resources_of_other_shapes_are_an_audience_mismatch() {
        for sr in [
            "h%2Fdevices",
            "h%2Fthings%2Fd",
            "h%2Fdevices%2Fd%2Fmodules",
            "h%2Fdevices%2F%2Fmodules%2Fm",
            "h%2F",
            "%FF",
        ] {
            let t = SasToken::parse(&format!("SharedAccessSignature sr={sr}&sig=s&se=1")).unwrap();
            assert!(
                matches!(t.scope(), Err(SasError::AudienceMismatch(_))),
                "{sr}"
            );
        }
    }
}
