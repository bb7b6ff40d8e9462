//! Batching shared by the two places commands queue for a round trip: the client's per-shard
//! queue (one `SubmitBatch` call carries many commands) and the leader's proposer (one log
//! entry, one fsync and one replication round carry many commands).
//!
//! The rule is the same in both: never wait to fill a batch. A batch leaves as soon as a slot
//! is free, carrying whatever queued while earlier batches were in flight, so batches grow with
//! load and an idle system answers one command at the speed of one.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Turns a queue into batches of at most `commands_max` items, with at most `in_flight_max`
/// batches out at once.
pub(crate) struct Batches<T> {
    rx: mpsc::Receiver<T>,
    in_flight: Arc<Semaphore>,
    commands_max: usize,
}

impl<T> Batches<T> {
    pub(crate) fn new(rx: mpsc::Receiver<T>, in_flight_max: usize, commands_max: usize) -> Self {
        assert!(in_flight_max > 0 && commands_max > 0, "a batcher must be able to send something");
        Self { rx, in_flight: Arc::new(Semaphore::new(in_flight_max)), commands_max }
    }

    /// Waits for a free slot, then for the first item, then takes everything else already
    /// queued (up to the limit). The permit is the slot: hold it until the batch is answered.
    /// `None` when the queue's senders are all gone and it is drained.
    ///
    /// Cancel-safe (so a loop may race it against its stop signal): the slot is taken before
    /// any item, and nothing is taken from the queue after the last await.
    pub(crate) async fn next(&mut self) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
        let permit = self.in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
        let first = self.rx.recv().await?;
        let mut batch = vec![first];
        while batch.len() < self.commands_max {
            match self.rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        Some((permit, batch))
    }
}

/// Answers each waiter of a batch: its own outcome, in order, or the batch's one error.
pub(crate) fn answer<O, E: Clone>(waiters: Vec<oneshot::Sender<Result<O, E>>>, result: Result<Vec<O>, E>) {
    match result {
        Ok(outcomes) => {
            assert_eq!(outcomes.len(), waiters.len(), "one outcome per command");
            for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                let _ = waiter.send(Ok(outcome));
            }
        }
        Err(e) => {
            for waiter in waiters {
                let _ = waiter.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_queued_up_to_the_limit_and_waits_for_a_slot() {
        let (tx, rx) = mpsc::channel(16);
        let mut batches = Batches::new(rx, 1, 3);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        let (permit, first) = batches.next().await.unwrap();
        assert_eq!(first, [0, 1, 2], "at most the limit");
        // The one slot is taken: the next batch waits until the first is answered, and
        // giving up on the wait loses nothing.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), batches.next()).await;
        assert!(waiting.is_err(), "no second batch while the only slot is held");
        drop(permit);
        let (permit, second) = batches.next().await.unwrap();
        assert_eq!(second, [3, 4]);
        drop(tx);
        drop(permit);
        assert!(batches.next().await.is_none(), "senders gone, queue drained");
    }

    #[tokio::test]
    async fn an_idle_queue_sends_one_command_at_once() {
        let (tx, rx) = mpsc::channel(4);
        let mut batches = Batches::new(rx, 2, 100);
        tx.send("only").await.unwrap();
        let (_p, batch) = batches.next().await.unwrap();
        assert_eq!(batch, ["only"], "no waiting to fill a batch");
    }

    #[test]
    fn answers_go_in_order_or_all_get_the_error() {
        let (a, mut ra) = oneshot::channel::<Result<u32, String>>();
        let (b, mut rb) = oneshot::channel();
        answer(vec![a, b], Ok(vec![1, 2]));
        assert_eq!((ra.try_recv().unwrap(), rb.try_recv().unwrap()), (Ok(1), Ok(2)));
        let (a, mut ra) = oneshot::channel::<Result<u32, String>>();
        let (b, mut rb) = oneshot::channel();
        answer(vec![a, b], Err("down".to_string()));
        assert_eq!((ra.try_recv().unwrap(), rb.try_recv().unwrap()), (Err("down".into()), Err("down".into())));
    }
}
