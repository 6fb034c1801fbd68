//! How a client connects: trust, port, timers. Every field has the default the Azure device SDK uses.

use std::time::Duration;

/// Settings of a client; [`ClientOptions::default`] is what the Azure device SDK does.
///
/// ```
/// use std::time::Duration;
/// use outpost_sdk::ClientOptions;
///
/// let options = ClientOptions {
///     port: Some(18883),
///     keep_alive: Duration::from_secs(30),
///     ..ClientOptions::default()
/// };
/// assert_eq!(options.token_ttl, Duration::from_secs(3600));
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The CA certificates (PEM, one or several) that the server's certificate must chain to. `None`: the
    /// trust bundle of the workload API for [`from_environment`](crate::ModuleClient::from_environment),
    /// else the system's CA bundle (`SSL_CERT_FILE`, `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_pem: Option<String>,
    /// The MQTT port. `None`: the port in the host name if it has one, else 8883 (the device SDK always
    /// dials 8883; tests that run several hubs on one machine set this instead).
    pub port: Option<u16>,
    /// The HTTPS port of the gateway for [`invoke_method`](crate::ModuleClient::invoke_method) (443).
    pub https_port: u16,
    /// The MQTT keep-alive; a PINGREQ goes out this often, and a server silent for as long again after it
    /// counts as gone.
    pub keep_alive: Duration,
    /// How long a generated token is valid; the client reconnects with a new one `token_renewal_margin`
    /// before it expires.
    pub token_ttl: Duration,
    /// How long before expiry a token is renewed (capped at a quarter of `token_ttl`).
    pub token_renewal_margin: Duration,
    /// How long an operation (a send, a twin read or patch) waits for its answer, connected or not.
    pub operation_timeout: Duration,
    /// Time allowed to open a connection (TCP, TLS and CONNACK).
    pub connect_timeout: Duration,
    /// The first pause before reconnecting; it doubles after every failed attempt...
    pub reconnect_min_delay: Duration,
    /// ...up to this.
    pub reconnect_max_delay: Duration,
    /// Product information appended to the user agent (`DeviceClientType` in the MQTT username).
    pub product_info: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            ca_pem: None,
            port: None,
            https_port: 443,
            keep_alive: Duration::from_mins(1),
            token_ttl: Duration::from_hours(1),
            token_renewal_margin: Duration::from_mins(2),
            operation_timeout: Duration::from_mins(1),
            connect_timeout: Duration::from_secs(30),
            reconnect_min_delay: Duration::from_secs(1),
            reconnect_max_delay: Duration::from_mins(1),
            product_info: String::new(),
        }
    }
}

impl ClientOptions {
    /// The user agent this client announces.
    pub(crate) fn user_agent(&self) -> String {
        let base = concat!("outpost-sdk-rust/", env!("CARGO_PKG_VERSION"));
        if self.product_info.is_empty() {
            base.to_owned()
        } else {
            format!("{base} {}", self.product_info)
        }
    }

    /// How long after issuing a token to renew it.
    pub(crate) fn renew_after(&self) -> Duration {
        let margin = self.token_renewal_margin.min(self.token_ttl / 4);
        self.token_ttl.saturating_sub(margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_token_is_renewed_two_minutes_before_it_expires() {
        assert_eq!(
            ClientOptions::default().renew_after(),
            Duration::from_mins(58)
        );
    }

    #[test]
    fn a_short_lived_token_is_renewed_after_three_quarters_of_its_life() {
        let options = ClientOptions {
            token_ttl: Duration::from_secs(8),
            ..ClientOptions::default()
        };
        assert_eq!(options.renew_after(), Duration::from_secs(6));
    }

    #[test]
    fn product_info_is_appended_to_the_user_agent() {
        let options = ClientOptions {
            product_info: "filter/1.0".into(),
            ..ClientOptions::default()
        };
        assert!(options.user_agent().starts_with("outpost-sdk-rust/"));
        assert!(options.user_agent().ends_with(" filter/1.0"));
    }
}
