//! One task per link: what each node does with its link once attached.
//!
//! [`attach`] decides from an incoming attach which node it names and whether this connection may use it,
//! then accepts it (or refuses it: the attach is answered, then detached with the condition Event Hubs uses)
//! and spawns the link's loop: a partition's events, C2D messages, feedback, or (in [`crate::requests`])
//! `$cbs` and `$management` requests and their reply links.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fe2o3_amqp::acceptor::{
    LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SupportedReceiverSettleModes,
    SupportedSenderSettleModes,
};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{self, AmqpError, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, Outcome, Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::Value;
use tokio::task::JoinSet;

use crate::backend::{EventPosition, ServiceBackend};
use crate::claims::{Claims, Denied};
use crate::node::{self, Node};
use crate::requests::{node_name, reply_link, request_link, ReplyLinks};
use crate::wire::{self, amqp_error, vendor_error};

/// Links one session may have attached at once; past this, attaches are refused.
pub const MAX_LINKS_PER_SESSION: usize = 64;
/// Events fetched from the backend per batch; the sender then waits for the receiver's credit.
const EVENT_BATCH: usize = 64;
/// Credit given to a client sending requests or C2D messages.
pub(crate) const INBOUND_CREDIT: u32 = 16;
/// How long a refused link waits for the client's detach.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle event link checks that its grant is still valid.
const GRANT_CHECK: Duration = Duration::from_secs(30);
/// Largest `$cbs`/`$management` request (a token and a few properties).
const MAX_REQUEST_SIZE: u64 = 64 * 1024;

/// What the links of one connection share.
pub(crate) struct Connection<B> {
    pub backend: Arc<B>,
    pub host_name: String,
    pub max_message_size: u64,
    /// A std mutex: held for lookups only, never across an await.
    pub claims: Mutex<Claims>,
    /// Where `$cbs` and `$management` answers go.
    pub replies: ReplyLinks,
}

impl<B: ServiceBackend> Connection<B> {
    pub fn new(backend: Arc<B>, host_name: String, max_message_size: u64, claims: Claims) -> Self {
        Self {
            backend,
            host_name,
            max_message_size,
            claims: Mutex::new(claims),
            replies: ReplyLinks::default(),
        }
    }

    pub fn service_connect(&self, path: &str) -> Result<crate::backend::Grant, Denied> {
        self.claims
            .lock()
            .expect("claims lock poisoned")
            .service_connect(path, SystemTime::now())
    }
}

/// The source and target a link acceptor answers with (never dynamic: such attaches are refused).
type Terminus<T> = fn(T) -> Option<T>;

/// The address an attach names: the source's for a link the client receives on, the target's otherwise.
fn attach_address(attach: &Attach) -> Option<String> {
    match attach.role {
        Role::Receiver => attach.source.as_ref().and_then(|s| s.address.clone()),
        Role::Sender => match attach.target.as_deref() {
            Some(TargetArchetype::Target(target)) => target.address.clone(),
            _ => None,
        },
    }
}

/// The client's receiver link's target address (where replies are addressed).
fn attach_reply_address(attach: &Attach) -> String {
    match attach.target.as_deref() {
        Some(TargetArchetype::Target(target)) => target.address.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

pub(crate) fn denied_error(denied: &Denied) -> definitions::Error {
    amqp_error(AmqpError::UnauthorizedAccess, denied.to_string())
}

fn acceptor(
    sender_modes: SupportedSenderSettleModes,
    max_message_size: u64,
) -> LinkAcceptor<Terminus<Source>, Terminus<Target>> {
    // The hub settles what it receives at once (receiver settle mode first), whatever the client asks: the
    // C client (uamqp) asks for "second" and yet waits for a settled disposition, as IoT Hub sends.
    LinkAcceptor::builder()
        .supported_sender_settle_modes(sender_modes)
        .fallback_sender_settle_mode(SenderSettleMode::Settled)
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .max_message_size(max_message_size)
        .verify_incoming_source(false)
        .verify_incoming_target(false)
        .build()
}

/// Handles one incoming attach: accepts the link and spawns its loop into `links`, or refuses it.
pub(crate) async fn attach<B: ServiceBackend>(
    attach: Attach,
    session: &mut ListenerSessionHandle,
    connection: &Arc<Connection<B>>,
    links: &mut JoinSet<()>,
) {
    let name = attach.name.clone();
    let role = attach.role.clone();
    let address = attach_address(&attach).unwrap_or_default();
    let node = Node::parse(&address);
    // A partition's start is resolved before accepting: a bad filter refuses the link, and `@latest` means
    // what had arrived when the client's attach was answered.
    let mut start = None;
    let refusal = if links.len() >= MAX_LINKS_PER_SESSION {
        Some(amqp_error(
            AmqpError::ResourceLimitExceeded,
            format!("a session may hold {MAX_LINKS_PER_SESSION} links"),
        ))
    } else {
        match &node {
            None => Some(amqp_error(
                AmqpError::NotFound,
                format!("no node at '{address}'"),
            )),
            Some(node) => check_node(node, &role, connection)
                .and_then(|()| match node {
                    Node::Partition { partition, .. } => {
                        start = Some(partition_start(partition, &attach, connection)?);
                        Ok(())
                    }
                    _ => Ok(()),
                })
                .err(),
        }
    };
    // Events go out pre-settled (no unsettled state grows on the hub); the rest as the client asks.
    let events_link = matches!(node, Some(Node::Partition { .. }));
    let runtime_metric = events_link
        && attach
            .desired_capabilities
            .as_ref()
            .is_some_and(|c| c.0.iter().any(|s| s.as_str() == wire::RUNTIME_METRIC));
    let link_acceptor = if events_link {
        let events = acceptor(SupportedSenderSettleModes::Settled, 0);
        if runtime_metric {
            events
                .into_builder()
                .add_offered_capabilities(wire::RUNTIME_METRIC)
                .build()
        } else {
            events
        }
    } else {
        let limit = match node {
            Some(Node::Devicebound) => connection.max_message_size.saturating_mul(2),
            _ => MAX_REQUEST_SIZE,
        };
        acceptor(SupportedSenderSettleModes::All, limit)
    };
    let reply_address = attach_reply_address(&attach);
    let endpoint = match link_acceptor.accept_incoming_attach(attach, session).await {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::debug!(%error, link = %name, "AMQP attach failed");
            return;
        }
    };
    if let Some(error) = refusal {
        tracing::debug!(link = %name, %address, %error, "AMQP link refused");
        links.spawn(refuse(endpoint, error));
        return;
    }
    let Some(node) = node else { return };
    let connection = Arc::clone(connection);
    match (node, endpoint) {
        (node @ (Node::Cbs | Node::Management), LinkEndpoint::Sender(sender)) => {
            if let Some(replies) = connection.replies.add(node_name(&node), reply_address) {
                links.spawn(reply_link(sender, replies));
            } else {
                links.spawn(refuse(
                    LinkEndpoint::Sender(sender),
                    amqp_error(AmqpError::ResourceLimitExceeded, "too many reply links"),
                ));
            }
        }
        (node @ (Node::Cbs | Node::Management), LinkEndpoint::Receiver(receiver)) => {
            links.spawn(request_link(node, receiver, connection));
        }
        (node @ Node::Partition { .. }, LinkEndpoint::Sender(sender)) => {
            // Without a refusal, the start was resolved.
            if let (Some((partition, after)), Some(path)) = (start, node.protected_path()) {
                let reader = EventReader {
                    path,
                    partition,
                    after,
                    runtime_metric,
                };
                links.spawn(event_link(sender, connection, reader));
            }
        }
        (Node::Devicebound, LinkEndpoint::Receiver(receiver)) => {
            links.spawn(c2d_link(receiver, connection));
        }
        (Node::Feedback, LinkEndpoint::Sender(sender)) => {
            links.spawn(feedback_link(sender, connection));
        }
        (_, endpoint) => {
            links.spawn(refuse(
                endpoint,
                amqp_error(
                    AmqpError::NotAllowed,
                    "this node does not take a link in this direction",
                ),
            ));
        }
    }
}

/// Whether `node` may be attached with the client's `role` on this connection; the error to detach with
/// otherwise.
fn check_node<B: ServiceBackend>(
    node: &Node,
    role: &Role,
    connection: &Connection<B>,
) -> Result<(), definitions::Error> {
    let wrong_direction = || {
        amqp_error(
            AmqpError::NotAllowed,
            "this node does not take a link in this direction",
        )
    };
    match node {
        Node::Cbs | Node::Management => Ok(()),
        Node::Devicebound | Node::Feedback => {
            let expected = if *node == Node::Devicebound {
                Role::Sender
            } else {
                Role::Receiver
            };
            if *role != expected {
                return Err(wrong_direction());
            }
            let path = node.protected_path().unwrap_or_default();
            connection
                .service_connect(&path)
                .map(|_| ())
                .map_err(|d| denied_error(&d))
        }
        Node::Partition {
            entity,
            consumer_group,
            partition,
        } => {
            if *role != Role::Receiver {
                return Err(wrong_direction());
            }
            // A token for the entity, its consumer group (as azure-eventhub puts) or the partition.
            connection
                .service_connect(&node.protected_path().unwrap_or_default())
                .map_err(|d| denied_error(&d))?;
            let hub = connection.backend.event_hub();
            if !entity.eq_ignore_ascii_case(&hub.name) {
                return Err(amqp_error(
                    AmqpError::NotFound,
                    format!("the messaging entity '{entity}' could not be found"),
                ));
            }
            if !connection.backend.consumer_group_exists(consumer_group) {
                return Err(amqp_error(
                    AmqpError::NotFound,
                    format!("the consumer group '{consumer_group}' could not be found"),
                ));
            }
            match partition.parse::<u32>() {
                Ok(p) if p < hub.partition_count => Ok(()),
                _ => Err(vendor_error(
                    "com.microsoft:argument-out-of-range",
                    format!(
                        "the partition '{partition}' is out of range: valid partitions are 0 to {}",
                        hub.partition_count.saturating_sub(1)
                    ),
                )),
            }
        }
    }
}

/// The partition number and the sequence number to read after, from the attach's filter.
fn partition_start<B: ServiceBackend>(
    partition: &str,
    attach: &Attach,
    connection: &Connection<B>,
) -> Result<(u32, i64), definitions::Error> {
    // check_node validated the number.
    let partition = partition.parse().unwrap_or_default();
    let position = attach
        .source
        .as_deref()
        .map_or(Ok(EventPosition::Earliest), position_of)?;
    let after = connection
        .backend
        .resolve_position(partition, position)
        .map_err(|e| wire::backend_error(&e))?;
    Ok((partition, after))
}

/// The selector filter's position (no filter: the earliest event).
fn position_of(source: &Source) -> Result<EventPosition, definitions::Error> {
    let Some(filters) = &source.filter else {
        return Ok(EventPosition::Earliest);
    };
    for (key, value) in filters {
        if !key.as_str().contains("selector-filter") {
            continue;
        }
        let expression = match value {
            Value::Described(described) => match &described.value {
                Value::String(text) => text.clone(),
                _ => String::new(),
            },
            Value::String(text) => text.clone(),
            _ => String::new(),
        };
        return node::parse_selector(&expression)
            .map_err(|e| amqp_error(AmqpError::InvalidField, e.to_string()));
    }
    Ok(EventPosition::Earliest)
}

/// Detaches (closes) an accepted link with `error`; the client sees its attach answered, then refused.
pub(crate) async fn refuse(endpoint: LinkEndpoint, error: definitions::Error) {
    let closing = async {
        match endpoint {
            LinkEndpoint::Sender(sender) => sender.close_with_error(error).await,
            LinkEndpoint::Receiver(receiver) => receiver.close_with_error(error).await,
        }
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, closing).await;
}

/// Where an event link reads.
struct EventReader {
    /// The node's path, which the connection's grant must keep covering.
    path: String,
    partition: u32,
    /// The last sequence number sent (or the one before the start).
    after: i64,
    /// Whether each event carries the partition's last-enqueued figures.
    runtime_metric: bool,
}

/// A partition's events after the reader's start, sent as the receiver's credit allows.
async fn event_link<B: ServiceBackend>(
    mut sender: Sender,
    connection: Arc<Connection<B>>,
    reader: EventReader,
) {
    let EventReader {
        path,
        partition,
        mut after,
        runtime_metric,
    } = reader;
    tracing::debug!(partition, after, "AMQP event receiver attached");
    loop {
        let events = tokio::select! {
            events = connection.backend.wait_events(partition, after, EVENT_BATCH) => Some(events),
            () = tokio::time::sleep(GRANT_CHECK) => None,
            _ = sender.on_detach() => return,
        };
        // The grant is checked before each batch and every GRANT_CHECK: a token that expired without being
        // renewed on $cbs ends the link.
        if let Err(denied) = connection.service_connect(&path) {
            refuse(LinkEndpoint::Sender(sender), denied_error(&denied)).await;
            return;
        }
        let Some(events) = events else { continue };
        let events = match events {
            Ok(events) => events,
            Err(error) => {
                refuse(LinkEndpoint::Sender(sender), wire::backend_error(&error)).await;
                return;
            }
        };
        let metric = if runtime_metric {
            connection
                .backend
                .partition_info(partition)
                .ok()
                .map(|info| wire::runtime_metric(&info, unix_ms()))
        } else {
            None
        };
        for event in events {
            after = event.sequence_number;
            // Pre-settled: this returns once the transfer is written, after waiting for credit.
            match sender
                .send_batchable(wire::event_message(&event, metric.clone()))
                .await
            {
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "AMQP event receiver gone");
                    return;
                }
            }
        }
    }
}

/// `/messages/devicebound`: each message is queued for its device, then accepted, or rejected with why.
async fn c2d_link<B: ServiceBackend>(mut receiver: Receiver, connection: Arc<Connection<B>>) {
    receiver.set_credit_mode(CreditMode::Auto(INBOUND_CREDIT));
    let path = node::DEVICEBOUND.trim_start_matches('/');
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::debug!(%error, "AMQP C2D link closed");
                return;
            }
        };
        let outcome = match connection.service_connect(path) {
            Err(denied) => Err(denied_error(&denied)),
            Ok(grant) => match wire::c2d_message(delivery.message(), connection.max_message_size) {
                Err(refusal) => Err(refusal.to_error()),
                Ok(message) => connection
                    .backend
                    .send_c2d(&grant, message)
                    .await
                    .map_err(|e| wire::backend_error(&e)),
            },
        };
        let disposed = match outcome {
            Ok(()) => receiver.accept(&delivery).await,
            Err(error) => receiver.reject(&delivery, error).await,
        };
        if disposed.is_err() {
            return;
        }
    }
}

/// `/messages/servicebound/feedback`: feedback batches, each completed once the client accepts it.
async fn feedback_link<B: ServiceBackend>(mut sender: Sender, connection: Arc<Connection<B>>) {
    let path = node::FEEDBACK.trim_start_matches('/');
    loop {
        let batch = tokio::select! {
            batch = connection.backend.next_feedback() => Some(batch),
            () = tokio::time::sleep(GRANT_CHECK) => None,
            _ = sender.on_detach() => return,
        };
        if let Err(denied) = connection.service_connect(path) {
            refuse(LinkEndpoint::Sender(sender), denied_error(&denied)).await;
            return;
        }
        let Some(batch) = batch else { continue };
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                refuse(LinkEndpoint::Sender(sender), wire::backend_error(&error)).await;
                return;
            }
        };
        let outcome = match sender.send_batchable(wire::feedback_message(&batch)).await {
            Ok(delivery) => delivery.await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(Outcome::Accepted(_)) => {
                if let Err(error) = connection.backend.complete_feedback(batch.lock_token) {
                    tracing::warn!(%error, "completing a feedback batch failed");
                }
            }
            // Not accepted: the lock expires and the batch is handed out again.
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "AMQP feedback receiver gone");
                return;
            }
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
