//! Messages as an application sees them: a body, system properties (message id, content type...) and
//! custom (application) properties. On the wire both kinds travel in the topic's property bag
//! (AZURE-COMPAT §1.4–1.5); `outpost-core` encodes and decodes it.

use std::collections::BTreeMap;

/// IoT Hub's limit on a device-to-cloud message (and so on telemetry and outputs).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// A telemetry, output, input or cloud-to-device message.
///
/// System properties are kept under their IoT Hub routing names (`messageId`, `correlationId`,
/// `contentType`, `contentEncoding`, `outputName`, `inputName`, `connectionDeviceId`, ...); custom
/// properties under the names the application chose.
///
/// ```
/// use outpost_sdk::Message;
///
/// let message = Message::json(&serde_json::json!({"temperature": 21.5}))
///     .with_message_id("m-1")
///     .with_property("alert", "false");
/// assert_eq!(message.content_type(), Some("application/json"));
/// assert_eq!(message.property("alert"), Some("false"));
/// assert_eq!(message.body_str(), Some(r#"{"temperature":21.5}"#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    body: Vec<u8>,
    system: BTreeMap<String, String>,
    properties: BTreeMap<String, Option<String>>,
}

impl Message {
    /// A message with this body and no properties.
    ///
    /// ```
    /// let message = outpost_sdk::Message::new("hello");
    /// assert_eq!(message.body(), b"hello");
    /// ```
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// A JSON message: the serialized value, with content type `application/json` and encoding `utf-8`
    /// (what IoT Hub routing needs to query the body).
    ///
    /// ```
    /// let message = outpost_sdk::Message::json(&[1, 2, 3]);
    /// assert_eq!(message.content_encoding(), Some("utf-8"));
    /// ```
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        // Serializing plain data into a Vec cannot fail; a map with non-string keys would, and then the
        // body is `null` rather than a panic.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Self::new(body)
            .with_content_type("application/json")
            .with_content_encoding("utf-8")
    }

    /// Sets a custom property.
    ///
    /// ```
    /// let message = outpost_sdk::Message::new("x").with_property("kind", "reading");
    /// assert_eq!(message.property("kind"), Some("reading"));
    /// ```
    #[must_use]
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), Some(value.into()));
        self
    }

    /// Sets a system property by its routing name (`messageId`, `contentType`, ...).
    ///
    /// ```
    /// let message = outpost_sdk::Message::new("x").with_system_property("userId", "u1");
    /// assert_eq!(message.system_property("userId"), Some("u1"));
    /// ```
    #[must_use]
    pub fn with_system_property(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.system.insert(name.into(), value.into());
        self
    }

    /// Sets the message id.
    #[must_use]
    pub fn with_message_id(self, id: impl Into<String>) -> Self {
        self.with_system_property("messageId", id)
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(self, id: impl Into<String>) -> Self {
        self.with_system_property("correlationId", id)
    }

    /// Sets the content type (`application/json`...).
    #[must_use]
    pub fn with_content_type(self, content_type: impl Into<String>) -> Self {
        self.with_system_property("contentType", content_type)
    }

    /// Sets the content encoding (`utf-8`...).
    #[must_use]
    pub fn with_content_encoding(self, encoding: impl Into<String>) -> Self {
        self.with_system_property("contentEncoding", encoding)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text, if it is UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// Takes the body out.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// A custom property; `None` when it is absent or was sent without a value.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).and_then(Option::as_deref)
    }

    /// Every custom property; a `None` value is a key sent without `=`.
    pub fn properties(&self) -> &BTreeMap<String, Option<String>> {
        &self.properties
    }

    /// A system property by its routing name.
    pub fn system_property(&self, name: &str) -> Option<&str> {
        self.system.get(name).map(String::as_str)
    }

    /// Every system property, by routing name.
    pub fn system_properties(&self) -> &BTreeMap<String, String> {
        &self.system
    }

    /// The message id.
    pub fn message_id(&self) -> Option<&str> {
        self.system_property("messageId")
    }

    /// The correlation id.
    pub fn correlation_id(&self) -> Option<&str> {
        self.system_property("correlationId")
    }

    /// The content type.
    pub fn content_type(&self) -> Option<&str> {
        self.system_property("contentType")
    }

    /// The content encoding.
    pub fn content_encoding(&self) -> Option<&str> {
        self.system_property("contentEncoding")
    }

    /// The input a module received this message on.
    pub fn input_name(&self) -> Option<&str> {
        self.system_property("inputName")
    }

    /// The device that sent this message, when the gateway says (`$.cdid`).
    pub fn connection_device_id(&self) -> Option<&str> {
        self.system_property("connectionDeviceId")
    }

    /// The module that sent this message, when the gateway says (`$.cmid`).
    pub fn connection_module_id(&self) -> Option<&str> {
        self.system_property("connectionModuleId")
    }
}

impl From<outpost_core::Message> for Message {
    fn from(message: outpost_core::Message) -> Self {
        Self {
            body: message.body.into(),
            system: message.system,
            properties: message.properties,
        }
    }
}

impl From<Message> for outpost_core::Message {
    fn from(message: Message) -> Self {
        Self {
            body: message.body.into(),
            system: message.system,
            properties: message.properties,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_through_the_core_type_with_all_properties() {
        let message = Message::new("b")
            .with_message_id("m")
            .with_property("k", "v");
        let core: outpost_core::Message = message.clone().into();
        assert_eq!(core.system["messageId"], "m");
        assert_eq!(Message::from(core), message);
    }

    #[test]
    fn a_property_sent_without_a_value_reads_as_absent_but_is_listed() {
        let mut core = outpost_core::Message::default();
        core.properties.insert("flag".into(), None);
        let message = Message::from(core);
        assert_eq!(message.property("flag"), None);
        assert!(message.properties().contains_key("flag"));
    }
}
