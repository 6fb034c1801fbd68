//! Which connection holds each client id, and the parked sessions of clients that are away.
//!
//! A second connection with the same client id closes the first (IoT Hub: "400027
//! ConnectionForcefullyClosedOnNewConnection") and takes over its session, including the publishes the
//! client has not acknowledged. The map is behind a std `Mutex`: it is held for a few map operations and
//! never across an `.await`, so tokio's async mutex would only add cost.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use tokio::sync::oneshot;

use crate::session::StoredSession;

/// A message to a live connection: "close, and hand your session over on this channel".
pub type Kick = oneshot::Sender<Option<StoredSession>>;

/// How long a new connection waits for the old one to hand its session over.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Client ids → live connection and parked session.
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<String, Slot>>,
}

#[derive(Default)]
struct Slot {
    live: Option<Live>,
    /// The session of a client that went away, and when it went.
    parked: Option<(StoredSession, Instant)>,
}

struct Live {
    connection: u64,
    kick: oneshot::Sender<Kick>,
}

impl Registry {
    /// Makes `connection` the holder of `client_id`, closing any older connection, and returns the session
    /// that was parked or handed over (`None` if there was none). `kick` is where this connection will be
    /// told to close in turn.
    pub async fn claim(
        &self,
        client_id: &str,
        connection: u64,
        kick: oneshot::Sender<Kick>,
    ) -> Option<StoredSession> {
        let handover = {
            let mut clients = self
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = clients.entry(client_id.to_owned()).or_default();
            let previous = slot.live.replace(Live { connection, kick });
            let parked = slot.parked.take().map(|(session, _)| session);
            match previous {
                None => return parked,
                Some(previous) => {
                    // Sent under the lock, so the old connection's `release` (also under the lock) sees it.
                    let (reply, handover) = oneshot::channel();
                    if previous.kick.send(reply).is_err() {
                        // Its main loop is gone; it will find the reply in `release` and answer there.
                        tracing::debug!(
                            client_id,
                            connection = previous.connection,
                            "older connection already ending"
                        );
                    }
                    handover
                }
            }
        };
        tracing::info!(
            client_id,
            connection,
            "new connection closes the older one of the same client id"
        );
        if let Ok(Ok(stored)) = tokio::time::timeout(HANDOVER_TIMEOUT, handover).await {
            stored
        } else {
            tracing::warn!(
                client_id,
                "older connection did not hand its session over in time"
            );
            None
        }
    }

    /// Ends `connection`'s hold on `client_id`: `stored` goes to the connection that kicked it (if any),
    /// else it is parked for the next connection (or dropped, when `None`).
    pub fn release(
        &self,
        client_id: &str,
        connection: u64,
        stored: Option<StoredSession>,
        kicked: Option<Kick>,
        pending: &mut oneshot::Receiver<Kick>,
    ) {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A kick that arrived after the main loop stopped listening is still in the channel.
        let kicked = kicked.or_else(|| pending.try_recv().ok());
        if let Some(reply) = kicked {
            let _ = reply.send(stored);
            return;
        }
        let Some(slot) = clients.get_mut(client_id) else {
            return;
        };
        if slot
            .live
            .as_ref()
            .is_some_and(|live| live.connection == connection)
        {
            slot.live = None;
            slot.parked = stored.map(|session| (session, Instant::now()));
        }
        if slot.live.is_none() && slot.parked.is_none() {
            clients.remove(client_id);
        }
    }

    /// Drops the sessions parked longer than `max_age` before `now`; returns how many.
    pub fn expire(&self, now: Instant, max_age: Duration) -> usize {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = clients.len();
        clients.retain(|_, slot| {
            if slot
                .parked
                .as_ref()
                .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= max_age)
            {
                slot.parked = None;
            }
            slot.live.is_some() || slot.parked.is_some()
        });
        before - clients.len()
    }

    /// Number of client ids with a live connection or a parked session.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use outpost_core::{DeviceId, Identity};

    use super::*;

    fn stored(filter: &str) -> StoredSession {
        let identity = Identity::device(DeviceId::new("d").unwrap());
        StoredSession::from_filters(
            &identity,
            &[filter.to_owned()],
            crate::session::Limits::default(),
        )
    }

    #[tokio::test]
    async fn a_first_connection_finds_no_session() {
        let registry = Registry::default();
        let (kick, _rx) = oneshot::channel();
        assert!(registry.claim("d", 1, kick).await.is_none());
    }

    #[tokio::test]
    async fn a_released_persistent_session_is_parked_for_the_next_connection() {
        let registry = Registry::default();
        let (kick, mut rx) = oneshot::channel();
        registry.claim("d", 1, kick).await;
        registry.release(
            "d",
            1,
            Some(stored("$iothub/methods/POST/#")),
            None,
            &mut rx,
        );
        let (kick, _rx2) = oneshot::channel();
        let resumed = registry.claim("d", 2, kick).await.unwrap();
        assert_eq!(resumed.filters(), vec!["$iothub/methods/POST/#".to_owned()]);
    }

    #[tokio::test]
    async fn a_session_parked_longer_than_the_expiry_is_dropped_and_a_younger_one_kept() {
        let registry = Registry::default();
        for (client, connection) in [("old", 1), ("young", 2)] {
            let (kick, mut rx) = oneshot::channel();
            registry.claim(client, connection, kick).await;
            registry.release(
                client,
                connection,
                Some(stored("$iothub/methods/POST/#")),
                None,
                &mut rx,
            );
        }
        let week = Duration::from_hours(7 * 24);
        let later = Instant::now() + week;
        // Pretend "young" left only now, a week after "old".
        registry
            .clients
            .lock()
            .unwrap()
            .get_mut("young")
            .unwrap()
            .parked
            .as_mut()
            .unwrap()
            .1 = later;
        assert_eq!(registry.expire(later, week), 1);
        assert_eq!(registry.len(), 1);
        let (kick, _rx) = oneshot::channel();
        assert!(
            registry.claim("old", 3, kick).await.is_none(),
            "the expired session is gone"
        );
        let (kick, _rx) = oneshot::channel();
        assert!(registry.claim("young", 4, kick).await.is_some());
    }

    #[tokio::test]
    async fn a_released_clean_session_leaves_nothing_behind() {
        let registry = Registry::default();
        let (kick, mut rx) = oneshot::channel();
        registry.claim("d", 1, kick).await;
        registry.release("d", 1, None, None, &mut rx);
        assert_eq!(registry.len(), 0);
    }

    #[tokio::test]
    async fn a_second_connection_kicks_the_first_and_receives_its_session() {
        let registry = std::sync::Arc::new(Registry::default());
        let (kick1, mut rx1) = oneshot::channel();
        registry.claim("d", 1, kick1).await;
        let old = tokio::spawn({
            let registry = registry.clone();
            async move {
                let reply = (&mut rx1).await.unwrap();
                registry.release(
                    "d",
                    1,
                    Some(stored("$iothub/twin/res/#")),
                    Some(reply),
                    &mut rx1,
                );
            }
        });
        let (kick2, _rx2) = oneshot::channel();
        let handed = registry.claim("d", 2, kick2).await.unwrap();
        assert_eq!(handed.filters(), vec!["$iothub/twin/res/#".to_owned()]);
        old.await.unwrap();
    }

    #[tokio::test]
    async fn a_kick_that_races_the_release_is_answered_from_release() {
        let registry = std::sync::Arc::new(Registry::default());
        let (kick1, mut rx1) = oneshot::channel();
        registry.claim("d", 1, kick1).await;
        // The old connection's loop has ended but it has not released yet when the new one claims.
        let claim = tokio::spawn({
            let registry = registry.clone();
            async move {
                let (kick2, _rx2) = oneshot::channel();
                registry.claim("d", 2, kick2).await
            }
        });
        tokio::task::yield_now().await;
        while registry.clients.lock().unwrap()["d"]
            .live
            .as_ref()
            .unwrap()
            .connection
            != 2
        {
            tokio::task::yield_now().await;
        }
        registry.release(
            "d",
            1,
            Some(stored("$iothub/methods/POST/#")),
            None,
            &mut rx1,
        );
        assert!(claim.await.unwrap().is_some());
    }
}
