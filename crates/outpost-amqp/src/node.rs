//! The nodes a link may attach to, parsed from its address, and the other strings clients put on the wire:
//! the Event Hubs selector filter, a C2D message's `to`, a token's audience.
//!
//! Pure functions, no AMQP types: the link layer hands in strings and gets a [`Node`] or a typed refusal.

use crate::backend::EventPosition;

/// The `$cbs` node (claims-based security: put-token requests).
pub const CBS: &str = "$cbs";
/// The `$management` node (Event Hub and partition properties).
pub const MANAGEMENT: &str = "$management";
/// Where the service SDK sends cloud-to-device messages.
pub const DEVICEBOUND: &str = "/messages/devicebound";
/// Where the service SDK receives delivery feedback.
pub const FEEDBACK: &str = "/messages/servicebound/feedback";

/// What an address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Cbs,
    Management,
    /// `{entity}/ConsumerGroups/{consumer_group}/Partitions/{partition}`; the partition is checked against
    /// the hub later, so it stays a string here.
    Partition {
        entity: String,
        consumer_group: String,
        partition: String,
    },
    Devicebound,
    Feedback,
}

impl Node {
    /// Parses a link address, with or without the `amqps://HOST` prefix clients put in front of it.
    /// `None` for an address that names nothing the hub serves.
    pub fn parse(address: &str) -> Option<Self> {
        let path = resource_path(address);
        let trimmed = path.trim_matches('/');
        if trimmed.eq_ignore_ascii_case(CBS) {
            return Some(Node::Cbs);
        }
        if trimmed.eq_ignore_ascii_case(MANAGEMENT) {
            return Some(Node::Management);
        }
        if trimmed.eq_ignore_ascii_case(&DEVICEBOUND[1..]) {
            return Some(Node::Devicebound);
        }
        if trimmed.eq_ignore_ascii_case(&FEEDBACK[1..]) {
            return Some(Node::Feedback);
        }
        let parts: Vec<&str> = trimmed.split('/').collect();
        match parts.as_slice() {
            [entity, groups, consumer_group, partitions, partition]
                if groups.eq_ignore_ascii_case("ConsumerGroups")
                    && partitions.eq_ignore_ascii_case("Partitions")
                    && !entity.is_empty()
                    && !consumer_group.is_empty() =>
            {
                Some(Node::Partition {
                    entity: (*entity).to_owned(),
                    consumer_group: (*consumer_group).to_owned(),
                    partition: (*partition).to_owned(),
                })
            }
            _ => None,
        }
    }

    /// The path a token's audience must cover for a link to this node (`None`: the node needs no token to
    /// attach, its requests are checked one by one).
    pub fn protected_path(&self) -> Option<String> {
        match self {
            Node::Cbs | Node::Management => None,
            Node::Partition {
                entity,
                consumer_group,
                partition,
            } => Some(format!(
                "{entity}/ConsumerGroups/{consumer_group}/Partitions/{partition}"
            )),
            Node::Devicebound => Some(DEVICEBOUND[1..].to_owned()),
            Node::Feedback => Some(FEEDBACK[1..].to_owned()),
        }
    }
}

/// The path of an address or audience: without the scheme and host when there is a scheme, without
/// surrounding slashes. `amqps://h/a/b`, `sb://h/a/b/` and `a/b` all give `a/b`; `https://h` gives ``.
pub fn resource_path(address: &str) -> &str {
    let rest = match address.split_once("://") {
        Some((_, after_scheme)) => after_scheme.split_once('/').map_or("", |(_, path)| path),
        None => address,
    };
    rest.trim_matches('/')
}

/// Whether a token for `audience` covers `path` (see [`resource_path`]): the audience's path is `path` or
/// one of its parents. The host part is the backend's to check (it knows the names the hub answers to); an
/// audience always starts with a host, with or without a scheme (`sb://h/hub`, `h/hub`).
pub fn audience_covers(audience: &str, path: &str) -> bool {
    let scope = audience_path(audience);
    if scope.is_empty() {
        return true;
    }
    let scope = scope.to_ascii_lowercase();
    let path = path.trim_matches('/').to_ascii_lowercase();
    path == scope || path.starts_with(&format!("{scope}/"))
}

/// The path of an audience (or a token's `sr`): without its host, with or without a scheme.
pub fn audience_path(audience: &str) -> &str {
    if audience.contains("://") {
        resource_path(audience)
    } else {
        audience
            .split_once('/')
            .map_or("", |(_, path)| path)
            .trim_matches('/')
    }
}

/// The resource (`sr`) a SAS token (`SharedAccessSignature sr=...&sig=...`) names, decoded; `None` for
/// another kind of token.
pub fn token_resource(token: &str) -> Option<String> {
    let fields = token.trim().strip_prefix("SharedAccessSignature ")?;
    let raw = fields
        .split('&')
        .find_map(|field| field.strip_prefix("sr="))?;
    percent_decode(raw)
}

/// What a token put for `audience` may be used for: the narrower of the audience and the token's own
/// resource, when one covers the other; `None` when they are unrelated.
pub fn token_scope(audience: &str, resource: Option<&str>) -> Option<String> {
    let Some(resource) = resource else {
        return Some(audience.to_owned());
    };
    if audience_covers(audience, audience_path(resource)) {
        Some(resource.to_owned())
    } else if audience_covers(resource, audience_path(audience)) {
        Some(audience.to_owned())
    } else {
        None
    }
}

/// Why a selector filter was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported selector filter: {0}")]
pub struct FilterError(pub String);

/// The position an Event Hubs selector filter (`apache.org:selector-filter:string`) selects:
/// `amqp.annotation.x-opt-offset > '-1'`, `... > '@latest'`, `... >= '12'`,
/// `amqp.annotation.x-opt-sequence-number > '5'`, `amqp.annotation.x-opt-enqueued-time > '1700000000000'`.
pub fn parse_selector(expression: &str) -> Result<EventPosition, FilterError> {
    let refuse = || FilterError(expression.to_owned());
    let mut words = expression.split_whitespace();
    let (Some(field), Some(operator)) = (words.next(), words.next()) else {
        return Err(refuse());
    };
    let rest: Vec<&str> = words.collect();
    let quoted = rest.join(" ");
    let value = quoted
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(refuse)?;
    let inclusive = match operator {
        ">" => false,
        ">=" => true,
        _ => return Err(refuse()),
    };
    let field = field
        .strip_prefix("amqp.annotation.")
        .ok_or_else(refuse)?
        .to_ascii_lowercase();
    let number = || value.parse::<i64>().map_err(|_| refuse());
    match field.as_str() {
        "x-opt-offset" => match value {
            "-1" => Ok(EventPosition::Earliest),
            "@latest" => Ok(EventPosition::Latest),
            _ => Ok(EventPosition::Offset {
                offset: number()?,
                inclusive,
            }),
        },
        "x-opt-sequence-number" => Ok(EventPosition::SequenceNumber {
            sequence_number: number()?,
            inclusive,
        }),
        "x-opt-enqueued-time" => Ok(EventPosition::EnqueuedTime { ms: number()? }),
        _ => Err(refuse()),
    }
}

/// The device id of a C2D message's `to`: `/devices/{id}/messages/devicebound` (the id percent-encoded or
/// not). `None` for anything else.
pub fn devicebound_device(to: &str) -> Option<String> {
    let inner = to
        .strip_prefix("/devices/")?
        .strip_suffix("/messages/devicebound")?;
    if inner.is_empty() || inner.contains('/') {
        return None;
    }
    percent_decode(inner)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_addresses_parse_with_and_without_the_host_prefix() {
        let expected = Node::Partition {
            entity: "hub".into(),
            consumer_group: "$Default".into(),
            partition: "3".into(),
        };
        assert_eq!(
            Node::parse("amqps://hub.example/hub/ConsumerGroups/$Default/Partitions/3"),
            Some(expected.clone())
        );
        assert_eq!(
            Node::parse("hub/consumergroups/$Default/partitions/3"),
            Some(expected)
        );
    }

    #[test]
    fn service_nodes_parse_and_unknown_addresses_do_not() {
        assert_eq!(Node::parse("$cbs"), Some(Node::Cbs));
        assert_eq!(Node::parse("$management"), Some(Node::Management));
        assert_eq!(
            Node::parse("amqps://h/messages/devicebound"),
            Some(Node::Devicebound)
        );
        assert_eq!(
            Node::parse("/messages/servicebound/feedback"),
            Some(Node::Feedback)
        );
        assert_eq!(Node::parse("hub/Partitions/0"), None);
        assert_eq!(Node::parse(""), None);
        assert_eq!(Node::parse("amqps://h/queue"), None);
    }

    #[test]
    fn selector_filters_map_to_positions() {
        let cases = [
            (
                "amqp.annotation.x-opt-offset > '-1'",
                EventPosition::Earliest,
            ),
            (
                "amqp.annotation.x-opt-offset > '@latest'",
                EventPosition::Latest,
            ),
            (
                "amqp.annotation.x-opt-offset >= '120'",
                EventPosition::Offset {
                    offset: 120,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number > '7'",
                EventPosition::SequenceNumber {
                    sequence_number: 7,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-enqueued-time > '1700000000000'",
                EventPosition::EnqueuedTime {
                    ms: 1_700_000_000_000,
                },
            ),
        ];
        for (expression, position) in cases {
            assert_eq!(parse_selector(expression), Ok(position), "{expression}");
        }
    }

    #[test]
    fn malformed_selector_filters_are_refused() {
        for expression in [
            "",
            "amqp.annotation.x-opt-offset",
            "amqp.annotation.x-opt-offset < '1'",
            "amqp.annotation.x-opt-offset > 1",
            "amqp.annotation.x-opt-offset > 'one'",
            "amqp.annotation.x-opt-partition-key > '1'",
            "x-opt-offset > '1'",
        ] {
            assert!(parse_selector(expression).is_err(), "{expression}");
        }
    }

    #[test]
    fn audiences_cover_their_path_and_below() {
        assert!(audience_covers("sb://h/hub", "hub"));
        assert!(audience_covers(
            "sb://h/hub",
            "hub/ConsumerGroups/$Default/Partitions/0"
        ));
        assert!(audience_covers("https://h", "messages/devicebound"));
        assert!(audience_covers("h", "messages/devicebound"));
        assert!(audience_covers(
            "h/hub/",
            "hub/ConsumerGroups/$Default/Partitions/0"
        ));
        assert!(!audience_covers("sb://h/hub", "hubby/ConsumerGroups/x"));
        assert!(!audience_covers("sb://h/other", "hub"));
    }

    #[test]
    fn a_token_is_scoped_to_the_narrower_of_its_audience_and_resource() {
        let token = "SharedAccessSignature sr=sb%3A%2F%2Fh%2Fhub&sig=x&se=1&skn=p";
        assert_eq!(token_resource(token).as_deref(), Some("sb://h/hub"));
        assert_eq!(
            token_scope("sb://h", Some("sb://h/hub")).as_deref(),
            Some("sb://h/hub")
        );
        assert_eq!(
            token_scope("sb://h/hub/ConsumerGroups/$Default", Some("h")).as_deref(),
            Some("sb://h/hub/ConsumerGroups/$Default")
        );
        assert_eq!(token_scope("sb://h/hub", Some("sb://h/other")), None);
        assert_eq!(token_scope("https://h", None).as_deref(), Some("https://h"));
        assert_eq!(token_resource("Bearer abc"), None);
    }

    #[test]
    fn devicebound_to_names_one_device() {
        assert_eq!(
            devicebound_device("/devices/d%201/messages/devicebound").as_deref(),
            Some("d 1")
        );
        assert_eq!(devicebound_device("/devices//messages/devicebound"), None);
        assert_eq!(
            devicebound_device("/devices/a/b/messages/devicebound"),
            None
        );
        assert_eq!(devicebound_device("/devices/a/messages/events"), None);
        assert_eq!(
            devicebound_device("/devices/%zz/messages/devicebound"),
            None
        );
    }
}
