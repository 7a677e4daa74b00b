//! Listeners bound by whoever starts a node or coordinator in-process and handed over
//! with its configuration. A side listener (NHSA gateway, metrics, console) is configured
//! by address; an address picked by binding port 0 and then released can be taken by
//! another process before the daemon binds it again. Binding once and handing the
//! listener over closes that window. The daemons use a handed-over listener whose
//! address is the configured one and bind the address themselves otherwise, so the
//! config file and flags work as before.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::TcpListener;

use crate::error::{Error, Result};

/// Bound listeners by their address, shared by the clones of one config.
#[derive(Debug, Clone, Default)]
pub struct Prebound(Arc<Mutex<HashMap<SocketAddr, std::net::TcpListener>>>);

impl Prebound {
    /// Binds an ephemeral port on 127.0.0.1, keeps the listener for the daemon and
    /// returns its address (to put in `nhsa_listen`, `metrics_listen`, …).
    ///
    /// # Panics
    /// When loopback cannot be bound (tests only).
    #[must_use]
    pub fn loopback(&self) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        self.insert(l)
    }

    /// Keeps `listener` for the daemon; returns its address.
    ///
    /// # Panics
    /// When the listener has no local address.
    pub fn insert(&self, listener: std::net::TcpListener) -> SocketAddr {
        let addr = listener.local_addr().expect("bound listener's address");
        self.lock().insert(addr, listener);
        addr
    }

    /// The listener handed over for `addr`, or `bind(addr)` when there is none.
    pub async fn take_or<F>(
        &self,
        addr: SocketAddr,
        bind: impl FnOnce(SocketAddr) -> F,
    ) -> Result<TcpListener>
    where
        F: Future<Output = Result<TcpListener>>,
    {
        let held = self.lock().remove(&addr);
        match held {
            Some(l) => l
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(l))
                .map_err(|e| Error::Unavailable(format!("listener on {addr}: {e}"))),
            None => bind(addr).await,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, std::net::TcpListener>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_listener_is_used_and_other_addresses_are_bound() {
        let p = Prebound::default();
        let addr = p.loopback();
        // The address stays taken while held.
        assert!(std::net::TcpListener::bind(addr).is_err());
        let l = p
            .take_or(addr, |_| async {
                Err(Error::Unavailable("bound again".into()))
            })
            .await
            .unwrap();
        assert_eq!(l.local_addr().unwrap(), addr);
        drop(l);
        let other = SocketAddr::from(([127, 0, 0, 1], 0));
        let l = p
            .take_or(other, |a| async move {
                TcpListener::bind(a)
                    .await
                    .map_err(|e| Error::Unavailable(e.to_string()))
            })
            .await
            .unwrap();
        assert_ne!(l.local_addr().unwrap(), addr);
    }
}
