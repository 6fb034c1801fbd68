//! The agent's link to the hub, as its `$edgeAgent` module identity: it receives deployments (desired
//! properties) and sends the reported properties, reconnecting with back-off whenever the hub goes away.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::reported::reported_diff;
use super::Agent;

/// A twin session of the `$edgeAgent` identity.
#[async_trait]
pub trait TwinLink: Send + Sync {
    /// The whole desired document (with `$version`).
    async fn desired(&self) -> anyhow::Result<Value>;
    /// Resolves when the desired properties may have changed (a patch arrived, or the link was restored).
    async fn changed(&self) -> anyhow::Result<()>;
    /// The twin's reported properties as the hub holds them now.
    async fn reported(&self) -> anyhow::Result<Value>;
    /// Applies a reported patch.
    async fn report(&self, patch: &Value) -> anyhow::Result<()>;
}

/// Keeps a link to the hub until the process ends: deployments in, reports out.
pub async fn run<F, Fut>(agent: Arc<Agent>, connect: F)
where
    F: Fn() -> Fut + Send,
    Fut: Future<Output = anyhow::Result<Box<dyn TwinLink>>> + Send,
{
    let mut back_off = Duration::from_secs(1);
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
        if let Err(error) = serve(&agent, link.as_ref()).await {
            tracing::warn!(%error, "lost the hub; reconnecting");
        }
    }
}

/// Serves one connection. Reports are diffed against what the hub holds: after each (re)connect against the
/// twin's reported properties as read then (the hub may have missed reports, and modules removed meanwhile
/// must be deleted with `null`), then against the last report the hub acknowledged.
async fn serve(agent: &Agent, link: &dyn TwinLink) -> anyhow::Result<()> {
    agent.handle_desired(&link.desired().await?).await;
    let mut acknowledged = link.reported().await?;
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
                let patch = reported_diff(&acknowledged, &next);
                if patch.as_object().is_some_and(serde_json::Map::is_empty) {
                    continue;
                }
                link.report(&patch).await?;
                acknowledged = next;
            }
        }
    }
}
