//! The per-server lock, as a type.
//!
//! Every write of a server's state (its record, grant, registrations,
//! pending flow) takes a [`ServerGuard`]: the store's write methods ask for
//! one, and the only way to get one is [`ServerLocks::lock`]. So "one
//! writer per server" is checked by the compiler, not by discipline.
//!
//! The lock is a tokio mutex, held across the awaits of one operation on a
//! server: a refresh holds it from reading the grant to storing the new
//! one (which is what makes it the single flight: a second refresher waits
//! and then finds a newer generation), a login holds it while it discovers
//! and registers, a code exchange while it exchanges, and a config change
//! while it deletes or recreates the server's state. So a config change
//! that removes a server or changes its URL waits for the operation in
//! flight, and nothing that started under the old identity can write after
//! it. (Each operation is bounded by the HTTP timeouts, so the wait is too.)
//!
//! Lock order: `ConfigEditor`'s `edits` (config changes) before any server lock;
//! several server locks are taken in name order; no server lock is held
//! while waiting for `edits`. The std mutexes elsewhere in the daemon are
//! leaves: never held across an await or while taking another lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::config::ServerName;

/// The per-server mutexes, created on first use.
#[derive(Default)]
pub struct ServerLocks {
    map: Mutex<HashMap<ServerName, Arc<tokio::sync::Mutex<()>>>>,
}

/// Proof that the holder has `name`'s lock. Not `Clone`: one holder.
pub struct ServerGuard {
    name: ServerName,
    _held: OwnedMutexGuard<()>,
}

impl ServerLocks {
    /// Waits for `name`'s lock.
    pub async fn lock(&self, name: &ServerName) -> ServerGuard {
        let mutex = self
            .map
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default()
            .clone();
        ServerGuard {
            name: name.clone(),
            _held: mutex.lock_owned().await,
        }
    }

    /// Takes the locks of several servers, in name order (the lock order).
    pub async fn lock_all(&self, names: impl IntoIterator<Item = ServerName>) -> Vec<ServerGuard> {
        let mut names: Vec<ServerName> = names.into_iter().collect();
        names.sort();
        names.dedup();
        let mut guards = Vec::with_capacity(names.len());
        for name in &names {
            guards.push(self.lock(name).await);
        }
        guards
    }
}

impl ServerGuard {
    /// The server this guard locks.
    pub fn name(&self) -> &ServerName {
        &self.name
    }
}

/// The identity providers' locks (`enterprise`): a map of their own, so an
/// identity provider and a server of the same name never share a lock.
/// Taken after a server's lock, never before one.
#[derive(Default)]
pub struct IdpLocks(ServerLocks);

/// Proof that the holder has an identity provider's lock; the store's
/// writes of an identity provider's record ask for one.
#[derive(Debug)]
pub struct IdpGuard(ServerGuard);

impl IdpLocks {
    pub async fn lock(&self, name: &ServerName) -> IdpGuard {
        IdpGuard(self.0.lock(name).await)
    }
}

impl IdpGuard {
    /// The identity provider this guard locks.
    pub fn name(&self) -> &ServerName {
        self.0.name()
    }
}

impl std::fmt::Debug for ServerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerGuard")
            .field("name", &self.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_server_and_servers_are_independent() {
        let locks = Arc::new(ServerLocks::default());
        let a = ServerName::parse("a").unwrap();
        let b = ServerName::parse("b").unwrap();
        let held = locks.lock(&a).await;
        // Another server is not blocked.
        let _b = tokio::time::timeout(Duration::from_secs(1), locks.lock(&b))
            .await
            .expect("b is free");
        // The same server is.
        let locks2 = locks.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { locks2.lock(&a2).await.name().clone() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second holder of a");
        drop(held);
        assert_eq!(waiter.await.unwrap(), a);
    }
}
