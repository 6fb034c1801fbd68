//! Device and module ids (AZURE-COMPAT §3.4) and the identity that owns a connection.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid device or module id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is the empty string.
    #[error("an id may not be empty")]
    Empty,
    /// The id is longer than 128 characters.
    #[error("an id may hold at most 128 characters, this one has {len}")]
    TooLong {
        /// Length of the refused id, in characters.
        len: usize,
    },
    /// The id holds a character outside ASCII alphanumerics and `- . + % _ # * ? ! ( ) , = @ $ '`.
    #[error("an id may not contain {ch:?}")]
    IllegalCharacter {
        /// The first refused character.
        ch: char,
    },
}

/// A device id: case-sensitive, at most 128 ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// A module id: same rules as a device id (`$edgeAgent` and `$edgeHub` are valid).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleId(String);

/// Longest id IoT Hub accepts, in characters (all ASCII, so also bytes).
const MAX_ID_LEN: usize = 128;

/// Punctuation allowed in ids besides ASCII alphanumerics.
const ID_PUNCTUATION: &str = "-.+%_#*?!(),=@$'";

/// Checks the rules of AZURE-COMPAT §3.4 shared by device and module ids.
fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    let len = s.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong { len });
    }
    match s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(c)))
    {
        Some(ch) => Err(IdError::IllegalCharacter { ch }),
        None => Ok(()),
    }
}

impl DeviceId {
    /// Validates `s` as a device id.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        validate(&s)?;
        Ok(Self(s))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ModuleId {
    /// Validates `s` as a module id.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        validate(&s)?;
        Ok(Self(s))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl FromStr for DeviceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl TryFrom<String> for ModuleId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<ModuleId> for String {
    fn from(id: ModuleId) -> String {
        id.0
    }
}

impl FromStr for ModuleId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

/// Who is on the other end of a connection: a device, or a module of a device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The device (for a module, the device it belongs to).
    pub device: DeviceId,
    /// The module, if the identity is a module.
    pub module: Option<ModuleId>,
}

impl Identity {
    /// A device identity.
    pub fn device(d: DeviceId) -> Self {
        Self {
            device: d,
            module: None,
        }
    }

    /// A module identity.
    pub fn module(d: DeviceId, m: ModuleId) -> Self {
        Self {
            device: d,
            module: Some(m),
        }
    }

    /// The MQTT client id: `d` or `d/m`, not encoded.
    pub fn client_id(&self) -> String {
        // Built directly rather than through `Display`: the edge hub asks for it per message.
        let device = self.device.as_str();
        match &self.module {
            None => device.to_owned(),
            Some(module) => {
                let mut id = String::with_capacity(device.len() + 1 + module.as_str().len());
                id.push_str(device);
                id.push('/');
                id.push_str(module.as_str());
                id
            }
        }
    }

    /// Parses an MQTT client id, `d` or `d/m`.
    pub fn parse_client_id(s: &str) -> Result<Self, IdError> {
        // '/' is not a legal id character, so the first one separates device from module;
        // a second one lands in the module id and is refused there.
        match s.split_once('/') {
            None => Ok(Self::device(DeviceId::new(s)?)),
            Some((d, m)) => Ok(Self::module(DeviceId::new(d)?, ModuleId::new(m)?)),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.module {
            None => f.write_str(self.device.as_str()),
            Some(m) => write!(f, "{}/{}", self.device.as_str(), m.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_punctuation_mark_is_accepted() {
        let id = format!("a{ID_PUNCTUATION}z09");
        assert_eq!(DeviceId::new(id.clone()).unwrap().as_str(), id);
    }

    #[test]
    fn system_module_names_are_valid_module_ids() {
        assert!(ModuleId::new("$edgeAgent").is_ok());
        assert!(ModuleId::new("$edgeHub").is_ok());
    }

    #[test]
    fn an_empty_id_is_refused() {
        assert_eq!(DeviceId::new(""), Err(IdError::Empty));
    }

    #[test]
    fn an_id_of_128_chars_is_accepted_and_129_refused() {
        assert!(DeviceId::new("a".repeat(128)).is_ok());
        assert_eq!(
            ModuleId::new("a".repeat(129)),
            Err(IdError::TooLong { len: 129 })
        );
    }

    #[test]
    fn slash_space_and_non_ascii_are_refused() {
        assert_eq!(
            DeviceId::new("a/b"),
            Err(IdError::IllegalCharacter { ch: '/' })
        );
        assert_eq!(
            DeviceId::new("a b"),
            Err(IdError::IllegalCharacter { ch: ' ' })
        );
        assert_eq!(
            DeviceId::new("caf\u{e9}"),
            Err(IdError::IllegalCharacter { ch: '\u{e9}' })
        );
    }

    #[test]
    fn a_long_non_ascii_id_reports_its_length_in_chars() {
        assert_eq!(
            DeviceId::new("\u{e9}".repeat(200)),
            Err(IdError::TooLong { len: 200 })
        );
    }

    #[test]
    fn client_ids_parse_into_device_and_module_identities() {
        let d = Identity::parse_client_id("devA").unwrap();
        assert_eq!(d, Identity::device(DeviceId::new("devA").unwrap()));
        let m = Identity::parse_client_id("dev1/$edgeHub").unwrap();
        assert_eq!(m.module.as_ref().map(ModuleId::as_str), Some("$edgeHub"));
        assert_eq!(m.client_id(), "dev1/$edgeHub");
        assert_eq!(m.to_string(), "dev1/$edgeHub");
    }

    #[test]
    fn client_ids_with_empty_parts_or_two_slashes_are_refused() {
        assert_eq!(Identity::parse_client_id(""), Err(IdError::Empty));
        assert_eq!(Identity::parse_client_id("d/"), Err(IdError::Empty));
        assert_eq!(Identity::parse_client_id("/m"), Err(IdError::Empty));
        assert_eq!(
            Identity::parse_client_id("d/m/x"),
            Err(IdError::IllegalCharacter { ch: '/' })
        );
    }

    #[test]
    fn ids_serialize_as_plain_strings_and_deserialize_only_when_valid() {
        let id = DeviceId::new("dev1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"dev1\"");
        assert_eq!(serde_json::from_str::<DeviceId>("\"dev1\"").unwrap(), id);
        assert!(serde_json::from_str::<ModuleId>("\"bad id\"").is_err());
    }

    #[test]
    fn ids_parse_from_str() {
        assert_eq!("m1".parse::<ModuleId>().unwrap().to_string(), "m1");
        assert!("".parse::<DeviceId>().is_err());
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(
            IdError::IllegalCharacter { ch: '/' }.to_string(),
            "an id may not contain '/'"
        );
        assert!(IdError::TooLong { len: 130 }.to_string().contains("130"));
    }
}
