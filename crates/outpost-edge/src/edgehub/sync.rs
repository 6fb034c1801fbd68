//! The loops that keep the edge hub and the hub in step over the upstream link: connectivity, presence, pushes
//! from the hub, the `$upstream` queue, queued reported patches, and the catch-up after every reconnect.
//! Module inputs, method calls and the presence to declare come from the task that owns the edge hub's state
//! (`hub_loop`); these loops tell it when the link goes up or down.

use std::sync::Arc;
use std::time::Duration;

use outpost_core::Message;
use outpost_mqtt::Outgoing;
use serde_json::{Map, Value};

use outpost_core::edge_link::{LinkEvent, TelemetryBatch};

use super::link::{LinkError, UpstreamMessage, BATCH_ENVELOPE_BYTES};
use super::store::DeadLetter;
use super::{c2d_delivery, EdgeHub};
use batches::{Refusal, Taken, UpstreamBatches};

mod batches;

/// Messages sent upstream in one request at most.
const UPSTREAM_BATCH: usize = 2000;
/// Bytes of encoded JSON sent upstream in one request at most (a single larger message still goes alone,
/// but the edge hub refuses messages over 256 KB, about 350 KB as base64). Well below the smallest body
/// limit of the hub's `/edge/{device}/messages` (axum's default of 2 MiB), so a batch is never refused for
/// its size.
pub const UPSTREAM_BATCH_BYTES: usize = (1 << 20) - BATCH_ENVELOPE_BYTES;
/// How long a loop waits for its signal before it looks again anyway (every change it waits for signals it).
const IDLE: Duration = Duration::from_millis(500);
/// The first wait before reaching for an unreachable hub again; it doubles on each failure up to
/// [`RECONNECT_AT_MOST`]. A hub that is down refuses at once, so trying every 2 s costs it nothing, and a
/// backlog starts to drain within about a second of the hub's return (the wait is half the cap on average).
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two attempts to reach the hub.
const RECONNECT_AT_MOST: Duration = Duration::from_secs(2);

/// Starts every loop; they run until the process ends.
pub fn start(hub: &Arc<EdgeHub>) {
    let declaring = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(connectivity(hub.clone(), declaring.clone()));
    tokio::spawn(presence(hub.clone()));
    tokio::spawn(pushes(hub.clone(), declaring));
    tokio::spawn(upstream(hub.clone()));
    tokio::spawn(reported(hub.clone()));
}

async fn offline(hub: &EdgeHub, error: &LinkError) {
    if hub.went_offline().await {
        tracing::warn!(%error, "lost the hub: storing and forwarding until it is back");
    }
}

/// Declares who listens here, then reads what they missed: after every reconnect, and when the hub asks for it
/// (it restarted between two long polls, and forgot). Declare before the catch-up: the hub pushes the changes
/// made after the declaration (`$edgeHub`'s routes among them), the catch-up reads those made before it; in the
/// other order a deployment applied in between waited for the next reconnect. One declaration at a time
/// (`declaring`), so that two catch-ups never send a client the same desired patch twice.
async fn declare(hub: &EdgeHub, declaring: &tokio::sync::Mutex<()>) -> Result<(), LinkError> {
    let _one_at_a_time = declaring.lock().await;
    hub.link.presence(&hub.presence()).await?;
    catch_up(hub).await;
    Ok(())
}

async fn connectivity(hub: Arc<EdgeHub>, declaring: Arc<tokio::sync::Mutex<()>>) {
    let mut back_off = RECONNECT_FIRST;
    loop {
        hub.until_offline().await;
        match hub.link.scope().await {
            Ok(scope) => {
                hub.set_scope(&scope);
                hub.went_online().await;
                back_off = RECONNECT_FIRST;
                tracing::info!("upstream link to the hub is up");
                if let Err(error) = declare(&hub, &declaring).await {
                    offline(&hub, &error).await;
                    // A presence the hub refuses is refused again at once: ask again later.
                    tokio::time::sleep(RECONNECT_AT_MOST).await;
                }
            }
            Err(error) => {
                tracing::debug!(%error, "the hub is still unreachable");
                tokio::time::sleep(back_off).await;
                back_off = (back_off * 2).min(RECONNECT_AT_MOST);
            }
        }
    }
}

/// After a reconnect: the routes may have changed, and connected clients get the desired changes they missed.
async fn catch_up(hub: &EdgeHub) {
    super::router::refresh_configuration(hub).await;
    let clients: Vec<String> = hub
        .presence()
        .into_iter()
        .filter(|(id, features)| features.contains(&"desired") && !id.ends_with("/$edgeHub"))
        .map(|(id, _)| id)
        .collect();
    for client in clients {
        let cached = hub.store.twin(&client).ok().flatten();
        let fresh = match hub.link.twin(&client).await {
            Ok(fresh) => fresh,
            Err(error) => return offline(hub, &error).await,
        };
        let _ = hub.store.put_twin(&client, &fresh);
        let old_version = cached
            .as_ref()
            .and_then(|c| c.pointer("/desired/$version"))
            .and_then(Value::as_u64);
        let new_version = fresh.pointer("/desired/$version").and_then(Value::as_u64);
        if old_version.is_some() && new_version > old_version {
            let empty = Map::new();
            let old = cached
                .as_ref()
                .and_then(|c| c.get("desired"))
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            let new = fresh
                .get("desired")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            let mut patch = desired_diff(old, new);
            patch.insert("$version".into(), new_version.unwrap_or(0).into());
            if let Some(outbox) = hub.outbox(&client) {
                outbox.send(Outgoing::DesiredPatch {
                    body: Value::Object(patch),
                });
            }
        }
    }
}

/// The merge patch from one desired document to another (`$version` and `$metadata` left out).
pub fn desired_diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, value) in new {
        if key.starts_with('$') || old.get(key) == Some(value) {
            continue;
        }
        match (old.get(key), value) {
            (Some(Value::Object(before)), Value::Object(after)) => {
                patch.insert(key.clone(), Value::Object(desired_diff(before, after)));
            }
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    for key in old.keys() {
        if !key.starts_with('$') && !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    patch
}

/// Declares presence each time the edge hub's state asks (the link came up, or who listens for what changed
/// while it is up: the latest only), then reports the clients in `$edgeHub`'s reported properties.
async fn presence(hub: Arc<EdgeHub>) {
    let mut declarations = hub.hub_loop.presence();
    while declarations.changed().await.is_ok() {
        let Some(clients) = declarations.borrow_and_update().clone() else {
            continue;
        };
        let current = hub.with_own_identity(clients);
        match hub.link.presence(&current).await {
            Ok(()) => super::router::report_clients(&hub, &current),
            Err(error) => offline(&hub, &error).await,
        }
    }
}

async fn pushes(hub: Arc<EdgeHub>, declaring: Arc<tokio::sync::Mutex<()>>) {
    loop {
        hub.until_online().await;
        match hub.link.events(20).await {
            Ok(events) => {
                for event in events {
                    dispatch(&hub, event).await;
                }
            }
            // The link stays up (nothing else failed): declare, catch up and poll on. Once the hub has a
            // declaration it never asks again until it restarts, so the loops cannot take turns refusing.
            Err(LinkError::PresenceRequired(reason)) => {
                tracing::info!(%reason, "the hub forgot this edge's clients: declaring them again");
                if let Err(error) = declare(&hub, &declaring).await {
                    offline(&hub, &error).await;
                }
            }
            Err(error) => offline(&hub, &error).await,
        }
    }
}

async fn dispatch(hub: &Arc<EdgeHub>, event: LinkEvent) {
    match event {
        LinkEvent::Desired { client, .. } if client.ends_with("/$edgeHub") => {
            super::router::refresh_configuration(hub).await;
        }
        LinkEvent::Desired { client, body } => hub.desired_changed(&client, &body),
        LinkEvent::C2d {
            client,
            delivery_id,
            message,
        } => {
            if let Some(outbox) = hub.outbox(&client) {
                outbox.send(Outgoing::CloudToDevice {
                    delivery_id: c2d_delivery(delivery_id),
                    message,
                });
            }
        }
        LinkEvent::Method {
            client,
            rid,
            method,
            payload,
        } => {
            let payload = serde_json::to_vec(&payload).unwrap_or_default();
            super::methods::forward(hub, &client, rid, method, payload);
        }
        LinkEvent::Close { client } => {
            // The hub closes a client whose keys changed or that was deleted or disabled: read the scope
            // first, so that its reconnection is checked against what the hub holds now.
            match hub.link.scope().await {
                Ok(scope) => hub.set_scope(&scope),
                Err(error) => offline(hub, &error).await,
            }
            if let Some(outbox) = hub.outbox(&client) {
                outbox.send(Outgoing::Close);
            }
        }
        LinkEvent::Unknown => {
            tracing::warn!("skipped a push of a kind this edge does not know (from a newer hub?)");
        }
    }
}

/// Whether a 4xx means the hub will never take this request: a timeout (408) or throttling (429) is retried.
fn refused_for_good(error: &LinkError) -> bool {
    matches!(error, LinkError::Refused { status, .. } if *status != 408 && *status != 429)
}

/// A refusal of one item may be a refusal of the link itself (say the edge device was disabled or its key
/// changed): only when the hub still accepts the link is the item refused for itself.
async fn link_accepted(hub: &EdgeHub) -> bool {
    match hub.link.scope().await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "the hub refuses the link itself: keeping everything queued");
            offline(hub, &error).await;
            false
        }
    }
}

/// Tops the batches up from the `$upstream` queue.
fn take_upstream(hub: &EdgeHub, batches: &mut UpstreamBatches<(String, Message)>) {
    loop {
        let wants = batches.wants();
        if wants == 0 {
            return;
        }
        let taken = hub.router.upstream_batch(wants);
        let got = taken.len();
        for (seq, client, message) in taken {
            let bytes = UpstreamMessage::borrowed(&client, &message).encoded_len();
            batches.push(Taken {
                seq,
                bytes,
                item: (client, message),
            });
        }
        if got < wants {
            return;
        }
    }
}

/// Drains `$upstream` to the hub in requests cut by count and bytes; a refused request is split until the
/// message the hub refuses by itself is found, which alone is dead-lettered (`batches` explains the rules).
async fn upstream(hub: Arc<EdgeHub>) {
    let mut batches = UpstreamBatches::new(UPSTREAM_BATCH, UPSTREAM_BATCH_BYTES);
    loop {
        hub.until_online().await;
        take_upstream(&hub, &mut batches);
        if batches.is_empty() {
            hub.router.upstream_stored(IDLE).await;
            continue;
        }
        let request = TelemetryBatch {
            messages: batches
                .next_request()
                .iter()
                .map(|t| UpstreamMessage::borrowed(&t.item.0, &t.item.1))
                .collect(),
        };
        let count = request.messages.len();
        let body = serde_json::to_vec(&request);
        drop(request);
        let started = std::time::Instant::now();
        let result = match body {
            // The next request's messages are read from the log while the hub stores this one.
            Ok(body) => {
                let (result, ()) = tokio::join!(hub.link.encoded_messages(body, count), async {
                    take_upstream(&hub, &mut batches);
                });
                result
            }
            Err(error) => Err(LinkError::Encode(error)),
        };
        if result.is_ok() {
            hub.metrics.sent_upstream(
                batches.in_flight().iter().map(|t| {
                    (
                        t.item.0.as_str(),
                        t.item.1.system.get("outputName").map(String::as_str),
                    )
                }),
                started.elapsed(),
            );
        }
        match result {
            Ok(()) => hub.router.upstream_sent(batches.stored()),
            Err(error) if refused_for_good(&error) => match batches.refused() {
                Refusal::Split => {
                    tracing::warn!(%error, count, "the hub refused a batch: sending it again in halves");
                }
                Refusal::Alone(seq) => {
                    if !link_accepted(&hub).await {
                        batches.unreachable();
                        hub.router.upstream_retry();
                        continue;
                    }
                    let Some(Taken {
                        item: (client, message),
                        ..
                    }) = batches.dead_lettered()
                    else {
                        continue;
                    };
                    if let Err(store_error) = hub.store.count_dead_letter(DeadLetter::Message) {
                        tracing::warn!(%store_error, "cannot count a dead-lettered message");
                    }
                    hub.router.upstream_dead_letter(seq);
                    tracing::error!(%client, seq, bytes = message.body.len(), reason = %error,
                        "the hub refused a message by itself: dead-lettered (counted in `outpost edge stats`)");
                }
            },
            Err(error) => {
                batches.unreachable();
                hub.router.upstream_retry();
                offline(&hub, &error).await;
            }
        }
    }
}

async fn reported(hub: Arc<EdgeHub>) {
    loop {
        hub.until_online().await;
        let queued = hub.store.queued_reported(100).unwrap_or_default();
        if queued.is_empty() {
            let _ = tokio::time::timeout(IDLE, hub.reported_queued.notified()).await;
            continue;
        }
        for (seq, client, patch) in queued {
            match hub.link.reported(&client, &patch).await {
                Ok(_) => {
                    let _ = hub.store.reported_done(seq);
                }
                Err(error) if refused_for_good(&error) => {
                    if !link_accepted(&hub).await {
                        break;
                    }
                    if let Err(store_error) = hub.store.reported_dead_lettered(seq) {
                        tracing::warn!(%store_error, "cannot dead-letter a reported patch");
                        break;
                    }
                    tracing::error!(%client, reason = %error,
                        "the hub refused a reported patch: dead-lettered (counted in `outpost edge stats`)");
                }
                Err(error) => {
                    offline(&hub, &error).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_sizes_of_a_batch_add_up_to_its_json_body() {
        let messages: Vec<(String, Message)> = (0..3)
            .map(|i| {
                let message = Message {
                    body: vec![i; 1000 + usize::from(i)].into(),
                    properties: [("quote\"d".into(), Some("é\n".into()))].into(),
                    ..Message::default()
                };
                (format!("edge/module-{i}"), message)
            })
            .collect();
        let batch = TelemetryBatch {
            messages: messages
                .iter()
                .map(|(client, message)| UpstreamMessage::borrowed(client, message))
                .collect(),
        };
        let body = serde_json::to_vec(&batch).unwrap();
        let sum: usize = batch
            .messages
            .iter()
            .map(UpstreamMessage::encoded_len)
            .sum();
        // The first message has no comma before it.
        assert_eq!(sum - 1 + BATCH_ENVELOPE_BYTES, body.len());
    }

    #[test]
    fn a_timeout_or_throttling_is_retried_and_other_refusals_are_final() {
        let refusal = |status| LinkError::Refused {
            status,
            message: String::new(),
        };
        assert!(refused_for_good(&refusal(413)));
        assert!(refused_for_good(&refusal(401)));
        assert!(!refused_for_good(&refusal(429)));
        assert!(!refused_for_good(&refusal(408)));
        assert!(!refused_for_good(&LinkError::HubFailed {
            status: 503,
            message: String::new(),
        }));
    }

    #[test]
    fn the_diff_between_desired_documents_is_a_merge_patch() {
        let old = json!({"a": 1, "b": {"x": 1, "y": 2}, "gone": true, "$version": 3});
        let new = json!({"a": 1, "b": {"x": 5, "y": 2}, "added": "yes", "$version": 5});
        let diff = desired_diff(old.as_object().unwrap(), new.as_object().unwrap());
        assert_eq!(
            Value::Object(diff),
            json!({"b": {"x": 5}, "added": "yes", "gone": null})
        );
    }
}
