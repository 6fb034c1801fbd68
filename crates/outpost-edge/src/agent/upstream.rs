//! The agent's link to the hub, as its `$edgeAgent` module identity: it receives deployments (desired
//! properties) and sends the reported properties, reconnecting with back-off whenever the hub goes away.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::reported::reported_diff;
use super::Agent;
use crate::hub_client::HubClientError;

/// Why the `$edgeAgent`'s link to the hub could not be made or was lost: every cause means "reconnect later".
#[derive(Debug, thiserror::Error)]
pub enum TwinLinkError {
    /// Its module identity (or `$edgeHub`'s) could not be read or created on the hub.
    #[error("cannot get the module identity: {0}")]
    Identity(#[from] HubClientError),
    /// The hub's CA file could not be read.
    #[error("cannot read hub_ca {path}: {source}")]
    HubCa {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The module client failed (connect, twin read, reported patch).
    #[error(transparent)]
    Client(#[from] outpost_sdk::ClientError),
    /// The desired-properties stream ended (the client is gone).
    #[error("the desired-properties stream ended")]
    DesiredStreamEnded,
    /// The agent's own report stopped (the agent is shutting down).
    #[error("the agent's report is gone")]
    ReportGone(#[from] tokio::sync::watch::error::RecvError),
}

/// A twin session of the `$edgeAgent` identity.
#[async_trait]
pub trait TwinLink: Send + Sync {
    /// The whole desired document (with `$version`).
    async fn desired(&self) -> Result<Value, TwinLinkError>;
    /// Resolves when the desired properties may have changed (a patch arrived, or the link was restored).
    async fn changed(&self) -> Result<(), TwinLinkError>;
    /// The twin's reported properties as the hub holds them now.
    async fn reported(&self) -> Result<Value, TwinLinkError>;
    /// Applies a reported patch.
    async fn report(&self, patch: &Value) -> Result<(), TwinLinkError>;
}

/// Keeps a link to the hub until the process ends: deployments in, reports out.
pub async fn run<F, Fut>(agent: Arc<Agent>, connect: F)
where
    F: Fn() -> Fut + Send,
    Fut: Future<Output = Result<Box<dyn TwinLink>, TwinLinkError>> + Send,
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
async fn serve(agent: &Agent, link: &dyn TwinLink) -> Result<(), TwinLinkError> {
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
