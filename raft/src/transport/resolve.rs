//! Store addresses: a [`StoreResolver`] says where a store's RPC port is (later: asked of
//! the coordinator at run time), and a per-core [`ResolverCache`] keeps the answers until a
//! connection to one fails.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

/// The future of [`StoreResolver::resolve`]; awaited on the asking core's executor.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<SocketAddr>> + 'a>>;

/// Finds the RPC address of a store.
pub trait StoreResolver: Send + Sync {
    /// The address of store `store_id`'s RPC port, or [`Error::StoreUnknown`]. Must not
    /// block the calling thread (it runs on an executor): a resolver that asks over the
    /// network returns a future that waits without blocking.
    fn resolve(&self, store_id: u64) -> ResolveFuture<'_>;
}

/// A fixed table of store addresses (tests, and a cluster before the coordinator exists);
/// entries can be changed while running.
#[derive(Debug, Default)]
pub struct StaticResolver {
    addrs: RwLock<HashMap<u64, SocketAddr>>,
}

impl StaticResolver {
    /// A resolver knowing `addrs`.
    pub fn new(addrs: impl IntoIterator<Item = (u64, SocketAddr)>) -> StaticResolver {
        StaticResolver {
            addrs: RwLock::new(addrs.into_iter().collect()),
        }
    }

    /// Sets (or moves) the address of `store_id`.
    pub fn set(&self, store_id: u64, addr: SocketAddr) {
        if let Ok(mut m) = self.addrs.write() {
            m.insert(store_id, addr);
        }
    }

    /// Forgets `store_id`.
    pub fn remove(&self, store_id: u64) {
        if let Ok(mut m) = self.addrs.write() {
            m.remove(&store_id);
        }
    }

    fn lookup(&self, store_id: u64) -> Result<SocketAddr> {
        self.addrs
            .read()
            .ok()
            .and_then(|m| m.get(&store_id).copied())
            .ok_or(Error::StoreUnknown { store: store_id })
    }
}

impl StoreResolver for StaticResolver {
    fn resolve(&self, store_id: u64) -> ResolveFuture<'_> {
        let r = self.lookup(store_id);
        Box::pin(async move { r })
    }
}

/// One core's cache of resolved addresses over a shared resolver. Not thread-safe: each
/// core has its own (no locks on the send path).
pub struct ResolverCache {
    resolver: Arc<dyn StoreResolver>,
    cache: RefCell<HashMap<u64, SocketAddr>>,
}

impl ResolverCache {
    /// An empty cache in front of `resolver`.
    pub fn new(resolver: Arc<dyn StoreResolver>) -> ResolverCache {
        ResolverCache {
            resolver,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// The cached address of `store_id`, else the resolver's (then cached).
    pub async fn resolve(&self, store_id: u64) -> Result<SocketAddr> {
        if let Some(a) = self.cached(store_id) {
            return Ok(a);
        }
        let addr = self.resolver.resolve(store_id).await?;
        self.cache.borrow_mut().insert(store_id, addr);
        Ok(addr)
    }

    /// The cached address, without asking the resolver.
    pub fn cached(&self, store_id: u64) -> Option<SocketAddr> {
        self.cache.borrow().get(&store_id).copied()
    }

    /// Forgets the address of `store_id` (a connection to it failed: it may have moved).
    pub fn invalidate(&self, store_id: u64) {
        self.cache.borrow_mut().remove(&store_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    /// Polls a future that never waits.
    fn now<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the future waited"),
        }
    }

    struct Counting {
        inner: StaticResolver,
        asked: AtomicUsize,
    }

    impl StoreResolver for Counting {
        fn resolve(&self, store_id: u64) -> ResolveFuture<'_> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.inner.resolve(store_id)
        }
    }

    #[test]
    fn the_cache_asks_once_until_invalidated() {
        let a: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2000".parse().expect("addr");
        let r = Arc::new(Counting {
            inner: StaticResolver::new([(2, a)]),
            asked: AtomicUsize::new(0),
        });
        let cache = ResolverCache::new(r.clone());
        assert_eq!(now(cache.resolve(2)).expect("known"), a);
        assert_eq!(now(cache.resolve(2)).expect("known"), a);
        assert_eq!(r.asked.load(Ordering::SeqCst), 1);
        // The store moved: the cache keeps the old address until a connect fails.
        r.inner.set(2, b);
        assert_eq!(now(cache.resolve(2)).expect("cached"), a);
        cache.invalidate(2);
        assert_eq!(now(cache.resolve(2)).expect("re-resolved"), b);
        assert_eq!(r.asked.load(Ordering::SeqCst), 2);
        assert!(matches!(
            now(cache.resolve(3)),
            Err(Error::StoreUnknown { store: 3 })
        ));
        r.inner.remove(2);
        cache.invalidate(2);
        assert!(now(cache.resolve(2)).is_err());
    }
}
