//! What one connection may do: the grant of its SASL PLAIN credential and the tokens put on its `$cbs` node.
//!
//! A plain struct: the connection shares it between its links behind a std `Mutex` (held for a lookup, never
//! across an await).

use std::time::SystemTime;

use crate::backend::Grant;
use crate::node::audience_covers;

/// Tokens one connection may hold; a client puts one per audience and renews it in place, so more than this
/// means a misbehaving client: the oldest is dropped.
pub const MAX_TOKENS: usize = 32;

/// Why a link or request is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential covers the node.
    #[error("no token covers {0}; put one on $cbs first")]
    NoToken(String),
    /// A credential covers it, but without ServiceConnect.
    #[error("the policy {policy} lacks ServiceConnect for {path}")]
    Insufficient { policy: String, path: String },
    /// Every credential that covered it has expired.
    #[error("the token for {0} has expired")]
    Expired(String),
}

/// The grants of one connection.
#[derive(Debug, Default)]
pub struct Claims {
    /// SASL PLAIN's: a policy's key or token for the whole hub.
    sasl: Option<Grant>,
    /// `$cbs` put-token's, by audience, oldest first.
    tokens: Vec<(String, Grant)>,
}

impl Claims {
    /// The claims of a connection that authenticated with `sasl` (`None` for ANONYMOUS).
    pub fn new(sasl: Option<Grant>) -> Self {
        Self {
            sasl,
            tokens: Vec::new(),
        }
    }

    /// Records a token accepted for `audience`, replacing the one it renews.
    pub fn put(&mut self, audience: &str, grant: Grant) {
        self.tokens.retain(|(held, _)| held != audience);
        if self.tokens.len() >= MAX_TOKENS {
            self.tokens.remove(0);
        }
        self.tokens.push((audience.to_owned(), grant));
    }

    /// The grant that lets this connection use `path` with ServiceConnect at `now`.
    pub fn service_connect(&self, path: &str, now: SystemTime) -> Result<Grant, Denied> {
        let covering = self
            .sasl
            .iter()
            .chain(
                self.tokens
                    .iter()
                    .filter(|(audience, _)| audience_covers(audience, path))
                    .map(|(_, grant)| grant),
            )
            .collect::<Vec<_>>();
        if covering.is_empty() {
            return Err(Denied::NoToken(path.to_owned()));
        }
        let live: Vec<&Grant> = covering
            .into_iter()
            .filter(|grant| grant.expires_at.is_none_or(|at| at > now))
            .collect();
        if let Some(grant) = live.iter().find(|grant| grant.service_connect) {
            return Ok((*grant).clone());
        }
        match live.first() {
            Some(grant) => Err(Denied::Insufficient {
                policy: grant.policy.clone(),
                path: path.to_owned(),
            }),
            None => Err(Denied::Expired(path.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn grant(service_connect: bool, expires_at: Option<SystemTime>) -> Grant {
        Grant {
            policy: "service".into(),
            service_connect,
            expires_at,
        }
    }

    #[test]
    fn an_anonymous_connection_without_tokens_is_denied() {
        let claims = Claims::new(None);
        assert_eq!(
            claims.service_connect("hub", SystemTime::now()),
            Err(Denied::NoToken("hub".into()))
        );
    }

    #[test]
    fn a_token_covers_only_its_audience() {
        let mut claims = Claims::new(None);
        claims.put("sb://h/hub", grant(true, None));
        let now = SystemTime::now();
        assert!(claims
            .service_connect("hub/ConsumerGroups/$Default/Partitions/0", now)
            .is_ok());
        assert!(claims.service_connect("messages/devicebound", now).is_err());
    }

    #[test]
    fn an_expired_token_is_denied_until_it_is_renewed() {
        let now = SystemTime::now();
        let mut claims = Claims::new(None);
        claims.put(
            "sb://h/hub",
            grant(true, Some(now - Duration::from_secs(1))),
        );
        assert_eq!(
            claims.service_connect("hub", now),
            Err(Denied::Expired("hub".into()))
        );
        claims.put(
            "sb://h/hub",
            grant(true, Some(now + Duration::from_mins(1))),
        );
        assert!(claims.service_connect("hub", now).is_ok());
    }

    #[test]
    fn a_policy_without_service_connect_is_insufficient() {
        let mut claims = Claims::new(Some(grant(false, None)));
        assert!(matches!(
            claims.service_connect("hub", SystemTime::now()),
            Err(Denied::Insufficient { .. })
        ));
        claims.put("h", grant(true, None));
        assert!(claims.service_connect("hub", SystemTime::now()).is_ok());
    }

    #[test]
    fn tokens_past_the_limit_drop_the_oldest() {
        let mut claims = Claims::new(None);
        for i in 0..=MAX_TOKENS {
            claims.put(&format!("sb://h/e{i}"), grant(true, None));
        }
        assert_eq!(claims.tokens.len(), MAX_TOKENS);
        assert!(claims.service_connect("e0", SystemTime::now()).is_err());
        assert!(claims
            .service_connect(&format!("e{MAX_TOKENS}"), SystemTime::now())
            .is_ok());
    }
}
