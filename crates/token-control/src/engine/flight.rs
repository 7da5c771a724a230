//! Single-flight: concurrent callers of one key share one run of the work (one Redis attempt
//! and at most one WeChat call per replica, however many callers wait).
//!
//! Guarantee: while a run of a key is in flight, every caller of that key joins it instead of
//! starting another; the run completes even when every caller gave up. How: the work runs in a
//! task of its own (so a caller that stops waiting — its deadline passed, its request was
//! dropped — neither cancels it for the others nor abandons what it holds: a refresh lease, a
//! reconcile's fence), shared as a [`Shared`] future, and the task removes the key from the table
//! itself when it is done. The table's lock is held only to look up or insert, never across an
//! await.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::task::JoinError;

type Flight<V> = Shared<BoxFuture<'static, V>>;

/// The runs in flight, by key.
pub(crate) struct SingleFlight<K, V> {
    flights: Arc<Mutex<HashMap<K, Flight<V>>>>,
    /// The answer of a run whose task did not complete (it panicked, or the runtime is
    /// shutting down).
    died: fn(JoinError) -> V,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// An empty table; `died` answers for a run whose task did not complete.
    pub(crate) fn new(died: fn(JoinError) -> V) -> Self {
        Self {
            flights: Arc::default(),
            died,
        }
    }

    /// Joins the run of `key` in flight, or starts `work` as that run (a joiner's `work` is
    /// dropped unpolled), and waits for its answer until `deadline`: `None` when the deadline
    /// came first (the run goes on).
    pub(crate) async fn join(
        &self,
        key: &K,
        deadline: Instant,
        work: BoxFuture<'static, V>,
    ) -> Option<V> {
        let flight = {
            let mut flights = lock(&self.flights);
            match flights.get(key) {
                Some(f) => f.clone(),
                None => {
                    let (table, k, died) = (Arc::clone(&self.flights), key.clone(), self.died);
                    let task = tokio::spawn(async move {
                        let answer = work.await;
                        lock(&table).remove(&k);
                        answer
                    });
                    let f = async move { task.await.unwrap_or_else(died) }
                        .boxed()
                        .shared();
                    flights.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        tokio::time::timeout_at(deadline.into(), flight).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn callers_of_one_key_share_one_run_which_outlives_them() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new(|_| 0);
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let work = |runs: Arc<AtomicUsize>, released: tokio::sync::oneshot::Receiver<()>| {
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = released.await;
                7
            }
            .boxed()
        };
        // A caller that gives up at once leaves the run going.
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            flights.join(&"k", soon, work(runs.clone(), released)).await,
            None
        );
        let (_unused, never) = tokio::sync::oneshot::channel::<()>();
        let later = Instant::now() + Duration::from_secs(5);
        let joined = flights.join(&"k", later, work(runs.clone(), never));
        release.send(()).unwrap();
        assert_eq!(joined.await, Some(7));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the second caller joined the first run"
        );
        // Done: the key is free for a new run.
        let (go, gone) = tokio::sync::oneshot::channel::<()>();
        go.send(()).unwrap();
        assert_eq!(
            flights.join(&"k", later, work(runs.clone(), gone)).await,
            Some(7)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
