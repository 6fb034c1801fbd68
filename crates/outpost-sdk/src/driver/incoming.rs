//! What the server sends a client: acknowledgements matched to the operations waiting for them, twin
//! answers, desired patches through the tracker, and pushes handed to the application's streams.

use outpost_mqtt::packet::{Packet, PubAck, Publish, QoS, SubAck, SubscribeReturnCode};
use serde_json::Value;

use super::{Driver, Operation, Waiter};
use crate::error::ClientError;
use crate::link::Link;
use crate::methods::MethodCall;
use crate::requests::TwinAnswer;
use crate::topics::{self, Feature, Incoming};
use crate::twin::{Step, Twin};

impl Driver {
    pub(super) fn on_packet(&mut self, packet: Packet, link: &Link) {
        match packet {
            Packet::PubAck(PubAck { pkid }) => {
                let Some(id) = self.in_flight.remove(&pkid) else {
                    return;
                };
                let Some(operation) = self.operations.get_mut(&id) else {
                    return;
                };
                // A twin request stays until its response; only its packet id is released.
                operation.pkid = None;
                if matches!(operation.waiter, Waiter::Ack(_)) {
                    if let Some(Operation {
                        waiter: Waiter::Ack(reply),
                        ..
                    }) = self.forget(id)
                    {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            Packet::SubAck(suback) => self.on_suback(&suback, link),
            Packet::Publish(publish) => {
                let ack = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
                self.on_publish(publish, link);
                if let Some(pkid) = ack {
                    link.send(Packet::PubAck(PubAck { pkid }));
                }
            }
            Packet::PingResp | Packet::UnsubAck(_) => {}
            other => tracing::debug!(
                packet = other.name(),
                "unexpected packet from the server ignored"
            ),
        }
    }

    fn on_suback(&mut self, suback: &SubAck, link: &Link) {
        let Some(features) = self.subscribes.remove(&suback.pkid) else {
            return;
        };
        let mut resync = false;
        for (feature, code) in features.iter().zip(&suback.return_codes) {
            let Some(feature) = *feature else {
                continue;
            };
            let result = match code {
                SubscribeReturnCode::Success(_) => {
                    resync |= feature == Feature::DesiredPatches;
                    Ok(())
                }
                SubscribeReturnCode::Failure => {
                    self.features.remove(&feature);
                    Err(ClientError::Rejected {
                        status: 0x80,
                        message: format!(
                            "the server refused the subscription to {}",
                            feature.name()
                        ),
                    })
                }
            };
            let (answered, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.subscribers)
                .into_iter()
                .partition(|(f, _)| *f == feature);
            self.subscribers = waiting;
            for (_, reply) in answered {
                let _ = reply.send(result.clone());
            }
        }
        // Read the twin now that patches are subscribed: the first read gives the application the whole
        // document; after a reconnection, what changed while away.
        if resync && self.desired.start_resync() {
            self.add_twin_request(None, Waiter::Resync);
            self.transmit(link);
        }
    }

    fn on_publish(&mut self, publish: Publish, link: &Link) {
        let incoming = match topics::parse_incoming(&publish.topic, &self.config.identity) {
            Ok(incoming) => incoming,
            Err(error) => return tracing::warn!(%error, "ignored a publish from the server"),
        };
        match incoming {
            Incoming::TwinResponse {
                status,
                rid,
                version,
            } => {
                let Some(id) = self.rids.get(&rid).copied() else {
                    return tracing::debug!(rid, "twin response for no pending request");
                };
                let Some(operation) = self.forget(id) else {
                    return;
                };
                let answer = TwinAnswer {
                    status,
                    version,
                    body: publish.payload,
                };
                match operation.waiter {
                    Waiter::Twin(reply) => drop(reply.send(Ok(answer))),
                    Waiter::Resync => self.on_resync(&answer, link),
                    Waiter::Ack(_) => {}
                }
            }
            Incoming::DesiredPatch { version } => {
                if !self.features.contains(&Feature::DesiredPatches) {
                    return;
                }
                match serde_json::from_slice::<Value>(&publish.payload) {
                    Ok(body) => {
                        let step = self.desired.on_patch(&body, version);
                        self.follow(step, link);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a desired patch that is not JSON was ignored");
                    }
                }
            }
            Incoming::MethodRequest { name, rid } => {
                let payload = if publish.payload.iter().all(u8::is_ascii_whitespace) {
                    Value::Null
                } else {
                    serde_json::from_slice(&publish.payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&publish.payload).into_owned())
                    })
                };
                let call = MethodCall::new(name, rid, payload, self.responder.clone());
                let _ = self.sinks.methods.send(call);
            }
            Incoming::CloudToDevice(mut message) => {
                message.body = publish.payload;
                let _ = self.sinks.cloud_to_device.send(message.into());
            }
            Incoming::Input(mut message) => {
                message.body = publish.payload;
                let _ = self.sinks.inputs.send(message.into());
            }
        }
    }

    fn on_resync(&mut self, answer: &TwinAnswer, link: &Link) {
        let twin = match answer.status {
            200 => serde_json::from_slice::<Value>(&answer.body)
                .map_err(|e| ClientError::Protocol(format!("the twin is not JSON: {e}")))
                .and_then(|body| Twin::from_json(&body)),
            status => Err(ClientError::from_status(
                status,
                crate::error::error_message(&answer.body),
            )),
        };
        match twin {
            Ok(twin) => {
                let step = self.desired.on_twin(&twin);
                self.follow(step, link);
            }
            Err(error) => {
                // Tried again on the next connection, or when a pushed patch skips a version.
                tracing::warn!(%error, "reading the twin for desired properties failed");
                self.desired.resync_failed();
            }
        }
    }

    /// Delivers what the tracker released and starts the twin read it asked for.
    fn follow(&mut self, step: Step, link: &Link) {
        for patch in step.deliver {
            let _ = self.sinks.desired.send(patch);
        }
        if step.resync {
            self.add_twin_request(None, Waiter::Resync);
            self.transmit(link);
        }
    }
}
