//! Several hub processes on one PostgreSQL database acting as one hub: each holds its own device connections,
//! and what is made through one replica for a device held by another reaches it through the database.
//!
//! Each replica has a random id. `replica_connections` says which replica holds each live connection (written
//! when a device connects and when it goes). Replicas tell each other things with [`Notice`]s, sent with
//! PostgreSQL's `NOTIFY` on one channel: the notice itself is the payload, or, when larger than a payload may
//! be, the id of a `replica_mailbox` row holding it (rows are pruned after a minute). What a notice carries is
//! a wake-up, never the only copy of anything acknowledged: desired properties, C2D messages and events are in
//! their tables before a notice is sent, and a device that reconnects anywhere reads them from there.
//!
//! Threads: one sends (a queue, so callers never wait on the database; event wake-ups are coalesced), one
//! listens (`LISTEN` on a connection of its own, reconnecting when it is lost). Notices received go to the task
//! [`serve`] runs with the hub, which acts on them: pushes to its own connections, closes a connection the
//! device replaced through another replica, wakes long polls, invokes forwarded direct methods and returns
//! their answers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::{Client, Config, NoTls};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::store::StorageError;

/// The `LISTEN`/`NOTIFY` channel.
const CHANNEL: &str = "outpost_replicas";
/// Notices larger than this go through `replica_mailbox` (PostgreSQL's payload limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7_000;
/// How long a listener waits between checks that the hub still runs.
const LISTEN_TICK: Duration = Duration::from_millis(250);
/// Notices received and not yet acted on; past this the listener waits for the hub.
const RECEIVED_QUEUE: usize = 10_000;
/// How often a replica says it is alive (`replicas.last_seen`).
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// A replica not seen for this many seconds is dead: its `replica_connections` rows no longer count, and the
/// next heartbeat of any replica deletes them.
pub const DEAD_AFTER_SECS: u32 = 15;
/// Idle connections kept for holder lookups.
const LOOKUP_POOL: usize = 4;

/// The notices of other replicas with their senders' ids, as [`serve`] takes them.
pub type Received = mpsc::Receiver<(String, Notice)>;

/// What one replica tells the others. A wire contract between replicas of the same version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "camelCase", deny_unknown_fields)]
pub enum Notice {
    /// A desired patch for a client (`d` or `d/m`) not connected to the sender.
    #[serde(rename_all = "camelCase")]
    Desired {
        /// The client id.
        client_id: String,
        /// The patch, as the device gets it.
        body: Value,
    },
    /// Cloud-to-device messages wait for a device not connected to the sender.
    #[serde(rename_all = "camelCase")]
    C2dQueued {
        /// The device.
        device: String,
    },
    /// A client connected to the sender: others close their connection of it.
    #[serde(rename_all = "camelCase")]
    Connected {
        /// The client id.
        client_id: String,
    },
    /// An identity's connections must close (it was deleted, disabled or its keys changed): `client_id`, and
    /// with `with_modules` (a device) its modules' too.
    #[serde(rename_all = "camelCase")]
    Close {
        /// The client id (`d` or `d/m`).
        client_id: String,
        /// Whether the device's modules close too.
        with_modules: bool,
    },
    /// Events were appended up to `newest`: long polls and Event Hub readers wake.
    #[serde(rename_all = "camelCase")]
    Events {
        /// The sequence number of the newest event.
        newest: i64,
        /// The partitions appended to, each with its newest partition sequence number.
        #[serde(default)]
        partitions: Vec<(u32, i64)>,
    },
    /// A direct method for a client held by `holder`.
    #[serde(rename_all = "camelCase")]
    MethodCall {
        /// The replica that holds the client.
        holder: String,
        /// Names the call in its answer.
        call_id: u64,
        /// The client id.
        client_id: String,
        /// The method.
        method: String,
        /// Its payload.
        payload: Value,
        /// How long the device may take to answer, in milliseconds.
        response_timeout_ms: u64,
    },
    /// The answer to a forwarded method call.
    #[serde(rename_all = "camelCase")]
    MethodAnswer {
        /// The replica that forwarded the call.
        to: String,
        /// The call.
        call_id: u64,
        /// What came of it.
        outcome: MethodOutcome,
    },
}

/// What came of a forwarded direct method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase", deny_unknown_fields)]
pub enum MethodOutcome {
    /// The device answered.
    Answered {
        /// Its status.
        status: i32,
        /// Its payload.
        payload: Value,
    },
    /// The holder no longer has the device, or it does not listen for methods.
    NotOnline,
    /// The device did not answer in time.
    TimedOut,
    /// Too many calls wait at the holder.
    Throttled,
}

/// A notice with its sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    notice: Notice,
}

/// What the sending thread does.
enum Outbound {
    Notice(Notice),
    Connected { client_id: String, connection: u64 },
    Disconnected { client_id: String, connection: u64 },
}

/// This replica's part in the hub's replicas: present only on PostgreSQL.
pub struct Replicas {
    id: String,
    url: String,
    outbound: Mutex<Option<std_mpsc::Sender<Outbound>>>,
    /// Forwarded method calls waiting for their answers.
    calls: Mutex<HashMap<u64, oneshot::Sender<MethodOutcome>>>,
    next_call: AtomicU64,
    /// Connections for holder lookups, reused (a lookup does not pay for a new connection).
    lookups: Arc<Mutex<Vec<Client>>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Replicas {
    /// Joins the replicas of the database at `url`: starts the sending and listening threads; returns the
    /// notices received, for [`serve`]. Fails when the database cannot be reached.
    pub fn start(url: &str) -> Result<(Arc<Self>, Received), StorageError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let (outbound, queue) = std_mpsc::channel();
        let (received, notices) = mpsc::channel(RECEIVED_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        // Connected here, so that a bad database fails the start; then moved to their threads.
        let (sender, listener) = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<_, StorageError> {
                    let mut sender = connect(url)?;
                    // Alive from the start: its connections count as soon as they are recorded.
                    heartbeat(&id, &mut sender, &HashMap::new())?;
                    let mut listener = connect(url)?;
                    listener.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                    Ok((sender, listener))
                })
                .join()
                .unwrap_or_else(|_| Err(StorageError::Engine("connecting panicked".into())))
        })?;
        let replicas = Arc::new(Self {
            id: id.clone(),
            url: url.to_owned(),
            outbound: Mutex::new(Some(outbound)),
            calls: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            lookups: Arc::new(Mutex::new(Vec::new())),
            stop: stop.clone(),
            threads: Mutex::new(Vec::new()),
        });
        let sending = {
            let (id, url) = (id.clone(), url.to_owned());
            std::thread::Builder::new()
                .name("replica-send".into())
                .spawn(move || send(&id, &url, sender, &queue))
                .map_err(StorageError::WriterStart)?
        };
        let listening = {
            let url = url.to_owned();
            std::thread::Builder::new()
                .name("replica-listen".into())
                .spawn(move || listen(&id, &url, listener, &received, &stop))
                .map_err(StorageError::WriterStart)?
        };
        replicas
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend([sending, listening]);
        tracing::info!(replica = %replicas.id, "joined the hub's replicas");
        Ok((replicas, notices))
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn queue(&self, item: Outbound) {
        if let Some(outbound) = self
            .outbound
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            let _ = outbound.send(item);
        }
    }

    /// Tells the other replicas `notice`.
    pub fn tell(&self, notice: Notice) {
        self.queue(Outbound::Notice(notice));
    }

    /// A client connected here: recorded as held by this replica, and the others close theirs.
    pub fn connected(&self, client_id: &str, connection: u64) {
        self.queue(Outbound::Connected {
            client_id: client_id.to_owned(),
            connection,
        });
    }

    /// A client's connection here went.
    pub fn disconnected(&self, client_id: &str, connection: u64) {
        self.queue(Outbound::Disconnected {
            client_id: client_id.to_owned(),
            connection,
        });
    }

    /// The live replica holding a connection of `client_id`, if any (this one included): rows of a replica not
    /// seen for [`DEAD_AFTER_SECS`] do not count.
    pub async fn holder(&self, client_id: &str) -> Result<Option<String>, StorageError> {
        let client_id = client_id.to_owned();
        self.lookup(move |client| {
            let sql = format!(
                "SELECT c.replica FROM replica_connections c JOIN replicas r ON r.id = c.replica
                 WHERE c.client_id = $1 AND r.last_seen > now() - interval '{DEAD_AFTER_SECS} seconds'"
            );
            Ok(client
                .query_opt(&sql, &[&client_id])?
                .map(|row| row.get(0)))
        })
        .await
    }

    /// Which of `client_ids` a live replica (this one included) holds a connection of.
    pub async fn held_among(
        &self,
        client_ids: Vec<String>,
    ) -> Result<HashSet<String>, StorageError> {
        self.lookup(move |client| {
            let sql = format!(
                "SELECT c.client_id FROM replica_connections c JOIN replicas r ON r.id = c.replica
                 WHERE c.client_id = ANY($1) AND r.last_seen > now() - interval '{DEAD_AFTER_SECS} seconds'"
            );
            Ok(client
                .query(&sql, &[&client_ids])?
                .into_iter()
                .map(|row| row.get(0))
                .collect())
        })
        .await
    }

    /// Runs `query` on a pooled connection of the lookups' own (a new one when none is idle, or when the
    /// database closed the idle one), on the blocking pool.
    async fn lookup<T: Send + 'static>(
        &self,
        query: impl Fn(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (url, pool) = (self.url.clone(), self.lookups.clone());
        tokio::task::spawn_blocking(move || {
            let pooled = pool
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let fresh = || -> Result<_, postgres::Error> {
                let mut client = connect(&url)?;
                let found = query(&mut client)?;
                Ok((client, found))
            };
            let (client, found) = if let Some(mut client) = pooled {
                match query(&mut client) {
                    Ok(found) => (client, found),
                    Err(error) if client.is_closed() => {
                        tracing::debug!(%error, "replica lookup: reconnecting");
                        fresh()?
                    }
                    Err(error) => return Err(error.into()),
                }
            } else {
                fresh()?
            };
            let mut idle = pool
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < LOOKUP_POOL && !client.is_closed() {
                idle.push(client);
            } else {
                drop(idle);
                client.close().ok();
            }
            Ok(found)
        })
        .await
        .map_err(|e| StorageError::Engine(e.to_string()))?
    }

    /// Forwards a method call to `holder` and waits for its outcome at most `wait`.
    pub async fn call(
        &self,
        holder: &str,
        client_id: &str,
        method: String,
        payload: Value,
        response_timeout: Duration,
    ) -> Option<MethodOutcome> {
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(call_id, answer);
        self.tell(Notice::MethodCall {
            holder: holder.to_owned(),
            call_id,
            client_id: client_id.to_owned(),
            method,
            payload,
            response_timeout_ms: u64::try_from(response_timeout.as_millis()).unwrap_or(u64::MAX),
        });
        let outcome =
            tokio::time::timeout(response_timeout + Duration::from_secs(2), answered).await;
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&call_id);
        outcome.ok().and_then(Result::ok)
    }

    /// An answer to one of this replica's forwarded calls arrived.
    fn answered(&self, call_id: u64, outcome: MethodOutcome) {
        if let Some(answer) = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&call_id)
        {
            let _ = answer.send(outcome);
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(
            self.outbound
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for thread in threads {
            let _ = thread.join();
        }
        // A client blocks on a runtime of its own when dropped, which a tokio worker may not do.
        let idle = std::mem::take(
            &mut *self
                .lookups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// Connects to the database at `url`, within [`CONNECT_TIMEOUT`](crate::storage::postgres::CONNECT_TIMEOUT)
/// unless the URL says otherwise.
fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut config: Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(crate::storage::postgres::CONNECT_TIMEOUT);
    }
    config.connect(NoTls)
}

/// Says this replica is alive, and deletes the replicas not seen for [`DEAD_AFTER_SECS`] with their
/// connections (one statement: a replica's row goes only with its connections). A replica found dead by the
/// others while it lived (its database away for long) records its connections (`held`) again.
fn heartbeat(
    id: &str,
    client: &mut Client,
    held: &HashMap<String, i64>,
) -> Result<(), postgres::Error> {
    let row = client.query_one(
        "INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET last_seen = now()
         RETURNING xmax = 0",
        &[&id],
    )?;
    let new: bool = row.get(0);
    if new && !held.is_empty() {
        tracing::warn!(
            connections = held.len(),
            "this replica was taken for dead: recording its connections again"
        );
        for (client_id, connection) in held {
            client.execute(
                "INSERT INTO replica_connections (client_id, replica, connection) VALUES ($1, $2, $3)
                 ON CONFLICT (client_id) DO NOTHING",
                &[client_id, &id, connection],
            )?;
        }
    }
    let removed = client.execute(
        &format!(
            "WITH dead AS (
                DELETE FROM replicas WHERE last_seen < now() - interval '{DEAD_AFTER_SECS} seconds' RETURNING id)
             DELETE FROM replica_connections WHERE replica IN (SELECT id FROM dead)"
        ),
        &[],
    )?;
    if removed > 0 {
        tracing::info!(
            connections = removed,
            "forgot the connections of replicas that stopped"
        );
    }
    Ok(())
}

/// Keeps `held` (this replica's connections, as recorded) up to date with what is about to be sent.
fn track(held: &mut HashMap<String, i64>, item: &Outbound) {
    match item {
        Outbound::Connected {
            client_id,
            connection,
        } => {
            held.insert(
                client_id.clone(),
                i64::try_from(*connection).unwrap_or(i64::MAX),
            );
        }
        Outbound::Disconnected {
            client_id,
            connection,
        } => {
            let connection = i64::try_from(*connection).unwrap_or(i64::MAX);
            if held.get(client_id) == Some(&connection) {
                held.remove(client_id);
            }
        }
        Outbound::Notice(_) => {}
    }
}

/// Merges the event wake-ups of a batch into one (the newest event, each partition's newest), last.
fn coalesce_events(batch: &mut Vec<Outbound>) {
    let mut newest = None;
    let mut heads: HashMap<u32, i64> = HashMap::new();
    batch.retain(|item| match item {
        Outbound::Notice(Notice::Events {
            newest: n,
            partitions,
        }) => {
            newest = newest.max(Some(*n));
            for &(partition, seq) in partitions {
                let head = heads.entry(partition).or_insert(seq);
                *head = (*head).max(seq);
            }
            false
        }
        _ => true,
    });
    if let Some(newest) = newest {
        let mut partitions: Vec<_> = heads.into_iter().collect();
        partitions.sort_unstable();
        batch.push(Outbound::Notice(Notice::Events { newest, partitions }));
    }
}

/// The sending thread: sends what is queued, in order, as soon as it is queued, coalescing event wake-ups;
/// says every [`HEARTBEAT`] that this replica lives; reconnects when the database comes back (what was queued
/// while it was away is dropped: notices are wake-ups, and the connections are recorded again by the
/// heartbeat if the others took this replica for dead). Leaving, it removes this replica's rows.
fn send(id: &str, url: &str, client: Client, queue: &std_mpsc::Receiver<Outbound>) {
    let mut client = Some(client);
    let mut held = HashMap::new();
    let mut next_beat = Instant::now() + HEARTBEAT;
    loop {
        let mut batch =
            match queue.recv_timeout(next_beat.saturating_duration_since(Instant::now())) {
                Ok(first) => vec![first],
                Err(std_mpsc::RecvTimeoutError::Timeout) => Vec::new(),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
        batch.extend(queue.try_iter());
        coalesce_events(&mut batch);
        for item in &batch {
            track(&mut held, item);
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(url)
                .inspect_err(|error| tracing::warn!(%error, "replica notices: no database"))
                .ok();
        }
        let Some(connected) = client.as_mut() else {
            next_beat = next_beat.max(Instant::now() + HEARTBEAT);
            continue;
        };
        for item in batch {
            if let Err(error) = send_one(id, connected, item) {
                tracing::warn!(%error, "could not tell the other replicas");
            }
        }
        if Instant::now() >= next_beat {
            if let Err(error) = heartbeat(id, connected, &held) {
                tracing::warn!(%error, "replica heartbeat failed");
            }
            next_beat = Instant::now() + HEARTBEAT;
        }
    }
    if let Some(client) = client.as_mut().filter(|c| !c.is_closed()) {
        let left = client
            .execute("DELETE FROM replica_connections WHERE replica = $1", &[&id])
            .and_then(|_| client.execute("DELETE FROM replicas WHERE id = $1", &[&id]));
        if let Err(error) = left {
            tracing::debug!(%error, "could not remove this replica's rows");
        }
    }
}

fn send_one(id: &str, client: &mut Client, item: Outbound) -> Result<(), postgres::Error> {
    match item {
        Outbound::Notice(notice) => {
            let text = serde_json::to_string(&Envelope {
                from: id.to_owned(),
                notice,
            })
            .unwrap_or_default();
            let payload = if text.len() <= MAX_PAYLOAD {
                format!("m{text}")
            } else {
                client.execute(
                    "DELETE FROM replica_mailbox WHERE created < now() - interval '1 minute'",
                    &[],
                )?;
                let row = client.query_one(
                    "INSERT INTO replica_mailbox (notice) VALUES ($1) RETURNING id",
                    &[&text],
                )?;
                format!("r{}", row.get::<_, i64>(0))
            };
            client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
        }
        Outbound::Connected {
            client_id,
            connection,
        } => {
            let connection = i64::try_from(connection).unwrap_or(i64::MAX);
            client.execute(
                "INSERT INTO replica_connections (client_id, replica, connection) VALUES ($1, $2, $3)
                 ON CONFLICT (client_id) DO UPDATE
                 SET replica = excluded.replica, connection = excluded.connection, since = now()",
                &[&client_id, &id, &connection],
            )?;
            send_one(
                id,
                client,
                Outbound::Notice(Notice::Connected { client_id }),
            )?;
        }
        Outbound::Disconnected {
            client_id,
            connection,
        } => {
            let connection = i64::try_from(connection).unwrap_or(i64::MAX);
            client.execute(
                "DELETE FROM replica_connections WHERE client_id = $1 AND replica = $2 AND connection = $3",
                &[&client_id, &id, &connection],
            )?;
        }
    }
    Ok(())
}

/// The listening thread: hands every notice of another replica to the hub until stopped; reconnects (and
/// listens again) when the connection is lost.
fn listen(
    id: &str,
    url: &str,
    client: Client,
    received: &mpsc::Sender<(String, Notice)>,
    stop: &AtomicBool,
) {
    let mut client = Some(client);
    while !stop.load(Ordering::Relaxed) {
        let Some(listening) = client.as_mut().filter(|c| !c.is_closed()) else {
            std::thread::sleep(Duration::from_secs(1));
            client = connect(url)
                .and_then(|mut c| c.batch_execute(&format!("LISTEN {CHANNEL}")).map(|()| c))
                .inspect_err(|error| tracing::warn!(%error, "replica notices: cannot listen"))
                .ok();
            continue;
        };
        // Waits for the first notice at most a tick (to check `stop`), then takes those already received
        // without waiting: a notice is acted on as soon as it arrives, never held back for company.
        let mut payloads = Vec::new();
        {
            let mut notifications = listening.notifications();
            match postgres::fallible_iterator::FallibleIterator::next(
                &mut notifications.timeout_iter(LISTEN_TICK),
            ) {
                Ok(Some(note)) => payloads.push(note.payload().to_owned()),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "replica notices: the connection was lost");
                }
            }
            if !payloads.is_empty() {
                let mut pending = notifications.iter();
                while payloads.len() < 256 {
                    match postgres::fallible_iterator::FallibleIterator::next(&mut pending) {
                        Ok(Some(note)) => payloads.push(note.payload().to_owned()),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        for payload in payloads {
            let text = if let Some(text) = payload.strip_prefix('m') {
                text.to_owned()
            } else if let Some(row) = payload
                .strip_prefix('r')
                .and_then(|n| n.parse::<i64>().ok())
            {
                match listening
                    .query_opt("SELECT notice FROM replica_mailbox WHERE id = $1", &[&row])
                {
                    Ok(Some(row)) => row.get(0),
                    _ => continue,
                }
            } else {
                continue;
            };
            match serde_json::from_str::<Envelope>(&text) {
                Ok(envelope) if envelope.from != id => {
                    if received
                        .blocking_send((envelope.from, envelope.notice))
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "a replica notice this replica does not know"),
            }
        }
    }
}

/// Acts on the notices of the other replicas until they stop coming (the hub shuts down).
pub async fn serve(hub: Arc<crate::Hub>, mut notices: Received) {
    while let Some((from, notice)) = notices.recv().await {
        let Some(replicas) = hub.connections().replicas().cloned() else {
            return;
        };
        match notice {
            Notice::Desired { client_id, body } => {
                if let Some(identity) = identity(&client_id) {
                    hub.twins().notify_desired_here(&identity, body);
                }
            }
            Notice::C2dQueued { device } => {
                if let Ok(device) = outpost_core::DeviceId::new(device) {
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        hub.messaging()
                            .push_c2d(&outpost_core::Identity::device(device))
                            .await;
                    });
                }
            }
            Notice::Connected { client_id } => hub.connections().close_here(&client_id),
            Notice::Close {
                client_id,
                with_modules,
            } => {
                if with_modules {
                    hub.connections().table().close_device(&client_id);
                } else {
                    hub.connections().close_here(&client_id);
                }
            }
            Notice::Events { newest, partitions } => {
                hub.stream.appended_elsewhere(newest, &partitions);
            }
            Notice::MethodCall {
                holder,
                call_id,
                client_id,
                method,
                payload,
                response_timeout_ms,
            } if holder == replicas.id() => {
                let hub = hub.clone();
                tokio::spawn(async move {
                    let outcome = match identity(&client_id) {
                        Some(identity) => {
                            hub.messaging()
                                .call_method_here(
                                    &identity,
                                    method,
                                    &payload,
                                    Duration::from_millis(response_timeout_ms),
                                )
                                .await
                        }
                        None => MethodOutcome::NotOnline,
                    };
                    replicas.tell(Notice::MethodAnswer {
                        to: from,
                        call_id,
                        outcome,
                    });
                });
            }
            Notice::MethodAnswer {
                to,
                call_id,
                outcome,
            } if to == replicas.id() => replicas.answered(call_id, outcome),
            // Calls and answers between two other replicas.
            Notice::MethodCall { .. } | Notice::MethodAnswer { .. } => {}
        }
    }
}

/// The identity a client id (`d` or `d/m`) names.
pub fn identity(client_id: &str) -> Option<outpost_core::Identity> {
    let (device, module) = match client_id.split_once('/') {
        Some((device, module)) => (device, Some(module)),
        None => (client_id, None),
    };
    Some(outpost_core::Identity {
        device: outpost_core::DeviceId::new(device).ok()?,
        module: match module {
            Some(module) => Some(outpost_core::ModuleId::new(module).ok()?),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_with_their_sender() {
        let envelope = Envelope {
            from: "a".into(),
            notice: Notice::MethodAnswer {
                to: "b".into(),
                call_id: 7,
                outcome: MethodOutcome::Answered {
                    status: 200,
                    payload: serde_json::json!({"x": 1}),
                },
            },
        };
        let text = serde_json::to_string(&envelope).unwrap();
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.from, "a");
        assert_eq!(back.notice, envelope.notice);
    }
}
