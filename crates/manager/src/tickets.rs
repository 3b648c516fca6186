//! Event-stream tickets: what the page opens `GET /api/v1/events?ticket=…` with, since an
//! `EventSource` cannot send the admin token as a header and the token must never be part of a
//! URL.
//!
//! A ticket is good on every replica of the manager, once, for [`TICKET_TTL`]. It carries its
//! own proof: 16 random bytes, its expiry (milliseconds since the epoch) and an HMAC-SHA-256 of
//! both under a key derived from the admin token, which every replica shares. So any replica
//! checks it without asking anybody, and a forged or expired ticket costs one HMAC and never
//! reaches the store. Single use is the store's: a valid ticket is spent by a transaction that
//! creates `/manager/tickets/<random part>` only if it does not exist, under a lease that
//! outlives the ticket, so the record goes by itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use autogate_store::{Compare, Store, Txn, TxnOp};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long an event-stream ticket stays valid: enough to open the stream right after asking.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Where spent tickets are remembered.
const SPENT: &str = "/manager/tickets/";
/// Lease of a spent ticket's record: longer than the ticket lives.
const SPENT_LEASE: Duration = Duration::from_secs(60);
/// Random part, expiry, truncated MAC.
const NONCE: usize = 16;
const MAC: usize = 16;
const LEN: usize = NONCE + 8 + MAC;

/// Why a ticket did not open the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Forged, damaged, expired or spent.
    #[error("invalid or expired ticket: a ticket opens one stream, within 30 s of POST /api/v1/events/ticket")]
    Invalid,
    /// The store could not say whether it was spent.
    #[error("the manager cannot check the ticket now ({0}); try again")]
    Store(String),
}

/// Issues and checks tickets.
#[derive(Debug)]
pub struct Tickets {
    key: [u8; 32],
    store: Arc<dyn Store>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Tickets {
    /// Tickets signed with a key derived from the admin token (the same on every replica).
    pub fn new(token: &str, store: Arc<dyn Store>) -> Tickets {
        let mut h = Sha256::new();
        h.update(b"autogate-manager-event-ticket\0");
        h.update(token.trim().as_bytes());
        Tickets {
            key: h.finalize().into(),
            store,
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC] {
        // A 32-byte key is always a valid HMAC key.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(body);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC];
        out.copy_from_slice(&full[..MAC]);
        out
    }

    /// A new ticket (80 hex digits), valid from `now` for [`TICKET_TTL`].
    pub fn issue(&self, now: SystemTime) -> String {
        let mut raw = [0u8; LEN];
        rand::rng().fill_bytes(&mut raw[..NONCE]);
        let expires = millis(now + TICKET_TTL);
        raw[NONCE..NONCE + 8].copy_from_slice(&expires.to_be_bytes());
        let mac = self.mac(&raw[..NONCE + 8]);
        raw[NONCE + 8..].copy_from_slice(&mac);
        hex::encode(raw)
    }

    /// The random part of a ticket whose proof holds and that has not expired at `now`.
    fn check(&self, ticket: &str, now: SystemTime) -> Option<String> {
        if ticket.len() != LEN * 2 {
            return None;
        }
        let raw = hex::decode(ticket).ok()?;
        let mac = self.mac(&raw[..NONCE + 8]);
        if !bool::from(mac.ct_eq(&raw[NONCE + 8..])) {
            return None;
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&raw[NONCE..NONCE + 8]);
        let expires = u64::from_be_bytes(exp);
        let now = millis(now);
        // Not expired, and not from further ahead than a ticket can be (a clock that jumped).
        if expires <= now || expires > now + millis_of(TICKET_TTL) + 60_000 {
            return None;
        }
        Some(hex::encode(&raw[..NONCE]))
    }

    /// Spends a ticket: `Ok` once for a ticket issued by any replica within [`TICKET_TTL`]
    /// before `now`.
    pub async fn redeem(&self, ticket: &str, now: SystemTime) -> Result<(), TicketError> {
        let nonce = self.check(ticket, now).ok_or(TicketError::Invalid)?;
        let key = format!("{SPENT}{nonce}");
        let lease = self
            .store
            .grant(SPENT_LEASE)
            .await
            .map_err(|e| TicketError::Store(e.to_string()))?;
        let spent = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::missing(key.clone())])
                    .and_then([TxnOp::put_with_lease(key, b"1".to_vec(), lease)]),
            )
            .await
            .map_err(|e| TicketError::Store(e.to_string()))?;
        if spent.succeeded {
            Ok(())
        } else {
            let _ = self.store.revoke(lease).await;
            Err(TicketError::Invalid)
        }
    }
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tickets(token: &str, store: Arc<dyn Store>) -> Tickets {
        Tickets::new(token, store)
    }

    #[tokio::test]
    async fn a_ticket_opens_once_on_any_replica_and_expires() {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .unwrap();
        let a = tickets("tok", store.clone()).await;
        let b = tickets("tok", store.clone()).await;
        let t0 = SystemTime::now();
        let one = a.issue(t0);
        let two = a.issue(t0);
        assert_ne!(one, two);
        assert_eq!(one.len(), 80);
        // Issued by one replica, spent on another, once.
        assert_eq!(b.redeem(&one, t0).await, Ok(()));
        assert_eq!(a.redeem(&one, t0).await, Err(TicketError::Invalid));
        // Expired.
        assert_eq!(
            a.redeem(&two, t0 + TICKET_TTL).await,
            Err(TicketError::Invalid)
        );
        // Another token's ticket, a damaged one, garbage: refused without the store.
        let other = tickets("other", store.clone()).await.issue(t0);
        assert_eq!(a.redeem(&other, t0).await, Err(TicketError::Invalid));
        let mut damaged = a.issue(t0).into_bytes();
        damaged[0] = if damaged[0] == b'0' { b'1' } else { b'0' };
        let damaged = String::from_utf8(damaged).unwrap();
        assert_eq!(a.redeem(&damaged, t0).await, Err(TicketError::Invalid));
        assert_eq!(a.redeem("nope", t0).await, Err(TicketError::Invalid));
        assert_eq!(store.list(SPENT).await.unwrap().len(), 1);
    }
}
