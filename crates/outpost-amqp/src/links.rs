//! One task per link: what each node does with its link once attached.
//!
//! [`attach`] decides from an incoming attach which node it names and whether this connection may use it,
//! then accepts it (or refuses it: the attach is answered, then detached with the condition Event Hubs uses)
//! and spawns the link's loop: `$cbs` and `$management` requests, their reply links, a partition's events,
//! C2D messages, feedback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fe2o3_amqp::acceptor::{
    LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SupportedReceiverSettleModes,
    SupportedSenderSettleModes,
};
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{self, AmqpError, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, Message, Outcome, Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use crate::backend::{EventPosition, ServiceBackend};
use crate::claims::{Claims, Denied};
use crate::node::{self, Node};
use crate::wire::{self, amqp_error, vendor_error, Request};

/// Links one session may have attached at once; past this, attaches are refused.
pub const MAX_LINKS_PER_SESSION: usize = 64;
/// Events fetched from the backend per batch; the sender then waits for the receiver's credit.
const EVENT_BATCH: usize = 64;
/// Credit given to a client sending requests or C2D messages.
const INBOUND_CREDIT: u32 = 16;
/// Replies waiting for a reply link (per link), and reply links per node on one connection.
const REPLY_QUEUE: usize = 16;
const MAX_REPLY_LINKS: usize = 16;
/// How long a request waits for its reply link to be attached.
const REPLY_LINK_WAIT: Duration = Duration::from_secs(10);
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
    replies: Mutex<Replies>,
    /// Woken when a reply link is added: a client's first request may arrive before its reply link is
    /// accepted (it sends both attaches, then the request).
    reply_added: Notify,
}

impl<B: ServiceBackend> Connection<B> {
    pub fn new(backend: Arc<B>, host_name: String, max_message_size: u64, claims: Claims) -> Self {
        Self {
            backend,
            host_name,
            max_message_size,
            claims: Mutex::new(claims),
            replies: Mutex::new(Replies::default()),
            reply_added: Notify::new(),
        }
    }

    /// The reply link for a request to `node`, waiting a little for one that is being attached.
    async fn reply_link(
        &self,
        node: &'static str,
        reply_to: Option<&str>,
    ) -> Option<mpsc::Sender<Reply>> {
        let wait = async {
            loop {
                let added = self.reply_added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                let route = self
                    .replies
                    .lock()
                    .expect("replies lock poisoned")
                    .route(node, reply_to);
                if let Some(queue) = route {
                    return queue;
                }
                added.await;
            }
        };
        tokio::time::timeout(REPLY_LINK_WAIT, wait).await.ok()
    }

    fn service_connect(&self, path: &str) -> Result<crate::backend::Grant, Denied> {
        self.claims
            .lock()
            .expect("claims lock poisoned")
            .service_connect(path, SystemTime::now())
    }
}

/// An answer to a `$cbs` or `$management` request, on its way to a reply link.
type Reply = Message<Body<Value>>;
/// The source and target a link acceptor answers with (never dynamic: such attaches are refused).
type Terminus<T> = fn(T) -> Option<T>;

/// The reply links of one connection, by node (`$cbs`, `$management`): their target address and queue.
#[derive(Default)]
struct Replies(HashMap<&'static str, Vec<(String, mpsc::Sender<Reply>)>>);

impl Replies {
    fn add(&mut self, node: &'static str, address: String, queue: mpsc::Sender<Reply>) -> bool {
        let links = self.0.entry(node).or_default();
        links.retain(|(_, q)| !q.is_closed());
        if links.len() >= MAX_REPLY_LINKS {
            return false;
        }
        links.push((address, queue));
        true
    }

    /// The reply link whose target is the request's `reply-to`, else the newest one of the node.
    fn route(&mut self, node: &'static str, reply_to: Option<&str>) -> Option<mpsc::Sender<Reply>> {
        let links = self.0.get_mut(node)?;
        links.retain(|(_, q)| !q.is_closed());
        reply_to
            .and_then(|to| links.iter().find(|(address, _)| address == to))
            .or_else(|| links.last())
            .map(|(_, q)| q.clone())
    }
}

fn node_name(node: &Node) -> &'static str {
    match node {
        Node::Management => node::MANAGEMENT,
        _ => node::CBS,
    }
}

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

fn denied_error(denied: &Denied) -> definitions::Error {
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
            let (queue, replies) = mpsc::channel(REPLY_QUEUE);
            let added = connection
                .replies
                .lock()
                .expect("replies lock poisoned")
                .add(node_name(&node), reply_address, queue);
            if added {
                connection.reply_added.notify_waiters();
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
async fn refuse(endpoint: LinkEndpoint, error: definitions::Error) {
    let closing = async {
        match endpoint {
            LinkEndpoint::Sender(sender) => sender.close_with_error(error).await,
            LinkEndpoint::Receiver(receiver) => receiver.close_with_error(error).await,
        }
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, closing).await;
}

/// A reply link: sends the answers routed to it until the client detaches.
async fn reply_link(mut sender: Sender, mut replies: mpsc::Receiver<Reply>) {
    loop {
        tokio::select! {
            reply = replies.recv() => {
                let Some(reply) = reply else { break };
                let sendable = Sendable::builder().message(reply).settled(true).build();
                // Batchable: the transfer is written with all its fields (see `pad`) and the outcome is not awaited.
                if let Err(error) = sender.send_batchable(sendable).await {
                    tracing::debug!(%error, "AMQP reply link failed");
                    return;
                }
            }
            _ = sender.on_detach() => return,
        }
    }
    let _ = sender.close().await;
}

/// A `$cbs` or `$management` request link: each request is answered on the connection's reply link.
async fn request_link<B: ServiceBackend>(
    node: Node,
    mut receiver: Receiver,
    connection: Arc<Connection<B>>,
) {
    receiver.set_credit_mode(CreditMode::Auto(INBOUND_CREDIT));
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::debug!(%error, "AMQP request link closed");
                return;
            }
        };
        let request = Request::from_message(delivery.message());
        let _ = receiver.accept(&delivery).await;
        let answer = match node {
            Node::Cbs => put_token(&request, &connection),
            _ => management(&request, &connection),
        };
        let route = connection
            .reply_link(node_name(&node), request.reply_to.as_deref())
            .await;
        let Some(queue) = route else {
            tracing::debug!(node = node_name(&node), "a request without a reply link");
            continue;
        };
        if queue.send(answer).await.is_err() {
            tracing::debug!("the reply link closed before its answer");
        }
    }
}

/// `$cbs` put-token: checks the token for its audience and records the grant on the connection.
fn put_token<B: ServiceBackend>(
    request: &Request,
    connection: &Connection<B>,
) -> Message<Body<Value>> {
    if request.property("operation") != Some("put-token") {
        return wire::response(request, 400, "the $cbs node only takes put-token", None);
    }
    let (Some(audience), Some(token)) = (request.property("name"), request.body_text.as_deref())
    else {
        return wire::response(
            request,
            400,
            "put-token needs a name and a token body",
            None,
        );
    };
    // A token is good for the narrower of the name it was put for and the resource it was signed for.
    let resource = node::token_resource(token);
    let Some(scope) = node::token_scope(audience, resource.as_deref()) else {
        return wire::response(
            request,
            401,
            "the token's resource does not cover the audience it was put for",
            None,
        );
    };
    match connection.backend.authorize_token(audience, token) {
        Ok(grant) => {
            connection
                .claims
                .lock()
                .expect("claims lock poisoned")
                .put(&scope, grant);
            wire::response(request, 200, "OK", None)
        }
        Err(error) => wire::response(request, 401, &error.0, None),
    }
}

/// `$management` READ of the Event Hub or one partition.
fn management<B: ServiceBackend>(
    request: &Request,
    connection: &Connection<B>,
) -> Message<Body<Value>> {
    let hub = connection.backend.event_hub();
    // A token on the connection, or the one the request carries.
    let allowed = connection.service_connect(&hub.name).or_else(|denied| {
        let token = request.property("security_token").ok_or(denied)?;
        let audience = format!("sb://{}/{}", connection.host_name, hub.name);
        if node::token_scope(&audience, node::token_resource(token).as_deref()).is_none() {
            return Err(Denied::NoToken(hub.name.clone()));
        }
        let grant = connection
            .backend
            .authorize_token(&audience, token)
            .map_err(|e| Denied::NoToken(e.0))?;
        if grant.service_connect {
            Ok(grant)
        } else {
            Err(Denied::Insufficient {
                policy: grant.policy,
                path: hub.name.clone(),
            })
        }
    });
    if let Err(denied) = allowed {
        return wire::response(request, 401, &denied.to_string(), None);
    }
    if request.property("operation") != Some("READ") {
        return wire::response(request, 400, "only READ is supported", None);
    }
    if let Some(name) = request.property("name") {
        if !name.eq_ignore_ascii_case(&hub.name) {
            return wire::response(
                request,
                404,
                &format!("the entity '{name}' could not be found"),
                None,
            );
        }
    }
    match request.property("type") {
        Some("com.microsoft:eventhub") => {
            wire::response(request, 200, "OK", Some(wire::eventhub_properties(&hub)))
        }
        Some("com.microsoft:partition") => {
            let partition = request
                .property("partition")
                .and_then(|p| p.parse::<u32>().ok());
            let Some(partition) = partition.filter(|p| *p < hub.partition_count) else {
                return wire::response(request, 400, "the partition is out of range", None);
            };
            match connection.backend.partition_info(partition) {
                Ok(info) => wire::response(
                    request,
                    200,
                    "OK",
                    Some(wire::partition_properties(&hub.name, partition, &info)),
                ),
                Err(crate::backend::BackendError::NotFound(text)) => {
                    wire::response(request, 404, &text, None)
                }
                Err(error) => {
                    tracing::error!(%error, "partition properties failed");
                    wire::response(request, 500, "internal error", None)
                }
            }
        }
        _ => wire::response(request, 400, "unknown type", None),
    }
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
