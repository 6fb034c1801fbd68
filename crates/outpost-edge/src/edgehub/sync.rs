//! The loops that keep the edge hub and the hub in step over the upstream link: connectivity, presence, pushes
//! from the hub, the `$upstream` queue, queued reported patches, and the catch-up after every reconnect.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use outpost_mqtt::{Feature, Outgoing};
use serde_json::{Map, Value};

use super::{c2d_delivery, link::LinkError, EdgeHub};

/// Messages sent upstream in one request.
const UPSTREAM_BATCH: usize = 500;
/// How often an idle loop looks again.
const IDLE: Duration = Duration::from_millis(500);

/// Starts every loop; they run until the process ends.
pub fn start(hub: &Arc<EdgeHub>) {
    tokio::spawn(connectivity(hub.clone()));
    tokio::spawn(presence(hub.clone()));
    tokio::spawn(pushes(hub.clone()));
    tokio::spawn(upstream(hub.clone()));
    tokio::spawn(reported(hub.clone()));
    tokio::spawn(inputs(hub.clone()));
}

/// Delivers routed messages to the module inputs whose modules are connected and listening.
async fn inputs(hub: Arc<EdgeHub>) {
    loop {
        hub.router.deliver_inputs(&hub);
        // Woken by a stored message or an acknowledgement (a kept permit, never lost); the timer covers clients
        // that connect or subscribe.
        let _ = tokio::time::timeout(Duration::from_millis(100), hub.router.wake.notified()).await;
    }
}

fn offline(hub: &EdgeHub, error: &LinkError) {
    if hub.online.swap(false, Ordering::AcqRel) {
        tracing::warn!(%error, "lost the hub: storing and forwarding until it is back");
    }
}

/// Waits until something changes or `IDLE` passes.
async fn idle(hub: &EdgeHub) {
    let _ = tokio::time::timeout(IDLE, hub.changed.notified()).await;
}

async fn connectivity(hub: Arc<EdgeHub>) {
    let mut back_off = Duration::from_secs(1);
    loop {
        if hub.online.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        match hub.link.scope().await {
            Ok(scope) => {
                hub.set_scope(&scope);
                hub.online.store(true, Ordering::Release);
                back_off = Duration::from_secs(1);
                tracing::info!("upstream link to the hub is up");
                catch_up(&hub).await;
            }
            Err(error) => {
                tracing::debug!(%error, "the hub is still unreachable");
                tokio::time::sleep(back_off).await;
                back_off = (back_off * 2).min(Duration::from_secs(5));
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
            Err(error) => return offline(hub, &error),
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

async fn presence(hub: Arc<EdgeHub>) {
    let mut last: Option<Vec<(String, Vec<&'static str>)>> = None;
    let mut was_online = false;
    loop {
        let online = hub.online.load(Ordering::Acquire);
        let current = hub.presence();
        if online && (!was_online || last.as_ref() != Some(&current)) {
            match hub.link.presence(&current).await {
                Ok(()) => {
                    super::router::report_clients(&hub, &current);
                    last = Some(current);
                }
                Err(error) => offline(&hub, &error),
            }
        }
        was_online = online && hub.online.load(Ordering::Acquire);
        idle(&hub).await;
    }
}

async fn pushes(hub: Arc<EdgeHub>) {
    loop {
        if !hub.online.load(Ordering::Acquire) {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        match hub.link.events(20).await {
            Ok(events) => {
                for event in events {
                    dispatch(&hub, &event).await;
                }
            }
            Err(error) => offline(&hub, &error),
        }
    }
}

async fn dispatch(hub: &EdgeHub, event: &Value) {
    let client = event
        .get("client")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match event.get("kind").and_then(Value::as_str) {
        Some("desired") if client.ends_with("/$edgeHub") => {
            super::router::refresh_configuration(hub).await;
        }
        Some("desired") => hub.desired_changed(client, event.get("body").unwrap_or(&Value::Null)),
        Some("c2d") => {
            let id = event.get("deliveryId").and_then(Value::as_u64).unwrap_or(0);
            let message = event
                .get("message")
                .cloned()
                .and_then(|m| serde_json::from_value(m).ok());
            if let (Some(outbox), Some(message)) = (hub.outbox(client), message) {
                outbox.send(Outgoing::CloudToDevice {
                    delivery_id: c2d_delivery(id),
                    message,
                });
            }
        }
        Some("method") => {
            let rid = event
                .get("rid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let method = event
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let payload = serde_json::to_vec(event.get("payload").unwrap_or(&Value::Null))
                .unwrap_or_default();
            let sent = hub
                .outbox(client)
                .filter(|o| o.subscribed(Feature::Methods))
                .is_some_and(|o| {
                    o.send(Outgoing::MethodRequest {
                        rid: rid.clone(),
                        method,
                        payload,
                    })
                });
            if !sent {
                let answer = serde_json::json!({"message": format!("{client} is not connected to the edge hub")});
                let _ = hub.link.method_response(&rid, 404, &answer).await;
            }
        }
        Some("close") => {
            if let Some(outbox) = hub.outbox(client) {
                outbox.send(Outgoing::Close);
            }
        }
        _ => tracing::debug!(?event, "unknown push from the hub"),
    }
}

async fn upstream(hub: Arc<EdgeHub>) {
    loop {
        if !hub.online.load(Ordering::Acquire) {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let batch = hub.router.upstream_batch(UPSTREAM_BATCH);
        if batch.is_empty() {
            idle(&hub).await;
            continue;
        }
        let messages: Vec<(String, outpost_core::Message)> = batch
            .iter()
            .map(|(_, client, m)| (client.clone(), m.clone()))
            .collect();
        match hub.link.messages(&messages).await {
            Ok(()) => {
                hub.router
                    .upstream_sent(batch.iter().map(|(seq, _, _)| *seq).collect());
            }
            Err(error @ LinkError::Refused { .. }) => {
                // The hub will never take these (too large, identity gone): count them dropped, do not block the queue.
                tracing::error!(%error, count = batch.len(), "the hub refused a batch; dropping it");
                hub.router
                    .upstream_dropped(batch.iter().map(|(seq, _, _)| *seq).collect());
            }
            Err(error) => {
                hub.router.upstream_retry();
                offline(&hub, &error);
            }
        }
    }
}

async fn reported(hub: Arc<EdgeHub>) {
    loop {
        if !hub.online.load(Ordering::Acquire) {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let queued = hub.store.queued_reported(100).unwrap_or_default();
        if queued.is_empty() {
            idle(&hub).await;
            continue;
        }
        for (seq, client, patch) in queued {
            match hub.link.reported(&client, &patch).await {
                Ok(_) => {
                    let _ = hub.store.reported_done(seq);
                }
                Err(error @ LinkError::Refused { .. }) => {
                    tracing::error!(%client, %error, "the hub refused a reported patch; dropping it");
                    let _ = hub.store.reported_done(seq);
                }
                Err(error) => {
                    offline(&hub, &error);
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
