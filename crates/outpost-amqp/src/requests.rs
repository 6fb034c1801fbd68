//! The request/response nodes, `$cbs` and `$management`: a client sends requests on one link and reads the
//! answers on a reply link it attaches from the same node; the answer's correlation id is the request's
//! message id, and its status an int `status-code` application property (both clients read it so).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::{mpsc, Notify};

use crate::backend::ServiceBackend;
use crate::claims::Denied;
use crate::links::{Connection, INBOUND_CREDIT};
use crate::node::{self, Node};
use crate::wire::{self, Request};

/// Replies waiting for a reply link (per link), and reply links per node on one connection.
const REPLY_QUEUE: usize = 16;
const MAX_REPLY_LINKS: usize = 16;
/// How long a request waits for its reply link to be attached.
const REPLY_LINK_WAIT: Duration = Duration::from_secs(10);

/// An answer to a `$cbs` or `$management` request, on its way to a reply link.
pub(crate) type Reply = Message<Body<Value>>;

/// The reply links of one connection.
#[derive(Default)]
pub(crate) struct ReplyLinks {
    /// A std mutex: held for a lookup, never across an await.
    links: Mutex<Replies>,
    /// Woken when a reply link is added: a client's first request may arrive before its reply link is
    /// accepted (it sends both attaches, then the request).
    added: Notify,
}

impl ReplyLinks {
    /// Registers a reply link of `node` whose target is `address`; the queue its task sends from, or `None`
    /// past the cap.
    pub fn add(&self, node: &'static str, address: String) -> Option<mpsc::Receiver<Reply>> {
        let (queue, replies) = mpsc::channel(REPLY_QUEUE);
        let added = self
            .links
            .lock()
            .expect("replies lock poisoned")
            .add(node, address, queue);
        if !added {
            return None;
        }
        self.added.notify_waiters();
        Some(replies)
    }

    /// The reply link for a request to `node`, waiting a little for one that is being attached.
    pub async fn wait_route(
        &self,
        node: &'static str,
        reply_to: Option<&str>,
    ) -> Option<mpsc::Sender<Reply>> {
        let wait = async {
            loop {
                let added = self.added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                let route = self
                    .links
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
}

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

pub(crate) fn node_name(node: &Node) -> &'static str {
    match node {
        Node::Management => node::MANAGEMENT,
        _ => node::CBS,
    }
}

/// A reply link: sends the answers routed to it until the client detaches.
pub(crate) async fn reply_link(mut sender: Sender, mut replies: mpsc::Receiver<Reply>) {
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
pub(crate) async fn request_link<B: ServiceBackend>(
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
            .replies
            .wait_route(node_name(&node), request.reply_to.as_deref())
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
