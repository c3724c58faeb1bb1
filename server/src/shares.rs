//! Fair shares of a kind of connection: at most so many at once, and at most so many for one
//! client address, so that one host cannot take every slot (`HTTP_MAX_CONNECTIONS` and
//! `HTTP_MAX_CONNECTIONS_PER_IP` for connections at accept, `SSE_MAX_CLIENTS` and
//! `SSE_MAX_CLIENTS_PER_IP` for event streams).
//!
//! A client address is counted by [`client_key`] (an IPv6 address by its /64). The per-address
//! counts hold only addresses with a slot open now, so their memory is bounded by the total.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::client::client_key;

/// The slots of one kind of connection (cheap to clone: shared counts).
#[derive(Debug, Clone)]
pub struct Shares {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: usize,
    per_client: usize,
    open: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's place in its [`Shares`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<Inner>,
    /// The key its address is counted under; `None` when exempt from the per-address cap.
    client: Option<IpAddr>,
}

impl Shares {
    /// At most `total` slots at once, at most `per_client` of them for one client address.
    pub fn new(total: usize, per_client: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                total,
                per_client,
                open: AtomicUsize::new(0),
                by_client: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A slot for a connection from `client` (`None`: a trusted proxy or an unknown peer,
    /// counted only in the total), unless the total or that address's share is used up.
    pub fn admit(&self, client: Option<IpAddr>) -> Option<Slot> {
        let inner = &self.inner;
        let mut by_client = inner
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Raised only under the lock, so the check and the raise cannot race.
        if inner.open.load(Ordering::Relaxed) >= inner.total {
            return None;
        }
        let key = client.map(client_key);
        if let Some(key) = key {
            let count = by_client.entry(key).or_default();
            if *count >= inner.per_client {
                if *count == 0 {
                    by_client.remove(&key);
                }
                return None;
            }
            *count += 1;
        }
        inner.open.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            inner: Arc::clone(inner),
            client: key,
        })
    }

    /// Slots taken now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// The most slots at once.
    pub fn total(&self) -> usize {
        self.inner.total
    }

    /// Client addresses holding a slot now (the size of the per-address state).
    pub fn clients(&self) -> usize {
        self.inner
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_client = self
            .inner
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = self.client {
            if let Some(count) = by_client.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    by_client.remove(&key);
                }
            }
        }
        self.inner.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("address"))
    }

    #[test]
    fn one_address_gets_its_share_and_others_the_rest() {
        let shares = Shares::new(5, 2);
        let a = [shares.admit(ip("10.0.0.1")), shares.admit(ip("10.0.0.1"))];
        assert!(a.iter().all(Option::is_some));
        assert!(shares.admit(ip("10.0.0.1")).is_none(), "over its share");
        let b = shares.admit(ip("10.0.0.2"));
        assert!(b.is_some());
        let exempt = [shares.admit(None), shares.admit(None)];
        assert!(exempt.iter().all(Option::is_some), "no per-address cap");
        assert_eq!(shares.open(), 5);
        assert!(shares.admit(ip("10.0.0.3")).is_none(), "over the total");
        assert!(shares.admit(None).is_none(), "over the total");
        drop(a);
        assert_eq!(shares.open(), 3);
        assert_eq!(shares.clients(), 1, "an address with no slot is forgotten");
        assert!(shares.admit(ip("10.0.0.1")).is_some());
    }

    #[test]
    fn an_ipv6_64_is_one_client() {
        let shares = Shares::new(10, 1);
        let first = shares.admit(ip("2001:db8:1:2::1"));
        assert!(first.is_some());
        assert!(shares.admit(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(shares.admit(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn refusals_leave_no_state_behind() {
        let shares = Shares::new(1, 0);
        for last in 0..1000u32 {
            assert!(shares
                .admit(Some(IpAddr::from(last.to_be_bytes())))
                .is_none());
        }
        assert_eq!(shares.clients(), 0);
        assert_eq!(shares.open(), 0);
    }
}
