//! What only a device client does: connect from a device connection string, receive cloud-to-device
//! messages.

use super::{kind, Client};
use crate::error::ClientError;
use crate::message::Message;
use crate::options::ClientOptions;
use crate::stream::Incoming;
use crate::topics::Feature;

impl Client<kind::Device> {
    /// Connects a device with its connection string (`HostName=..;DeviceId=..;SharedAccessKey=..`, optionally
    /// `GatewayHostName=..` to connect through an edge device).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{ClientOptions, DeviceClient};
    /// let options = ClientOptions {
    ///     ca_pem: Some(std::fs::read_to_string("outpost-data/ca.pem").unwrap()),
    ///     ..ClientOptions::default()
    /// };
    /// let client = DeviceClient::from_connection_string(
    ///     "HostName=hub.local;DeviceId=sensor-1;SharedAccessKey=c2VjcmV0LWtleS1vZi1zZW5zb3ItMQ==",
    ///     options,
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_connection_string(
        connection_string: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::from_parsed(connection_string, options).await
    }

    /// The stream of cloud-to-device messages. It can be taken once. A message is completed (removed from the
    /// hub's queue) when it reaches this stream.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::DeviceClient) -> Result<(), outpost_sdk::ClientError> {
    /// let mut messages = client.cloud_to_device_messages().await?;
    /// while let Some(message) = messages.next().await {
    ///     println!("{:?} {:?}", message.body_str(), message.properties());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cloud_to_device_messages(&self) -> Result<Incoming<Message>, ClientError> {
        self.take(Feature::CloudToDevice, |s| &mut s.cloud_to_device)
            .await
    }
}
