//! The single writer thread. Requests queue on a channel; the thread takes the first
//! and then, one after another, whatever is queued by the time the one before has run
//! (up to a count and a time bound), each in its own SAVEPOINT inside one
//! `BEGIN IMMEDIATE … COMMIT`, and only after the commit — one fsync for the whole
//! group — answers every request. A request whose closure fails is rolled back to its
//! savepoint without disturbing the others in the group.
//!
//! The queue is bounded ([`WriteQueue`]): when the writer falls behind, a request waits
//! a short while for room and is then refused (RESOURCE_EXHAUSTED, nothing written)
//! instead of piling up in memory behind a disk that cannot keep up.
//!
//! Every job says what it is for ([`JobKind`]), and the writer keeps per kind how long
//! its jobs ran and how many rows the largest wrote, so that an operator sees which
//! kind holds the writer. Background jobs (the steps of a clearing round) wait in a
//! lane of their own: the writer runs one, alone in its transaction, only when no
//! request is queued or when it has waited [`BACKGROUND_MAX_WAIT`], so that the steps
//! of a round over millions of entries yield to settlements instead of competing with
//! them. While requests are being served, the lane also rests after each job for
//! [`BACKGROUND_REST`] times as long as the job took: a round then takes a bounded
//! share of the writer's (and the host's) time instead of every idle moment of it,
//! and on an idle node runs at full speed.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{Error, Result};

/// Most requests committed together; bounds the latency of the first one in a group.
const MAX_GROUP: usize = 256;

/// A group takes further requests only while it has run for less than this, so that a
/// steady stream of arrivals cannot hold back the answers of its first requests for
/// long (about what running 256 queued requests used to take).
const GROUP_RUN_BUDGET: std::time::Duration = std::time::Duration::from_millis(20);

/// Longest a background job waits while requests keep the queue busy: under a
/// saturating load the steps of a round still move, at most one per this interval.
pub const BACKGROUND_MAX_WAIT: Duration = Duration::from_millis(100);

/// While requests are being served, the background lane rests after a job (and its
/// commit) for this many times as long as the job took, so that the steps of a round
/// take at most about a fifth of the writer's time under load: settlements are slowed
/// by the share of the cores the round takes, not only by the step they wait for.
pub const BACKGROUND_REST: u32 = 4;

/// A job that ran longer than this is counted as slow for its kind (what an operator
/// alarms on: a writer job holding every settlement behind it).
pub const SLOW_JOB: Duration = Duration::from_millis(50);

/// What a writer job is for: the writer's time and the largest job are kept per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// A treatment node's settlement: intent, outcome, cancel (Settle, Cancel, 冲正).
    Settle,
    /// A home node's commit or reversal of claims from a treatment node (a part of
    /// a CommitClaims batch: a bounded number of its claims).
    ClaimCommit,
    /// The outbox of provisional settlements: claims pushed later, retries.
    Outbox,
    /// One step of freezing a clearing round's ledger entries (background).
    FreezeStep,
    /// One step of marking a cleared round's entries cleared, or of letting go those
    /// of a released round (background).
    ClearStep,
    /// The rest of clearing: confirmation, exclusions, the round marked cleared.
    Clearing,
    /// One step of the retention purge of expired request records.
    Purge,
    /// An audit entry of a peer's read.
    Audit,
    /// An operator's request (AdminService, funds, NHSA files).
    Admin,
    /// Anything else (visits, fee lines, the coordinator's and directory's stores).
    Other,
}

impl JobKind {
    /// Every kind, in the order of [`WriterTotals::kinds`].
    pub const ALL: [JobKind; 10] = [
        JobKind::Settle,
        JobKind::ClaimCommit,
        JobKind::Outbox,
        JobKind::FreezeStep,
        JobKind::ClearStep,
        JobKind::Clearing,
        JobKind::Purge,
        JobKind::Audit,
        JobKind::Admin,
        JobKind::Other,
    ];

    /// The metrics' label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Settle => "settle",
            JobKind::ClaimCommit => "claim_commit",
            JobKind::Outbox => "outbox",
            JobKind::FreezeStep => "freeze_step",
            JobKind::ClearStep => "clear_step",
            JobKind::Clearing => "clearing",
            JobKind::Purge => "purge",
            JobKind::Audit => "audit",
            JobKind::Admin => "admin",
            JobKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many requests may wait for the writer, and how long a request waits for room
/// when the queue is full before it is refused.
#[derive(Debug, Clone)]
pub struct WriteQueue {
    /// Requests queued behind the one running (at least 1).
    pub capacity: usize,
    /// How long a request waits for room in a full queue.
    pub full_wait: Duration,
    /// While set, the writer runs nothing: the next request it takes waits, and the
    /// queue fills behind it, as behind a writer stuck on a slow disk (tests).
    pub hold: Arc<std::sync::atomic::AtomicBool>,
    /// Set by the writer while it holds a request it took (tests): with the queue's
    /// depth, a test knows the writer is occupied and what waits behind it, rather than
    /// guessing from the depth alone (a request sent but not yet taken counts as queued).
    pub holding: Arc<std::sync::atomic::AtomicBool>,
}

/// Default of [`WriteQueue::capacity`]: many groups' worth, so that only a writer that
/// has fallen behind for a while fills it.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16 * MAX_GROUP;
/// Default of [`WriteQueue::full_wait`]: a passing burst is absorbed, a writer that has
/// fallen behind is reported at once rather than after the caller's deadline.
pub const DEFAULT_FULL_WAIT: Duration = Duration::from_millis(250);

impl Default for WriteQueue {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_QUEUE_CAPACITY,
            full_wait: DEFAULT_FULL_WAIT,
            hold: Arc::default(),
            holding: Arc::default(),
        }
    }
}

/// What a job leaves behind after running: a function that delivers its answer once the
/// group's commit outcome is known.
type Completion = Box<dyn FnOnce(Ended<'_>) + Send>;

/// How the transaction a job ran in ended.
#[derive(Clone, Copy)]
enum Ended<'a> {
    Committed,
    /// Certainly not saved: SQLite rolled the transaction back by itself.
    RolledBack(&'a str),
    /// COMMIT failed. Not known to be unsaved: an I/O error may strike after the log
    /// holds the whole commit, which recovery then brings back.
    CommitFailed(&'a str),
}
type Job = Box<dyn FnOnce(&Connection) -> Completion + Send>;

/// Which queue a job goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The bounded queue of requests.
    Bounded,
    /// Past the bound (audit entries of answered reads).
    Unbounded,
    /// The background lane.
    Background,
}

/// What the writer thread receives: a request, or the order to close the store.
enum Msg {
    Job(Job),
    /// Stop taking requests, run the closing step and answer whether it succeeded.
    Close(oneshot::Sender<bool>),
}

/// The writer's last step before its connection closes, whether it was told to close
/// or every handle was dropped: for the store, a complete checkpoint of the log and
/// the running marker removed (see `super::integrity`). Given whether the store was
/// found damaged; true when it succeeded.
pub type Closing = Box<dyn FnOnce(&Connection, bool) -> bool + Send>;

/// Whether an error is SQLite reporting a damaged file (`SQLITE_CORRUPT`,
/// `SQLITE_NOTADB`), as the store's errors carry it in their message.
fn corruption(e: &Error) -> Option<&str> {
    match e {
        Error::Internal(m) => corruption_message(m).then_some(m.as_str()),
        _ => None,
    }
}

fn corruption_message(m: &str) -> bool {
    m.contains("database disk image is malformed") || m.contains("file is not a database")
}

/// Upkeep the writer runs between transactions, once per window (`WINDOW`): settings
/// that follow the store's size.
pub type Upkeep = fn(&Connection) -> rusqlite::Result<()>;

/// The sending side of the writer's queue: a channel bounded by a count of the
/// messages in it. Not crossbeam's bounded channel, which keeps its messages until the
/// last sender goes: here they are dropped — answering their requesters — as soon as
/// the writer stops.
#[derive(Clone)]
struct QueueTx {
    tx: Sender<Msg>,
    /// The background lane (see the module's header): few jobs, unbounded.
    bg: Sender<Msg>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl QueueTx {
    fn try_send(&self, msg: Msg) -> std::result::Result<(), TrySendError<Msg>> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(msg));
        }
        self.tx.send(msg).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(e.0)
        })
    }

    /// Sends past the bound, for the few jobs that must not be refused for load.
    fn send_always(&self, msg: Msg) -> std::result::Result<(), Msg> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(msg).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }

    fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// The writer's side of the queue: taking a message makes room for another.
struct QueueRx {
    rx: Receiver<Msg>,
    bg: Receiver<Msg>,
    queued: Arc<AtomicUsize>,
}

impl QueueRx {
    fn taken<E>(&self, m: std::result::Result<Msg, E>) -> std::result::Result<Msg, E> {
        if m.is_ok() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        m
    }

    fn try_recv(&self) -> std::result::Result<Msg, TryRecvError> {
        self.taken(self.rx.try_recv())
    }

    fn recv_timeout(
        &self,
        wait: Duration,
    ) -> std::result::Result<Msg, crossbeam_channel::RecvTimeoutError> {
        self.taken(self.rx.recv_timeout(wait))
    }
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: QueueTx,
    totals: Arc<Totals>,
    /// Set at the first sign of a damaged file: what SQLite said. From then on the
    /// writer runs nothing, so that a node never goes on acknowledging writes into a
    /// store whose pages are garbage.
    damaged: Arc<OnceLock<String>>,
    full_wait: Duration,
}

/// What the writer has done since it started, kept for the node's metrics: whether
/// requests share transactions (jobs per transaction) and how long the commits take.
#[derive(Default)]
struct Totals {
    transactions: AtomicU64,
    jobs: AtomicU64,
    run_micros: AtomicU64,
    commit_micros: AtomicU64,
    /// The longest transaction (its jobs run and committed): how long the writer was
    /// held at once, which a clearing step or a purge must keep short.
    longest_micros: AtomicU64,
    /// Requests refused because the queue stayed full.
    rejected: AtomicU64,
    /// The longest COMMIT (the log written and synced, an automatic checkpoint
    /// included when the commit triggered one).
    longest_commit_micros: AtomicU64,
    kinds: [KindTotals; JobKind::ALL.len()],
}

/// What the jobs of one kind did.
#[derive(Default)]
struct KindTotals {
    jobs: AtomicU64,
    micros: AtomicU64,
    longest_micros: AtomicU64,
    slow: AtomicU64,
    most_rows: AtomicU64,
}

impl KindTotals {
    fn record(&self, ran: Duration, rows: u64) {
        let micros = u64::try_from(ran.as_micros()).unwrap_or(u64::MAX);
        self.jobs.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(micros, Ordering::Relaxed);
        self.longest_micros.fetch_max(micros, Ordering::Relaxed);
        if ran > SLOW_JOB {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.most_rows.fetch_max(rows, Ordering::Relaxed);
    }

    fn read(&self) -> KindReading {
        KindReading {
            jobs: self.jobs.load(Ordering::Relaxed),
            run: Duration::from_micros(self.micros.load(Ordering::Relaxed)),
            longest: Duration::from_micros(self.longest_micros.load(Ordering::Relaxed)),
            slow: self.slow.load(Ordering::Relaxed),
            most_rows: self.most_rows.load(Ordering::Relaxed),
        }
    }
}

/// A reading of the jobs of one kind (see [`WriterTotals::kinds`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindReading {
    /// Jobs run.
    pub jobs: u64,
    /// Time spent running them (their commits not included: a commit serves a group).
    pub run: Duration,
    /// The longest run of one job.
    pub longest: Duration,
    /// Jobs that ran longer than [`SLOW_JOB`].
    pub slow: u64,
    /// The most rows one job inserted, updated or deleted.
    pub most_rows: u64,
}

/// A reading of the writer's totals (see [`Writer::totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterTotals {
    /// Transactions begun (committed, failed at their commit, or rolled back by SQLite).
    pub transactions: u64,
    /// Requests run in them.
    pub jobs: u64,
    /// Time spent running the requests.
    pub run: std::time::Duration,
    /// Time spent in COMMIT (the write-ahead log written and synced to disk).
    pub commit: std::time::Duration,
    /// Requests waiting for the writer now.
    pub queued: u64,
    /// Requests refused because the queue stayed full (see [`WriteQueue`]).
    pub rejected: u64,
    /// The longest transaction since the start, from its first job to its commit.
    pub longest: std::time::Duration,
    /// The longest COMMIT since the start.
    pub longest_commit: std::time::Duration,
    /// Per kind of job, in the order of [`JobKind::ALL`].
    pub kinds: [KindReading; JobKind::ALL.len()],
}

impl WriterTotals {
    /// The reading of the jobs of `kind`.
    #[must_use]
    pub fn kind(&self, kind: JobKind) -> KindReading {
        self.kinds[kind.index()]
    }
}

impl Writer {
    /// Starts the thread that owns `conn`. The thread ends when every handle is dropped.
    /// `closing` runs once the writer stops, just before the connection closes.
    pub fn start(
        conn: Connection,
        upkeep: Upkeep,
        queue: WriteQueue,
        closing: Closing,
    ) -> Result<Self> {
        Self::start_with_budget(conn, upkeep, GROUP_RUN_BUDGET, queue, closing)
    }

    /// [`Writer::start`] with another run budget for a group (tests).
    fn start_with_budget(
        conn: Connection,
        upkeep: Upkeep,
        budget: std::time::Duration,
        queue: WriteQueue,
        closing: Closing,
    ) -> Result<Self> {
        let capacity = queue.capacity.max(1);
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        let (bg_tx, bg_rx) = crossbeam_channel::unbounded::<Msg>();
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = (
            QueueTx {
                tx,
                bg: bg_tx,
                queued: Arc::clone(&queued),
                capacity,
            },
            QueueRx {
                rx,
                bg: bg_rx,
                queued,
            },
        );
        let hold = (queue.hold, queue.holding);
        let totals = Arc::new(Totals::default());
        let kept = Arc::clone(&totals);
        let damaged = Arc::new(OnceLock::new());
        let seen = Arc::clone(&damaged);
        let checkpointer = super::checkpointer::Checkpointer::start(&conn);
        thread::Builder::new()
            .name("yidi-store-writer".into())
            .spawn(move || {
                let closer = run_loop(&conn, &rx, upkeep, budget, &kept, &seen, &hold);
                if let Some(c) = checkpointer {
                    c.stop();
                }
                // Requests still queued are dropped unanswered (UNAVAILABLE, nothing
                // written) rather than run after the close; the count goes with them,
                // so that later requests are told the writer stopped, not to retry.
                rx.queued.store(0, Ordering::Release);
                drop(rx);
                let closed = closing(&conn, seen.get().is_some());
                drop(conn);
                if let Some(reply) = closer {
                    let _ = reply.send(closed);
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the store writer: {e}")))?;
        Ok(Self {
            tx,
            totals,
            damaged,
            full_wait: queue.full_wait,
        })
    }

    /// Records that the store's file is damaged (SQLite said `what`) if `e` says so;
    /// for errors met outside the writer (reads).
    pub fn note_error(&self, e: &Error) {
        if let Some(what) = corruption(e) {
            note_damage(&self.damaged, what);
        }
    }

    /// Stops the writer: what is running commits, what is queued behind the close is
    /// refused, the closing step runs and the connection closes. Resolves to whether
    /// the closing step succeeded (false too when the writer had already stopped).
    pub async fn close(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        let mut msg = Msg::Close(reply);
        // Waits for room however long it takes: the writer drains the queue ahead of it.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    tokio::time::sleep(QUEUE_POLL).await;
                }
            }
        }
        answer.await.unwrap_or(false)
    }

    /// What the writer has done since it started.
    #[must_use]
    pub fn totals(&self) -> WriterTotals {
        let t = &self.totals;
        WriterTotals {
            transactions: t.transactions.load(Ordering::Relaxed),
            jobs: t.jobs.load(Ordering::Relaxed),
            run: std::time::Duration::from_micros(t.run_micros.load(Ordering::Relaxed)),
            commit: std::time::Duration::from_micros(t.commit_micros.load(Ordering::Relaxed)),
            queued: self.tx.len() as u64,
            rejected: t.rejected.load(Ordering::Relaxed),
            longest: std::time::Duration::from_micros(t.longest_micros.load(Ordering::Relaxed)),
            longest_commit: std::time::Duration::from_micros(
                t.longest_commit_micros.load(Ordering::Relaxed),
            ),
            kinds: std::array::from_fn(|i| t.kinds[i].read()),
        }
    }

    /// Runs `f` in the next group transaction and waits for the durable commit.
    pub async fn run<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.submit(f).await
    }

    /// [`Self::run`] of a job of `kind`.
    pub async fn run_as<R, F>(&self, kind: JobKind, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.submit_to_queue(kind, f, Lane::Bounded).await
    }

    /// Queues `f` now (before returning) and gives a future of its outcome, for a
    /// caller that must not wait for the commit but needs the job queued in order.
    /// When the queue is full, `f` waits (off the caller's task) for room for at most
    /// the queue's `full_wait`, and is then dropped unrun: the future answers
    /// RESOURCE_EXHAUSTED. Such a late job may queue behind later ones.
    pub fn submit<R, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.submit_to_queue(JobKind::Other, f, Lane::Bounded)
    }

    /// [`Self::submit`] of a job of `kind`.
    pub fn submit_as<R, F>(
        &self,
        kind: JobKind,
        f: F,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.submit_to_queue(kind, f, Lane::Bounded)
    }

    /// [`Self::submit`] past the queue's bound: for a job that records what was already
    /// done and answered (the audit entry of a peer's read), which a full queue must not
    /// lose. Such jobs are few and small: one per answered read.
    pub fn submit_unbounded<R, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.submit_to_queue(JobKind::Audit, f, Lane::Unbounded)
    }

    /// Queues `f` in the background lane: it runs alone in its transaction, when no
    /// request waits or after [`BACKGROUND_MAX_WAIT`] (see the module's header). For
    /// one step of a long task (a clearing round's freeze): the caller queues the next
    /// step once this one answered, so the lane holds one job per running task.
    pub fn submit_background<R, F>(
        &self,
        kind: JobKind,
        f: F,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.submit_to_queue(kind, f, Lane::Background)
    }

    fn submit_to_queue<R, F>(
        &self,
        kind: JobKind,
        f: F,
        lane: Lane,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<R>>();
        let damaged = Arc::clone(&self.damaged);
        let totals = Arc::clone(&self.totals);
        let job: Job = Box::new(move |conn: &Connection| {
            let (started, rows) = (std::time::Instant::now(), conn.total_changes());
            let outcome = match damaged.get() {
                Some(what) => Err(refusal(what)),
                None => run_in_savepoint(conn, f),
            };
            totals.kinds[kind.index()]
                .record(started.elapsed(), conn.total_changes().saturating_sub(rows));
            if let Err(e) = &outcome
                && let Some(what) = corruption(e)
            {
                note_damage(&damaged, what);
            }
            Box::new(move |ended: Ended<'_>| {
                let result = match (outcome, ended) {
                    (Err(e), _) => Err(e),
                    (Ok(v), Ended::Committed) => Ok(v),
                    (Ok(_), Ended::RolledBack(m)) => Err(Error::Unavailable(format!(
                        "store transaction failed, nothing was saved: {m}"
                    ))),
                    (Ok(_), Ended::CommitFailed(m)) => Err(Error::CommitUnknown(format!(
                        "the store could not confirm its commit ({m}); the request may or may not have been saved"
                    ))),
                };
                // The requester may have gone away (deadline); its answer is moot.
                let _ = reply.send(result);
            })
        });
        let refused = if lane == Lane::Bounded {
            self.enqueue(Msg::Job(job))
        } else {
            let sent = if lane == Lane::Background {
                self.tx.bg.send(Msg::Job(job)).map_err(|e| e.0)
            } else {
                self.tx.send_always(Msg::Job(job))
            };
            sent.err().map(|msg| {
                let (why, refused) = oneshot::channel();
                let _ = why.send(Error::Unavailable("store writer has stopped".into()));
                drop(msg);
                refused
            })
        };
        async move {
            match answer.await {
                Ok(result) => result,
                Err(_) => Err(refused.and_then(|mut r| r.try_recv().ok()).unwrap_or_else(|| {
                    Error::Unavailable(
                        "the store could not run the request (no transaction could begin, or the writer has stopped); nothing was written"
                            .into(),
                    )
                })),
            }
        }
    }

    /// Puts `msg` on the queue: at once when there is room, else from a task that waits
    /// up to `full_wait` for room. A message that never got in is dropped (its requester
    /// sees its reply channel closed), after the reason is put in the receiver returned.
    fn enqueue(&self, msg: Msg) -> Option<oneshot::Receiver<Error>> {
        let msg = match self.tx.try_send(msg) {
            Ok(()) => return None,
            Err(TrySendError::Disconnected(msg)) => msg,
            Err(TrySendError::Full(msg)) => msg,
        };
        let (why, refused) = oneshot::channel();
        let (tx, wait, capacity) = (self.tx.clone(), self.full_wait, self.tx.capacity);
        let totals = Arc::clone(&self.totals);
        // The reason goes first: dropping the message closes the requester's channel.
        let give_up = move |msg: Msg, gone: bool| {
            let reason = if gone {
                Error::Unavailable("store writer has stopped".into())
            } else {
                totals.rejected.fetch_add(1, Ordering::Relaxed);
                overloaded(capacity, wait)
            };
            let _ = why.send(reason);
            drop(msg);
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (a blocking tool): wait on this thread.
            let deadline = std::time::Instant::now() + wait;
            let mut msg = msg;
            loop {
                match tx.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Disconnected(back)) => {
                        give_up(back, true);
                        break;
                    }
                    Err(TrySendError::Full(back)) => msg = back,
                }
                if std::time::Instant::now() >= deadline {
                    give_up(msg, false);
                    break;
                }
                thread::sleep(QUEUE_POLL);
            }
            return Some(refused);
        };
        rt.spawn(async move {
            let deadline = tokio::time::Instant::now() + wait;
            let mut msg = msg;
            loop {
                match tx.try_send(msg) {
                    Ok(()) => return,
                    Err(TrySendError::Disconnected(back)) => return give_up(back, true),
                    Err(TrySendError::Full(back)) => msg = back,
                }
                if tokio::time::Instant::now() >= deadline {
                    return give_up(msg, false);
                }
                tokio::time::sleep(QUEUE_POLL).await;
            }
        });
        Some(refused)
    }
}

/// How often a request waiting for room in a full queue looks again.
const QUEUE_POLL: Duration = Duration::from_millis(1);

/// The answer to a request refused because the writer's queue stayed full.
fn overloaded(capacity: usize, waited: Duration) -> Error {
    Error::ResourceExhausted(format!(
        "node overloaded: its store's write queue stayed full (capacity {capacity}) for {} ms; nothing was written — retry after a short pause with the same request_id",
        waited.as_millis()
    ))
}

/// Records the first damage seen, loudly.
fn note_damage(damaged: &OnceLock<String>, what: &str) {
    if damaged.set(what.to_owned()).is_ok() {
        tracing::error!(error = %what, "the store's file is damaged; it takes no more writes. Stop the node and restore the store from a `yidi backup` copy");
    }
}

/// The answer to every write once the store was found damaged.
fn refusal(what: &str) -> Error {
    Error::Unavailable(format!(
        "the node's store is damaged ({what}) and takes no more writes; nothing was \
         written. The agency must restore it from a `yidi backup` copy"
    ))
}

/// Runs one fixed statement through the statement cache (parsed once, not per job).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn run_in_savepoint<R>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    exec(conn, "SAVEPOINT job")?;
    let out = match catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(out) => out,
        Err(_) => Err(Error::Internal(
            "a store operation panicked; it was rolled back".into(),
        )),
    };
    if out.is_ok() {
        if let Err(e) = exec(conn, "RELEASE job") {
            // The job is reported failed, so none of its changes may stay in the group.
            let _ = exec(conn, "ROLLBACK TO job");
            let _ = exec(conn, "RELEASE job");
            return Err(e.into());
        }
    } else {
        exec(conn, "ROLLBACK TO job")?;
        exec(conn, "RELEASE job")?;
    }
    out
}

/// Runs `f` in a savepoint of its own inside a job, for a job made of parts that must
/// fail alone (the claims of one CommitClaims): a failed part rolls back only its own
/// changes and the job goes on.
pub fn in_part<R>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    exec(conn, "SAVEPOINT part")?;
    let out = f(conn);
    if out.is_ok() {
        if let Err(e) = exec(conn, "RELEASE part") {
            let _ = exec(conn, "ROLLBACK TO part");
            let _ = exec(conn, "RELEASE part");
            return Err(e.into());
        }
    } else {
        exec(conn, "ROLLBACK TO part")?;
        exec(conn, "RELEASE part")?;
    }
    out
}

/// What the writer did over a window, logged at debug level: whether requests really
/// share transactions (jobs per commit) and where the thread's time goes.
#[derive(Default)]
struct Window {
    transactions: u64,
    jobs: u64,
    largest: usize,
    run: std::time::Duration,
    commit: std::time::Duration,
}

/// What the writer takes next.
enum Taken {
    Request(Msg),
    /// The waiting background job.
    Background,
}

/// How often the writer logs its window and runs its upkeep.
const WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs groups until told to close (returning the closer's reply channel) or until
/// every handle is dropped (returning None).
fn run_loop(
    conn: &Connection,
    rx: &QueueRx,
    upkeep: Upkeep,
    budget: std::time::Duration,
    totals: &Totals,
    damaged: &OnceLock<String>,
    (hold, holding): &(
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::atomic::AtomicBool>,
    ),
) -> Option<oneshot::Sender<bool>> {
    let mut window = Window::default();
    let mut since = std::time::Instant::now();
    let mut closer = None;
    // A background job taken from its lane, waiting for the queue to be empty, and
    // since when it may run (taken, or the end of the lane's rest if later).
    let mut background: Option<(Job, std::time::Instant)> = None;
    // The lane's rest: until when, after the last background job; and whether a
    // request has run since that job (an idle writer does not make the lane rest).
    let mut rest_until = std::time::Instant::now();
    let mut served = false;
    while closer.is_none() {
        if background.is_none()
            && let Ok(Msg::Job(job)) = rx.bg.try_recv()
        {
            background = Some((job, std::time::Instant::now()));
        }
        let first = match &background {
            Some((_, taken)) => {
                let since = (*taken).max(rest_until);
                let now = std::time::Instant::now();
                // Overdue: it runs now, whatever is queued.
                if now >= since + BACKGROUND_MAX_WAIT {
                    Taken::Background
                } else {
                    match rx.try_recv() {
                        Ok(m) => Taken::Request(m),
                        Err(TryRecvError::Empty) if !served || now >= since => Taken::Background,
                        // Resting: the next request, or the end of the rest.
                        Err(TryRecvError::Empty) => match rx.recv_timeout(since - now) {
                            Ok(m) => Taken::Request(m),
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                                return None;
                            }
                        },
                        Err(TryRecvError::Disconnected) => return None,
                    }
                }
            }
            None => crossbeam_channel::select! {
                recv(rx.rx) -> m => match rx.taken(m) {
                    Ok(m) => Taken::Request(m),
                    Err(_) => return None,
                },
                recv(rx.bg) -> m => match m {
                    Ok(Msg::Job(job)) => {
                        background = Some((job, std::time::Instant::now()));
                        continue;
                    }
                    // Only requests close; the lane ends with the queue.
                    Ok(Msg::Close(_)) | Err(_) => continue,
                },
            },
        };
        // Held (tests): the request just taken waits, and the queue fills behind it.
        if hold.load(Ordering::SeqCst) {
            holding.store(true, Ordering::SeqCst);
            while hold.load(Ordering::SeqCst) {
                thread::sleep(QUEUE_POLL);
            }
            holding.store(false, Ordering::SeqCst);
        }
        // A background job runs alone: requests queued meanwhile wait for its commit
        // only, never for a group's budget spent on it.
        let (first, alone) = match first {
            Taken::Request(Msg::Job(job)) => (job, false),
            Taken::Request(Msg::Close(reply)) => return Some(reply),
            Taken::Background => match background.take() {
                Some((job, _)) => (job, true),
                None => continue,
            },
        };
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
            // Never run without a transaction: dropping the requests answers them with
            // UNAVAILABLE, and nothing was written. What is queued now goes with the
            // first, rather than each waiting out a failing BEGIN of its own.
            let dropped = 1 + std::iter::from_fn(|| rx.try_recv().ok())
                .take(MAX_GROUP - 1)
                .map(|m| {
                    if let Msg::Close(reply) = m {
                        closer = Some(reply);
                    }
                })
                .count();
            tracing::error!(error = %e, requests = dropped, "store writer cannot begin a transaction");
            drop(first);
            continue;
        }
        let started = std::time::Instant::now();
        let mut completions: Vec<Completion> = Vec::with_capacity(8);
        let (mut jobs, mut begun) = (0_usize, 1_u64);
        let mut next = Some(first);
        // The group is every request queued by the time the one before it has run (up
        // to the bounds above), so those that arrive while the group runs share its
        // commit instead of waiting for it and then paying a commit of their own.
        while let Some(job) = next.take() {
            completions.push(job(conn));
            jobs += 1;
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back by itself (a full disk, an I/O
                // error): what ran in it is gone and must be reported so, and a job run
                // now would commit on its own, outside any group. The rest gets a fresh
                // transaction, or stays queued for the next one if none can begin.
                tracing::error!(
                    requests = completions.len(),
                    "store transaction rolled back by SQLite; its requests fail"
                );
                // Answered at once, before the rest runs: what their answers hold (a
                // claimed settlement id, say) must be released before a later job of
                // the group can take the same id from the rolled-back sequence.
                for done in completions.drain(..) {
                    done(Ended::RolledBack(
                        "the transaction was rolled back (disk full or I/O error)",
                    ));
                }
                if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                    tracing::error!(error = %e, "store writer cannot begin a transaction");
                    break;
                }
                begun += 1;
            }
            if !alone && jobs < MAX_GROUP && started.elapsed() < budget {
                next = match rx.try_recv() {
                    Ok(Msg::Job(job)) => Some(job),
                    Ok(Msg::Close(reply)) => {
                        // The group commits first; nothing runs after it.
                        closer = Some(reply);
                        None
                    }
                    Err(_) => None,
                };
            }
        }
        let ran = started.elapsed();
        let commit = if conn.is_autocommit() {
            // Nothing left to commit: every job was in a rolled-back transaction.
            Ok(())
        } else {
            exec(conn, "COMMIT").map_err(|e| e.to_string())
        };
        let committing = started.elapsed() - ran;
        if alone {
            rest_until = std::time::Instant::now() + (ran + committing) * BACKGROUND_REST;
            served = false;
        } else {
            served = true;
        }
        window.transactions += begun;
        window.jobs += jobs as u64;
        window.largest = window.largest.max(jobs);
        window.run += ran;
        window.commit += committing;
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        totals.transactions.fetch_add(begun, Ordering::Relaxed);
        totals.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
        totals.run_micros.fetch_add(micros(ran), Ordering::Relaxed);
        totals
            .commit_micros
            .fetch_add(micros(committing), Ordering::Relaxed);
        totals
            .longest_micros
            .fetch_max(micros(ran + committing), Ordering::Relaxed);
        totals
            .longest_commit_micros
            .fetch_max(micros(committing), Ordering::Relaxed);
        if let Err(m) = &commit {
            if corruption_message(m) {
                note_damage(damaged, m);
            }
            let _ = conn.execute_batch("ROLLBACK");
        }
        let ended = match &commit {
            Ok(()) => Ended::Committed,
            Err(m) => Ended::CommitFailed(m),
        };
        for done in completions {
            done(ended);
        }
        if since.elapsed() >= WINDOW {
            let w = std::mem::take(&mut window);
            tracing::debug!(
                transactions = w.transactions,
                jobs = w.jobs,
                jobs_per_transaction = w.jobs / w.transactions.max(1),
                largest_group = w.largest,
                run_ms = w.run.as_millis() as u64,
                commit_ms = w.commit.as_millis() as u64,
                "store writer window"
            );
            if let Err(e) = upkeep(conn) {
                tracing::warn!(error = %e, "store writer upkeep failed");
            }
            since = std::time::Instant::now();
        }
    }
    closer
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        future::Future,
        path::{Path, PathBuf},
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
            mpsc,
        },
        time::Duration,
    };

    /// A store file with one table `t (v)`, and a connection to it.
    fn table_db(dir: &Path) -> (Connection, PathBuf) {
        let path = dir.join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        (conn, path)
    }

    /// The values in `t`, read through a connection of its own.
    fn values(path: &Path) -> Vec<i64> {
        let conn = Connection::open(path).unwrap();
        let mut st = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// A writer whose groups take late arrivals however long they have run: the tests
    /// hold a group's first request while they queue the next ones.
    fn unhurried(conn: Connection) -> Writer {
        Writer::start_with_budget(
            conn,
            |_| Ok(()),
            Duration::from_secs(3600),
            WriteQueue::default(),
            Box::new(|_, _| true),
        )
        .unwrap()
    }

    /// Submits a first request that holds the writer until the returned sender is
    /// used, then does `then`; returns once it runs, so that what is submitted next
    /// queues behind it.
    async fn held_first<'w, R: Send + 'static>(
        w: &'w Writer,
        then: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> (impl Future<Output = Result<R>> + 'w, mpsc::Sender<()>) {
        let (hold, held) = mpsc::channel::<()>();
        let (running, is_running) = oneshot::channel::<()>();
        let first = w.submit(move |c| {
            let _ = running.send(());
            let _ = held.recv();
            then(c)
        });
        is_running.await.unwrap();
        (first, hold)
    }

    fn insert(w: &Writer, v: i64) -> impl Future<Output = Result<usize>> + '_ {
        w.submit(move |c| Ok(c.execute("INSERT INTO t (v) VALUES (?1)", [v])?))
    }

    /// Requests that arrive while a group runs join its transaction: one commit for all,
    /// rather than a second commit after the first.
    #[tokio::test]
    async fn requests_queued_while_a_group_runs_share_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let w = unhurried(table_db(dir.path()).0);
        let (first, hold) =
            held_first(&w, |c| Ok(c.execute("INSERT INTO t (v) VALUES (0)", [])?)).await;
        let later: Vec<_> = (1..=3).map(|v| insert(&w, v)).collect();
        hold.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1);
        for l in later {
            assert_eq!(l.await.unwrap(), 1);
        }
        let t = w.totals();
        assert_eq!((t.transactions, t.jobs), (1, 4));
    }

    /// A background job queued before requests runs after them, alone in its own
    /// transaction; its kind's totals count it with the rows it wrote.
    #[tokio::test]
    async fn a_background_job_yields_to_queued_requests_and_runs_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = table_db(dir.path());
        let w = unhurried(conn);
        let (first, hold) =
            held_first(&w, |c| Ok(c.execute("INSERT INTO t (v) VALUES (1)", [])?)).await;
        let background = w.submit_background(JobKind::FreezeStep, |c| {
            let next: i64 = c.query_row("SELECT MAX(v) + 1 FROM t", [], |r| r.get(0))?;
            c.execute("INSERT INTO t (v) VALUES (?1), (?1 + 100)", [next])?;
            Ok(next)
        });
        let later: Vec<_> = (2..=3).map(|v| insert(&w, v)).collect();
        hold.send(()).unwrap();
        first.await.unwrap();
        for l in later {
            assert_eq!(l.await.unwrap(), 1);
        }
        assert_eq!(background.await.unwrap(), 4, "it ran after both requests");
        assert_eq!(values(&path), [1, 2, 3, 4, 104]);
        let t = w.totals();
        assert_eq!(
            (t.transactions, t.jobs),
            (2, 4),
            "the requests' group, then it"
        );
        let k = t.kind(JobKind::FreezeStep);
        assert_eq!((k.jobs, k.most_rows), (1, 2));
        assert_eq!(t.kind(JobKind::Other).jobs, 3);
    }

    /// While requests are being served the background lane rests after a job for
    /// BACKGROUND_REST times as long as the job took, and requests submitted meanwhile
    /// run at once; on an idle writer the next background job runs without a rest.
    #[tokio::test]
    async fn the_background_lane_rests_after_a_job_while_requests_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let w = unhurried(table_db(dir.path()).0);
        let job = Duration::from_millis(100);
        let rest = job * BACKGROUND_REST;
        let step = || {
            w.submit_background(JobKind::FreezeStep, move |_| {
                std::thread::sleep(job);
                Ok(std::time::Instant::now())
            })
        };
        let at_once =
            || w.submit_background(JobKind::FreezeStep, |_| Ok(std::time::Instant::now()));
        // Idle: no request since the last job, so no rest.
        let ended = step().await.unwrap();
        let started = at_once().await.unwrap();
        assert!(started - ended < rest, "{:?}", started - ended);
        // A request ran since: the next job waits out the rest, requests do not.
        let ended = step().await.unwrap();
        insert(&w, 1).await.unwrap();
        let next = at_once();
        insert(&w, 2).await.unwrap();
        let answered = std::time::Instant::now();
        let started = next.await.unwrap();
        assert!(answered < started, "the request ran first");
        assert!(started - ended >= rest, "{:?}", started - ended);
        assert!(answered - ended < rest, "{:?}", answered - ended);
    }

    /// A group that has run for its budget takes no more requests: the ones queued
    /// meanwhile commit in the next transaction.
    #[tokio::test]
    async fn a_group_past_its_run_budget_takes_no_more_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = table_db(dir.path());
        let w = Writer::start_with_budget(
            conn,
            |_| Ok(()),
            Duration::from_millis(50),
            WriteQueue::default(),
            Box::new(|_, _| true),
        )
        .unwrap();
        let (first, hold) = held_first(&w, |_| {
            std::thread::sleep(Duration::from_millis(60));
            Ok(())
        })
        .await;
        let later: Vec<_> = (1..=3).map(|v| insert(&w, v)).collect();
        hold.send(()).unwrap();
        first.await.unwrap();
        for l in later {
            assert_eq!(l.await.unwrap(), 1);
        }
        let t = w.totals();
        assert_eq!((t.transactions, t.jobs), (2, 4));
    }

    /// A full queue refuses a request after its short wait — RESOURCE_EXHAUSTED, the
    /// request never runs, and it is counted — while those already queued are served.
    #[tokio::test]
    async fn a_request_meeting_a_full_queue_is_refused_unrun_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = table_db(dir.path());
        let w = Writer::start_with_budget(
            conn,
            |_| Ok(()),
            Duration::from_secs(3600),
            WriteQueue {
                capacity: 2,
                full_wait: Duration::from_millis(50),
                hold: Arc::default(),
                holding: Arc::default(),
            },
            Box::new(|_, _| true),
        )
        .unwrap();
        let (first, hold) = held_first(&w, |_| Ok(())).await;
        let queued: Vec<_> = (1..=2).map(|v| insert(&w, v)).collect();
        assert_eq!(w.totals().queued, 2);
        let refused = tonic::Status::from(insert(&w, 3).await.unwrap_err());
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            "node overloaded: its store's write queue stayed full (capacity 2) for 50 ms; nothing was written — retry after a short pause with the same request_id"
        );
        assert_eq!(w.totals().rejected, 1);
        hold.send(()).unwrap();
        first.await.unwrap();
        for q in queued {
            assert_eq!(q.await.unwrap(), 1);
        }
        assert_eq!(values(&path), [1, 2], "the refused request never ran");
        assert_eq!(insert(&w, 3).await.unwrap(), 1);
        assert_eq!(values(&path), [1, 2, 3]);
        assert_eq!((w.totals().queued, w.totals().rejected), (0, 1));
    }

    /// A writer whose store is locked by another connection and does not wait for it.
    fn locked_writer(dir: &Path) -> (Writer, PathBuf) {
        let (conn, path) = table_db(dir);
        conn.busy_timeout(Duration::ZERO).unwrap();
        (unhurried(conn), path)
    }

    /// While no transaction can begin, requests fail with UNAVAILABLE, nothing runs,
    /// and the writer serves the next request once the store is free again.
    #[tokio::test]
    async fn a_request_fails_unrun_when_no_transaction_can_begin() {
        let dir = tempfile::tempdir().unwrap();
        let (w, path) = locked_writer(dir.path());
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let refused = insert(&w, 1).await;
        assert!(
            matches!(&refused, Err(Error::Unavailable(m)) if m.contains("no transaction could begin")),
            "{refused:?}"
        );
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(insert(&w, 2).await.unwrap(), 1);
        assert_eq!(values(&path), vec![2]);
    }

    /// When SQLite rolls a group back and no new transaction can begin, the rest of the
    /// group stays queued: it is not run outside a transaction, it fails while the
    /// store stays locked, and later requests run once it is free.
    #[tokio::test]
    async fn the_rest_of_a_rolled_back_group_never_runs_outside_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (w, path) = locked_writer(dir.path());
        let (first, hold) =
            held_first(&w, |c| Ok(c.execute("INSERT INTO t (v) VALUES (1)", [])?)).await;
        // Ends the transaction as SQLite would, then takes the store's lock elsewhere.
        let (lock_tx, lock_rx) = mpsc::channel::<Connection>();
        let lock_path = path.clone();
        let rolled_back = w.submit(move |c| {
            c.execute_batch("ROLLBACK")?;
            let other = Connection::open(&lock_path)?;
            other.execute_batch("BEGIN IMMEDIATE")?;
            let _ = lock_tx.send(other);
            Ok(())
        });
        let rest = insert(&w, 3);
        hold.send(()).unwrap();
        assert!(first.await.is_err(), "its transaction was rolled back");
        assert!(rolled_back.await.is_err());
        assert!(
            matches!(&rest.await, Err(Error::Unavailable(_))),
            "the rest fails unrun while the store is locked"
        );
        let other = lock_rx.recv().unwrap();
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(insert(&w, 4).await.unwrap(), 1);
        assert_eq!(values(&path), vec![4]);
    }

    /// A failed COMMIT is not reported as "nothing was saved": the requests of the
    /// group get [`Error::CommitUnknown`], which the home node does not tell a
    /// treatment node as certainly uncommitted. A request that failed inside its own
    /// savepoint keeps its own error.
    #[tokio::test]
    async fn a_failed_commit_is_not_reported_as_nothing_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        // A deferred foreign key is checked only at COMMIT: a group holding a row that
        // breaks it fails there.
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE p (id INTEGER PRIMARY KEY);
             CREATE TABLE t (v INTEGER NOT NULL REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        let w = unhurried(conn);
        let (first, hold) =
            held_first(&w, |c| Ok(c.execute("INSERT INTO t (v) VALUES (7)", [])?)).await;
        let own = w.submit(|_| -> Result<()> { Err(Error::Unavailable("disk full".into())) });
        hold.send(()).unwrap();
        let e = first.await.unwrap_err();
        assert!(
            matches!(&e, Error::CommitUnknown(m) if m.contains("could not confirm its commit") && m.contains("FOREIGN KEY")),
            "{e:?}"
        );
        assert!(
            matches!(&own.await, Err(Error::Unavailable(m)) if m == "disk full"),
            "a job's own failure is its answer"
        );
        assert_eq!(values(&path), Vec::<i64>::new());
        assert!(
            insert(&w, 8)
                .await
                .unwrap_err()
                .to_string()
                .contains("could not confirm")
        );
    }

    /// A transaction that SQLite rolls back by itself in the middle of a group fails
    /// every request that ran in it — answered at once, so that what their answers hold
    /// is released before the rest runs — and the requests after it still commit in a
    /// transaction of their own.
    #[tokio::test]
    async fn a_transaction_rolled_back_by_sqlite_fails_what_ran_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = table_db(dir.path());
        let w = unhurried(conn);
        // The next three are queued by the time the held first has run: all four share
        // one transaction.
        let (first, hold) = held_first(&w, |_| Ok(())).await;
        // What a job's answer may hold (a claimed settlement id): released on drop.
        struct Claim(Arc<AtomicBool>);
        impl Drop for Claim {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let released = Arc::new(AtomicBool::new(false));
        let claim = Claim(Arc::clone(&released));
        let before = w.submit(move |c| {
            c.execute("INSERT INTO t (v) VALUES (1)", [])?;
            Ok(claim)
        });
        // What SQLite does on SQLITE_FULL or an I/O error: the transaction ends.
        let rolled_back = w.submit(|c| Ok(c.execute_batch("ROLLBACK")?));
        // The lost requests are answered (their claims released) before the rest runs.
        let seen = Arc::clone(&released);
        let after = w.submit(move |c| {
            if !seen.load(Ordering::SeqCst) {
                return Err(Error::Internal(
                    "a lost request still holds its claim".into(),
                ));
            }
            Ok(c.execute("INSERT INTO t (v) VALUES (3)", [])?)
        });
        hold.send(()).unwrap();
        assert!(first.await.is_err(), "its transaction was rolled back");
        assert!(before.await.is_err(), "its transaction was rolled back");
        assert!(rolled_back.await.is_err());
        assert_eq!(after.await.unwrap(), 1);
        assert_eq!(values(&path), vec![3]);
    }

    /// Closing lets the running group commit, refuses what was queued behind the
    /// close (nothing of it written), runs the closing step on the connection and
    /// answers its outcome; a request after the close is refused too.
    #[tokio::test]
    async fn close_commits_the_running_group_and_refuses_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = table_db(dir.path());
        let (ran, closing_ran) = std::sync::mpsc::channel::<i64>();
        let w = Writer::start_with_budget(
            conn,
            |_| Ok(()),
            Duration::from_secs(3600),
            WriteQueue::default(),
            Box::new(move |c, _| {
                let n: i64 = c
                    .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                    .unwrap();
                ran.send(n).unwrap();
                true
            }),
        )
        .unwrap();
        let (first, hold) =
            held_first(&w, |c| Ok(c.execute("INSERT INTO t (v) VALUES (1)", [])?)).await;
        let close = w.close();
        tokio::pin!(close);
        // The close is queued behind the first (which holds the writer): poll it once
        // so that it is sent before the next request.
        assert!(futures::poll!(&mut close).is_pending());
        let behind = insert(&w, 2);
        hold.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1);
        assert!(close.await, "the closing step's outcome");
        assert_eq!(
            closing_ran.recv().unwrap(),
            1,
            "closing saw the committed group"
        );
        assert!(
            matches!(&behind.await, Err(Error::Unavailable(_))),
            "queued behind the close"
        );
        assert!(matches!(&insert(&w, 3).await, Err(Error::Unavailable(_))));
        assert!(!w.close().await, "already closed");
        assert_eq!(values(&path), vec![1]);
    }
}
