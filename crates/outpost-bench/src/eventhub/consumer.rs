//! The back-end side: one Event Hubs consumer per partition, as `EventHubConsumerClient` reads the hub's
//! Event Hubs-compatible endpoint. Each consumer is its own AMQP connection over TLS (SASL ANONYMOUS), puts a
//! SAS token of the connection string's policy on `$cbs` (signed as azure-eventhub signs it: the key's text as
//! the HMAC key, the resource `sb://HOST/NAME`), and attaches a receiver to
//! `NAME/ConsumerGroups/$Default/Partitions/{p}` from the latest event, with azure-eventhub's default prefetch
//! of 300 as its credit. Events arrive pre-settled, as the head's tests read them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Properties, Source,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// azure-eventhub's default prefetch: the credit each consumer keeps open.
const PREFETCH: u32 = 300;

/// The selector filter of a receiver that starts after the latest event.
const LATEST: &str = "amqp.annotation.x-opt-offset > '@latest'";

/// The filter name (and descriptor) Event Hubs clients send a selector under.
const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";

/// CBS tokens the harness signs live this long: longer than any run.
const TOKEN_TTL_SECS: u64 = 3600;

/// What an Event Hubs connection string says (`Endpoint=sb://HOST/;SharedAccessKeyName=..;..;EntityPath=..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubConnection {
    /// The host, with its port when the hub does not serve 5671.
    pub endpoint_host: String,
    /// The shared access policy.
    pub key_name: String,
    /// The policy's key, as printed.
    pub key: String,
    /// The Event Hub's name.
    pub entity_path: String,
}

impl std::str::FromStr for EventHubConnection {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let fields: HashMap<&str, &str> = text
            .trim()
            .split(';')
            .filter(|f| !f.is_empty())
            .filter_map(|f| f.split_once('='))
            .collect();
        let field = |name: &str| {
            fields
                .get(name)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| anyhow!("the Event Hubs connection string has no {name}"))
        };
        let endpoint = field("Endpoint")?;
        let endpoint_host = endpoint
            .strip_prefix("sb://")
            .ok_or_else(|| anyhow!("the Endpoint {endpoint} is not sb://HOST/"))?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            endpoint_host,
            key_name: field("SharedAccessKeyName")?,
            key: field("SharedAccessKey")?,
            entity_path: field("EntityPath")?,
        })
    }
}

impl EventHubConnection {
    /// The host without its port: the TLS server name and the token's resource.
    pub fn host(&self) -> &str {
        self.endpoint_host
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(self.endpoint_host.as_str(), |(host, _)| host)
    }

    /// The audience azure-eventhub puts its token on: `sb://HOST/NAME`.
    pub fn audience(&self) -> String {
        format!("sb://{}/{}", self.host(), self.entity_path)
    }

    /// A SAS token for [`Self::audience`], signed with the key's text as azure-eventhub signs it.
    pub fn token(&self) -> anyhow::Result<String> {
        let expiry = chrono::Utc::now().timestamp().max(0).unsigned_abs() + TOKEN_TTL_SECS;
        let key_as_text = base64::engine::general_purpose::STANDARD.encode(self.key.as_bytes());
        outpost_core::service_token(&self.audience(), &self.key_name, &key_as_text, expiry)
            .map_err(|e| anyhow!("cannot sign the CBS token: {e}"))
    }

    /// The source address of a partition of consumer group `$Default`.
    pub fn partition_address(&self, partition: u32) -> String {
        format!(
            "{}/ConsumerGroups/$Default/Partitions/{partition}",
            self.entity_path
        )
    }
}

/// A consumer of one partition: its connection, session and receiver.
pub struct PartitionConsumer {
    /// The partition read.
    pub partition: u32,
    /// The receiver, attached from the latest event.
    pub receiver: Receiver,
    session: SessionHandle<()>,
    connection: ConnectionHandle<()>,
}

impl PartitionConsumer {
    /// Connects to `addr`, authenticates on `$cbs` and attaches to `partition` from the latest event.
    pub async fn attach(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        hub: &EventHubConnection,
        partition: u32,
    ) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to the AMQP port {addr}"))?;
        tcp.set_nodelay(true)?;
        let name = match hub.host().parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(hub.host().to_owned())
                .map_err(|e| anyhow!("{} is not a server name: {e}", hub.host()))?,
        };
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .context("the AMQP port's TLS handshake failed")?;
        let mut connection = Connection::builder()
            .container_id(format!("outpost-bench-consumer-{partition}"))
            .hostname(hub.host())
            .sasl_profile(SaslProfile::Anonymous)
            .open_with_stream(stream)
            .await
            .context("the AMQP connection was not opened")?;
        let mut session = Session::begin(&mut connection)
            .await
            .context("the AMQP session did not begin")?;
        put_token(&mut session, &hub.audience(), &hub.token()?).await?;
        let source = Source::builder()
            .address(hub.partition_address(partition))
            .add_to_filter(
                Symbol::from(SELECTOR_FILTER),
                Some(serde_amqp::described::Described {
                    descriptor: serde_amqp::descriptor::Descriptor::Name(Symbol::from(
                        SELECTOR_FILTER,
                    )),
                    value: Value::String(LATEST.to_owned()),
                }),
            )
            .build();
        let receiver = Receiver::builder()
            .name(format!("outpost-bench-partition-{partition}"))
            .source(source)
            .target(format!("outpost-bench-consumer-{partition}"))
            .sender_settle_mode(SenderSettleMode::Settled)
            .credit_mode(CreditMode::Auto(PREFETCH))
            .attach(&mut session)
            .await
            .with_context(|| format!("cannot attach to partition {partition}"))?;
        Ok(Self {
            partition,
            receiver,
            session,
            connection,
        })
    }

    /// The next event's body; an error once the link or connection is closed.
    pub async fn next_body(&mut self) -> anyhow::Result<Vec<u8>> {
        let delivery = self
            .receiver
            .recv::<Data>()
            .await
            .with_context(|| format!("partition {}'s receiver failed", self.partition))?;
        // The delivery is pre-settled, so no disposition goes out; but fe2o3-amqp counts what it processed by
        // its accepts, and renews the credit (the prefetch) once half of it was processed.
        self.receiver
            .accept(&delivery)
            .await
            .with_context(|| format!("partition {}'s credit was not renewed", self.partition))?;
        Ok(delivery.into_message().body.0.into_vec())
    }

    /// Detaches the receiver and closes the session and connection.
    pub async fn close(mut self) {
        let _ = self.receiver.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// Puts `token` for `audience` on `$cbs` and checks that the hub answered 200.
async fn put_token(
    session: &mut SessionHandle<()>,
    audience: &str,
    token: &str,
) -> anyhow::Result<()> {
    let reply_to = "cbs-reply";
    let mut sender = Sender::attach(session, "cbs-sender", "$cbs")
        .await
        .context("cannot attach to $cbs")?;
    let mut replies = Receiver::builder()
        .name("cbs-receiver")
        .source("$cbs")
        .target(reply_to)
        .attach(session)
        .await
        .context("cannot attach $cbs's reply link")?;
    let application: OrderedMap<String, SimpleValue> = [
        ("operation", "put-token"),
        ("type", "servicebus.windows.net:sastoken"),
        ("name", audience),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), SimpleValue::String((*v).to_owned())))
    .collect();
    let request = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::Ulong(1)),
            reply_to: Some(reply_to.to_owned()),
            ..Properties::default()
        })
        .application_properties(ApplicationProperties(application))
        .body(Body::Value(AmqpValue(Value::String(token.to_owned()))))
        .build();
    sender
        .send(request)
        .await
        .context("the put-token request was not accepted")?;
    let answer = replies
        .recv::<Body<Value>>()
        .await
        .context("no answer from $cbs")?;
    replies.accept(&answer).await?;
    let status = answer
        .message()
        .application_properties
        .as_ref()
        .and_then(|ApplicationProperties(p)| p.get("status-code"))
        .cloned();
    let _ = sender.close().await;
    let _ = replies.close().await;
    match status {
        Some(SimpleValue::Int(200)) => Ok(()),
        other => bail!("$cbs refused the token: status {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINTED: &str = "Endpoint=sb://127.0.0.100:40001/;SharedAccessKeyName=iothubowner;\
                           SharedAccessKey=a2V5;EntityPath=outpost";

    #[test]
    fn a_printed_connection_string_parses_into_its_fields() {
        let parsed: EventHubConnection = PRINTED.parse().unwrap();
        assert_eq!(parsed.endpoint_host, "127.0.0.100:40001");
        assert_eq!(parsed.host(), "127.0.0.100");
        assert_eq!(parsed.key_name, "iothubowner");
        assert_eq!(parsed.key, "a2V5");
        assert_eq!(parsed.entity_path, "outpost");
        assert_eq!(parsed.audience(), "sb://127.0.0.100/outpost");
        assert_eq!(
            parsed.partition_address(3),
            "outpost/ConsumerGroups/$Default/Partitions/3"
        );
    }

    #[test]
    fn a_connection_string_without_an_entity_path_is_refused() {
        let error = "Endpoint=sb://h/;SharedAccessKeyName=p;SharedAccessKey=k"
            .parse::<EventHubConnection>()
            .unwrap_err();
        assert!(error.to_string().contains("EntityPath"), "{error}");
    }
}
