//! Single-flight bookkeeping shared by the steps that ask a server once for many concurrent
//! requests (token introspection, OPA): a map of calls in flight, each an `Arc` the waiters
//! share, and the rule for taking one out.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Takes `flight` out of `map` if the map still holds that very flight under `key` (a later
/// call's flight under the same key is left alone); whether it did.
pub fn retire<K, Q, V>(map: &Mutex<HashMap<K, Arc<V>>>, key: &Q, flight: &Arc<V>) -> bool
where
    K: Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    let Ok(mut m) = map.lock() else {
        return false;
    };
    if m.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        m.remove(key);
        true
    } else {
        false
    }
}

/// Retires a caller's flight when dropped, however the call ends: a request dropped while
/// the server is asked (a client that resets its stream) must not leave its flight in the map
/// for good.
pub struct Landing<'a, K, Q: ?Sized, V>
where
    K: Borrow<Q> + Hash + Eq,
    Q: Hash + Eq,
{
    pub map: &'a Mutex<HashMap<K, Arc<V>>>,
    pub key: &'a Q,
    pub flight: &'a Arc<V>,
}

impl<K, Q, V> Drop for Landing<'_, K, Q, V>
where
    K: Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    fn drop(&mut self) {
        retire(self.map, self.key, self.flight);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_flight_is_retired() {
        let map: Mutex<HashMap<Arc<str>, Arc<u8>>> = Mutex::new(HashMap::new());
        let first = Arc::new(1);
        map.lock().unwrap().insert(Arc::from("k"), first.clone());
        {
            let _landing = Landing {
                map: &map,
                key: "k",
                flight: &first,
            };
        }
        assert!(map.lock().unwrap().is_empty());
        let later = Arc::new(2);
        map.lock().unwrap().insert(Arc::from("k"), later.clone());
        assert!(!retire(&map, "k", &first), "a later flight is left alone");
        assert!(retire(&map, "k", &later));
    }
}
