//! Group commit of registration writes: concurrent upserts, drains and deletes queue to
//! one writer task, which commits everything queued (up to [`MAX_BATCH`]) in one
//! transaction, so one fsync, and answers each caller only after that commit.
//!
//! Owns the bounded queue, the writer loop and the pure batching logic (rounds of
//! distinct keys). Knows no SQL (the backends' [`Store::commit`]) and no tables: what a
//! caller wants done in memory after its commit comes in as a hook.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{InstanceRecord, Store, StoreError, Upserted, bounded};

/// Most writes in one transaction. A batch forms from what is already queued when the
/// writer is free: an idle writer commits a lone write at once, a busy one takes up to
/// this many (like PostgreSQL's or etcd's group commit, with no added delay).
pub const MAX_BATCH: usize = 256;

/// Writes that may wait behind the batch being committed; a caller finding the queue
/// full waits for room (back-pressure), within its own timeout.
pub const QUEUE_DEPTH: usize = 16 * MAX_BATCH;

/// The longest one batch's transaction may take; past it every write in it fails.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// [`Store`]'s upsert: insert or replace the registration of `(service, address)`,
    /// keeping the existing id and registration time.
    Upsert(InstanceRecord),
    /// Mark an instance draining, with an optional paced evacuation rate.
    Drain {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// Connections per second, replacing an earlier rate.
        evacuate_per_sec: Option<u32>,
    },
    /// Delete instances by id.
    Delete {
        /// Service name.
        service: String,
        /// Instance ids.
        ids: Vec<String>,
    },
}

/// What one write did, in the order of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The id kept for the address, and whether the row is new.
    Upserted(Upserted),
    /// Whether the row existed.
    Drained(bool),
    /// How many rows went.
    Deleted(u64),
}

impl Done {
    /// The answer to an upsert.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when this answers another kind of write.
    pub fn upserted(self) -> Result<Upserted, StoreError> {
        match self {
            Done::Upserted(u) => Ok(u),
            other => Err(mismatch(&other)),
        }
    }

    /// The answer to a drain: whether the row existed.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when this answers another kind of write.
    pub fn drained(self) -> Result<bool, StoreError> {
        match self {
            Done::Drained(found) => Ok(found),
            other => Err(mismatch(&other)),
        }
    }

    /// The answer to a delete: how many rows went.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when this answers another kind of write.
    pub fn deleted(self) -> Result<u64, StoreError> {
        match self {
            Done::Deleted(gone) => Ok(gone),
            other => Err(mismatch(&other)),
        }
    }
}

fn mismatch(done: &Done) -> StoreError {
    StoreError::Corrupt {
        id: String::new(),
        reason: format!("the writer answered another kind of write: {done:?}"),
    }
}

/// Work a caller wants done once its write is committed (the registry's memory), run
/// by the writer in commit order before anyone is answered; dropped unrun when the
/// write is not committed.
pub type AfterCommit = Box<dyn FnOnce(&Done) + Send>;

struct Job {
    write: Write,
    then: Option<AfterCommit>,
    reply: oneshot::Sender<Result<Done, Arc<StoreError>>>,
}

/// A write in the queue; await it for its result, known once its batch committed
/// (or failed).
#[must_use = "a queued write is answered through its Pending"]
pub struct Pending {
    answer: oneshot::Receiver<Result<Done, Arc<StoreError>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    /// The write's result once its batch committed.
    ///
    /// # Errors
    /// The batch's error (shared by every write in it), or [`StoreError::Closed`] when
    /// the writer has stopped. Nothing of this write was stored.
    pub async fn done(self) -> Result<Done, StoreError> {
        match self.answer.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(err)) => Err(StoreError::Batch(err)),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// The queue to the one writer of a store. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("queued", &(QUEUE_DEPTH - self.queue.capacity()))
            .finish()
    }
}

impl GroupCommit {
    /// Starts the writer of `store` (a task on the current tokio runtime); it stops
    /// when every handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(writer(store, jobs));
        GroupCommit { queue }
    }

    /// Queues `write`, waiting for room while the queue is full; `then` runs after
    /// its commit, in commit order. Writes queued by one caller after another are
    /// committed, and their hooks run, in that order.
    ///
    /// Cancel-safe: a caller that stops waiting before its batch begins has its write
    /// dropped, neither committed nor its hook run; once the batch began, the write
    /// is committed (or fails) with the others and its hook runs as for any.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the writer has stopped; nothing was queued.
    pub async fn submit(
        &self,
        write: Write,
        then: Option<AfterCommit>,
    ) -> Result<Pending, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { write, then, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Pending { answer })
    }
}

/// The one writer: waits for a first write, takes whatever else is queued up to
/// [`MAX_BATCH`], commits them in one transaction, runs their hooks in order and
/// answers them.
async fn writer(store: Arc<dyn Store>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    // Ends when every sender is gone (0 received means the channel closed).
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that gave up (timed out, disconnected) before its batch began was
        // answered 503: its write must not land after all.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let writes: Vec<Write> = batch
            .iter_mut()
            .map(|job| {
                std::mem::replace(
                    &mut job.write,
                    Write::Delete {
                        service: String::new(),
                        ids: Vec::new(),
                    },
                )
            })
            .collect();
        let outcome = bounded(COMMIT_TIMEOUT, store.commit(&writes)).await;
        let outcome = outcome.and_then(|dones| {
            if dones.len() == batch.len() {
                Ok(dones)
            } else {
                Err(StoreError::Corrupt {
                    id: String::new(),
                    reason: format!("a batch of {} writes answered {}", batch.len(), dones.len()),
                })
            }
        });
        metrics::histogram!(crate::metrics::STORE_BATCH_SIZE).record(batch.len() as f64);
        match outcome {
            Ok(dones) => {
                for (job, done) in batch.drain(..).zip(dones) {
                    if let Some(then) = job.then {
                        then(&done);
                    }
                    let _ = job.reply.send(Ok(done));
                }
            }
            Err(err) => {
                tracing::debug!(%err, writes = batch.len(), elapsed = ?started.elapsed(), "store batch failed");
                let err = Arc::new(err);
                for job in batch.drain(..) {
                    // The hook goes first: what it holds is released before the caller
                    // hears, as when it runs.
                    drop(job.then);
                    let _ = job.reply.send(Err(Arc::clone(&err)));
                }
            }
        }
    }
}

/// Splits a run of upserts into rounds in which every `(service, address)` occurs at
/// most once, so each round can be one multi-row statement (PostgreSQL refuses to
/// touch a row twice in one statement, and one row per key makes the answers easy to
/// match). Returns, per round, the indices into `records`, each round in input order.
/// The `k`-th write of a key goes to round `k`, so a key's writes stay in order and
/// only writes of different keys (different rows) change places.
pub fn rounds(records: &[&InstanceRecord]) -> Vec<Vec<usize>> {
    let mut seen: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::with_capacity(records.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let n = seen
            .entry((r.service.as_str(), r.address.as_str()))
            .or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds
}

/// The answers of one round's statement, `(id, service, address, registered_at_ms)`
/// per returned row, matched back to the round's records: the row returned for a key
/// belongs to the record of that key, which is new when the kept id is the one it
/// proposed (ids are fresh and random; a conflict keeps the stored one).
///
/// # Errors
/// [`StoreError::Corrupt`] when a record got no row.
pub fn match_round(
    records: &[&InstanceRecord],
    round: &[usize],
    returned: Vec<(String, String, String, u64)>,
) -> Result<Vec<(usize, Upserted)>, StoreError> {
    let mut by_key: std::collections::HashMap<(String, String), (String, u64)> = returned
        .into_iter()
        .map(|(id, service, address, at)| ((service, address), (id, at)))
        .collect();
    round
        .iter()
        .map(|&i| {
            let r = records[i];
            let (id, registered_at_ms) = by_key
                .remove(&(r.service.clone(), r.address.clone()))
                .ok_or_else(|| StoreError::Corrupt {
                    id: r.id.clone(),
                    reason: "the upsert returned no row".to_owned(),
                })?;
            Ok((
                i,
                Upserted {
                    created: id == r.id,
                    id,
                    registered_at_ms,
                },
            ))
        })
        .collect()
}

/// Runs `writes` in order through a backend's three statements, grouping consecutive
/// upserts into [`rounds`]: the one place the order of a batch is decided, shared by
/// both backends.
///
/// # Errors
/// The first statement's error; the caller rolls the whole batch back.
pub async fn run_in_order<C: ?Sized + Send, S: Statements<C>>(
    conn: &mut C,
    writes: &[Write],
    ops: &S,
) -> Result<Vec<Done>, StoreError> {
    let mut dones: Vec<Option<Done>> = vec![None; writes.len()];
    let mut i = 0;
    while i < writes.len() {
        match &writes[i] {
            Write::Upsert(_) => {
                let start = i;
                let mut run: Vec<&InstanceRecord> = Vec::new();
                while let Some(Write::Upsert(r)) = writes.get(i) {
                    run.push(r);
                    i += 1;
                }
                for round in rounds(&run) {
                    let records: Vec<&InstanceRecord> = round.iter().map(|&k| run[k]).collect();
                    let returned = ops.upsert_round(conn, &records).await?;
                    for (k, upserted) in match_round(&run, &round, returned)? {
                        dones[start + k] = Some(Done::Upserted(upserted));
                    }
                }
            }
            Write::Drain {
                service,
                id,
                evacuate_per_sec,
            } => {
                let found = ops.drain(conn, service, id, *evacuate_per_sec).await?;
                dones[i] = Some(Done::Drained(found));
                i += 1;
            }
            Write::Delete { service, ids } => {
                let gone = if ids.is_empty() {
                    0
                } else {
                    ops.delete(conn, service, ids).await?
                };
                dones[i] = Some(Done::Deleted(gone));
                i += 1;
            }
        }
    }
    Ok(dones
        .into_iter()
        .map(|d| d.expect("every write answered"))
        .collect())
}

/// A backend's statements inside the batch's open transaction on `C`.
#[async_trait::async_trait]
pub trait Statements<C: ?Sized + Send>: Send + Sync {
    /// Upserts records of distinct keys in one statement; answers
    /// `(id, service, address, registered_at_ms)` per row, in any order.
    async fn upsert_round(
        &self,
        conn: &mut C,
        records: &[&InstanceRecord],
    ) -> Result<Vec<(String, String, String, u64)>, StoreError>;

    /// Marks one instance draining; whether it existed.
    async fn drain(
        &self,
        conn: &mut C,
        service: &str,
        id: &str,
        evacuate_per_sec: Option<u32>,
    ) -> Result<bool, StoreError>;

    /// Deletes instances by id; how many went.
    async fn delete(&self, conn: &mut C, service: &str, ids: &[String]) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::BeatRecord;

    /// A store whose commits wait for a permit (so writes pile up behind the first),
    /// record each batch, and fail while `failing` is set.
    #[derive(Default)]
    struct Fake {
        gate: Option<Arc<Semaphore>>,
        batches: Mutex<Vec<usize>>,
        failing: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for Fake {
        async fn commit(&self, writes: &[Write]) -> Result<Vec<Done>, StoreError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("open").forget();
            }
            self.batches.lock().unwrap().push(writes.len());
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Timeout(Duration::from_secs(1)));
            }
            Ok(writes
                .iter()
                .map(|w| match w {
                    Write::Upsert(r) => Done::Upserted(Upserted {
                        id: r.id.clone(),
                        created: true,
                        registered_at_ms: r.registered_at_ms,
                    }),
                    Write::Drain { .. } => Done::Drained(true),
                    Write::Delete { ids, .. } => Done::Deleted(ids.len() as u64),
                })
                .collect())
        }
        async fn save_beats(&self, _: &[BeatRecord]) -> Result<(), StoreError> {
            Ok(())
        }
        async fn load_all(&self) -> Result<Vec<InstanceRecord>, StoreError> {
            Ok(Vec::new())
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn probe_write(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn close(&self) {}
    }

    /// Queues upserts `from..to` whose hooks log their index into `ran`.
    async fn queue_many(
        writer: &GroupCommit,
        (from, to): (usize, usize),
        ran: &Arc<Mutex<Vec<usize>>>,
    ) -> Vec<Pending> {
        let mut pending = Vec::new();
        for i in from..to {
            let ran = Arc::clone(ran);
            let then: AfterCommit = Box::new(move |_| ran.lock().unwrap().push(i));
            let w = Write::Upsert(record(&format!("id{i}"), "s", &format!("10.0.0.1:{i}")));
            pending.push(writer.submit(w, Some(then)).await.expect("queued"));
        }
        pending
    }

    #[tokio::test]
    async fn writes_queued_behind_a_commit_share_the_next_one_and_hooks_run_in_order() {
        let gate = Arc::new(Semaphore::new(0));
        let fake = Arc::new(Fake {
            gate: Some(Arc::clone(&gate)),
            ..Fake::default()
        });
        let writer = GroupCommit::start(fake.clone());
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut pending = queue_many(&writer, (0, 1), &ran).await;
        // An idle writer takes the first write alone, at once (no waiting for company).
        for _ in 0..1_000 {
            if writer.queue.capacity() == QUEUE_DEPTH {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            writer.queue.capacity(),
            QUEUE_DEPTH,
            "the writer took the first"
        );
        // 300 more queue while it commits: they go in two batches, 256 and 44.
        pending.extend(queue_many(&writer, (1, 301), &ran).await);
        gate.add_permits(3);
        for (i, p) in pending.into_iter().enumerate() {
            let done = p.done().await.expect("committed").upserted().unwrap();
            assert_eq!(done.id, format!("id{i}"), "each caller gets its own answer");
        }
        assert_eq!(
            *fake.batches.lock().unwrap(),
            vec![1, MAX_BATCH, 300 - MAX_BATCH]
        );
        assert_eq!(*ran.lock().unwrap(), (0..301).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failed_batch_answers_every_write_in_it_with_the_error_and_runs_no_hook() {
        let gate = Arc::new(Semaphore::new(0));
        let fake = Arc::new(Fake {
            gate: Some(Arc::clone(&gate)),
            ..Fake::default()
        });
        fake.failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let writer = GroupCommit::start(fake.clone());
        let ran = Arc::new(Mutex::new(Vec::new()));
        let pending = queue_many(&writer, (0, 50), &ran).await;
        gate.add_permits(1);
        for p in pending {
            assert!(matches!(p.done().await, Err(StoreError::Batch(_))));
        }
        assert_eq!(*fake.batches.lock().unwrap(), vec![50]);
        assert!(
            ran.lock().unwrap().is_empty(),
            "no hook of a failed batch runs"
        );
        // The next batch commits again.
        fake.failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let pending = queue_many(&writer, (50, 52), &ran).await;
        gate.add_permits(1);
        for p in pending {
            p.done().await.expect("committed");
        }
        assert_eq!(*ran.lock().unwrap(), vec![50, 51]);
    }

    #[tokio::test]
    async fn a_write_whose_caller_gave_up_before_its_batch_is_not_committed() {
        let gate = Arc::new(Semaphore::new(0));
        let fake = Arc::new(Fake {
            gate: Some(Arc::clone(&gate)),
            ..Fake::default()
        });
        let writer = GroupCommit::start(fake.clone());
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut pending = queue_many(&writer, (0, 3), &ran).await;
        // The first is being committed (or will be); the third's caller goes away.
        drop(pending.pop());
        gate.add_permits(2);
        for p in pending {
            p.done().await.expect("committed");
        }
        let committed: usize = fake.batches.lock().unwrap().iter().sum();
        assert_eq!(committed, 2);
        assert_eq!(*ran.lock().unwrap(), vec![0, 1]);
    }

    fn record(id: &str, service: &str, address: &str) -> InstanceRecord {
        InstanceRecord {
            id: id.to_owned(),
            service: service.to_owned(),
            address: address.to_owned(),
            weight: 1,
            max_connections: None,
            zone: None,
            tags_json: "[]".to_owned(),
            metadata_json: "{}".to_owned(),
            ttl_secs: 30,
            lease_hash: String::new(),
            draining: false,
            evacuate_per_sec: None,
            connections: 0,
            registered_at_ms: 7,
            last_heartbeat_ms: 7,
        }
    }

    #[test]
    fn distinct_keys_make_one_round_in_order() {
        let rs = [
            record("a", "s", "1:1"),
            record("b", "s", "1:2"),
            record("c", "t", "1:1"),
        ];
        let refs: Vec<&InstanceRecord> = rs.iter().collect();
        assert_eq!(rounds(&refs), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn a_key_written_again_goes_to_the_next_round() {
        let rs = [
            record("a", "s", "1:1"),
            record("b", "s", "1:2"),
            record("c", "s", "1:1"),
            record("d", "s", "1:1"),
            record("e", "s", "1:3"),
        ];
        let refs: Vec<&InstanceRecord> = rs.iter().collect();
        assert_eq!(rounds(&refs), vec![vec![0, 1, 4], vec![2], vec![3]]);
        assert!(rounds(&[]).is_empty());
    }

    #[test]
    fn answers_match_by_key_and_tell_new_rows_by_the_proposed_id() {
        let rs = [record("a", "s", "1:1"), record("b", "s", "1:2")];
        let refs: Vec<&InstanceRecord> = rs.iter().collect();
        // Returned out of order; 1:2 was already registered as "old".
        let returned = vec![
            ("old".to_owned(), "s".to_owned(), "1:2".to_owned(), 3),
            ("a".to_owned(), "s".to_owned(), "1:1".to_owned(), 7),
        ];
        let matched = match_round(&refs, &[0, 1], returned).unwrap();
        assert_eq!(
            matched,
            vec![
                (
                    0,
                    Upserted {
                        id: "a".to_owned(),
                        created: true,
                        registered_at_ms: 7
                    }
                ),
                (
                    1,
                    Upserted {
                        id: "old".to_owned(),
                        created: false,
                        registered_at_ms: 3
                    }
                ),
            ]
        );
        let missing = match_round(&refs, &[0, 1], vec![]);
        assert!(matches!(missing, Err(StoreError::Corrupt { .. })));
    }
}
