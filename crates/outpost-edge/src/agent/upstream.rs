//! The agent's link to the hub, as its `$edgeAgent` module identity: it receives deployments (desired
//! properties) and sends the reported properties, reconnecting with back-off whenever the hub goes away.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::Agent;

/// A twin session of the `$edgeAgent` identity.
#[async_trait]
pub trait TwinLink: Send + Sync {
    /// The whole desired document (with `$version`).
    async fn desired(&self) -> anyhow::Result<Value>;
    /// Resolves when the desired properties may have changed (a patch arrived, or the link was restored).
    async fn changed(&self) -> anyhow::Result<()>;
    /// Applies a reported patch.
    async fn report(&self, patch: &Value) -> anyhow::Result<()>;
}

/// The reported patch that takes the twin from `last` to `next`: the whole of `next`, plus `null` for every
/// module `last` had and `next` has not (a merge patch deletes keys only when told to).
pub fn reported_patch(last: Option<&Value>, next: &Value) -> Value {
    let mut patch = next.clone();
    let removed: Vec<String> = last
        .and_then(|l| l.get("modules"))
        .and_then(Value::as_object)
        .map(|modules| {
            modules
                .keys()
                .filter(|name| next.pointer(&format!("/modules/{name}")).is_none())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if let Some(modules) = patch.get_mut("modules") {
        if !modules.is_object() {
            *modules = Value::Object(Map::new());
        }
        if let Some(modules) = modules.as_object_mut() {
            for name in removed {
                modules.insert(name, Value::Null);
            }
        }
    }
    patch
}

/// Keeps a link to the hub until the process ends: deployments in, reports out.
pub async fn run<F, Fut>(agent: Arc<Agent>, connect: F)
where
    F: Fn() -> Fut + Send,
    Fut: Future<Output = anyhow::Result<Box<dyn TwinLink>>> + Send,
{
    let mut back_off = Duration::from_secs(1);
    let mut last_sent: Option<Value> = None;
    loop {
        let link = match connect().await {
            Ok(link) => link,
            Err(error) => {
                tracing::info!(%error, retry_in = ?back_off, "the hub is unreachable; running on the last-known-good deployment");
                tokio::time::sleep(back_off).await;
                back_off = (back_off * 2).min(Duration::from_mins(1));
                continue;
            }
        };
        tracing::info!("connected to the hub as $edgeAgent");
        back_off = Duration::from_secs(1);
        if let Err(error) = serve(&agent, link.as_ref(), &mut last_sent).await {
            tracing::warn!(%error, "lost the hub; reconnecting");
        }
    }
}

async fn serve(
    agent: &Agent,
    link: &dyn TwinLink,
    last_sent: &mut Option<Value>,
) -> anyhow::Result<()> {
    agent.handle_desired(&link.desired().await?).await;
    // After a reconnect, send the whole report again: the hub may have missed the last one.
    *last_sent = None;
    let mut reported = agent.reported.subscribe();
    reported.mark_changed();
    loop {
        tokio::select! {
            changed = link.changed() => {
                changed?;
                agent.handle_desired(&link.desired().await?).await;
            }
            result = reported.changed() => {
                result?;
                let next = reported.borrow_and_update().clone();
                if next.is_null() {
                    continue;
                }
                link.report(&reported_patch(last_sent.as_ref(), &next)).await?;
                *last_sent = Some(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_module_that_disappeared_is_reported_as_null() {
        let last = json!({"modules": {"a": {"x": 1}, "b": {"x": 1}}, "lastDesiredVersion": 1});
        let next = json!({"modules": {"a": {"x": 2}}, "lastDesiredVersion": 2});
        let patch = reported_patch(Some(&last), &next);
        assert_eq!(
            patch,
            json!({"modules": {"a": {"x": 2}, "b": null}, "lastDesiredVersion": 2})
        );
    }

    #[test]
    fn the_first_report_is_the_whole_document() {
        let next = json!({"modules": {"a": {}}});
        assert_eq!(reported_patch(None, &next), next);
    }
}
