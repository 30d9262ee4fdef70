//! The in-process backend's store: every room's messages, numbering and
//! epoch in one SQLite file (`--db`), so that history outlives members and
//! restarts.
//!
//! One thread owns the database. Everything goes to it through one queue,
//! in order, so a room read back sees every message queued before:
//! - messages, bounded by `--db-queue-bytes` (past it they are delivered but
//!   not stored, and counted);
//! - reservations of numbers ahead ([`Ceiling`]), loads, pages, settlements,
//!   which are few (a room or a request each) and never dropped.
//!
//! The writer commits whatever is queued in one transaction (group commit):
//! the async runtime never waits on the disk.
//!
//! A crash must never make a seq mean two messages: the writer keeps a
//! durable ceiling for each room, [`RESERVE_AHEAD`] numbers ahead, and the
//! hub hands out no number above the ceiling it knows to be on disk. After
//! a crash, numbering goes on above the ceiling; after a clean stop
//! ([`Store::settle`]), right after the last message.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::protocol::Action;
use crate::protocol::{HISTORY_PAGE_BYTES, HISTORY_PAGE_MESSAGES, PastMessage, Timestamp};
use crate::server::backend::{Sanction, Sanctions, new_epoch};
use crate::server::config::{MEMORY_DB, ServerConfig};
use crate::util::lock;

/// Numbers a room reserves on disk ahead of the last it handed out: after
/// a crash, numbering jumps by at most this much.
pub(crate) const RESERVE_AHEAD: u64 = 1024;
/// A room asks for its next reservation once it is this close to its
/// ceiling: the writer has that many messages' time to commit it.
pub(crate) const RESERVE_MARGIN: u64 = RESERVE_AHEAD / 2;
/// Jobs one transaction takes at most.
const MAX_JOBS_PER_COMMIT: usize = 4096;
/// What queuing a message costs besides its text, sender and room.
const QUEUED_OVERHEAD: usize = 96;
/// How often messages past `--keep-for` are looked for.
const AGE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often rooms the store keeps nothing of are forgotten: joins alone
/// must not grow the file.
const ROOM_SWEEP_INTERVAL: Duration = Duration::from_mins(1);
/// Free pages returned to the file system at most at a time.
const VACUUM_PAGES: u32 = 1024;
/// Longest wait before the writer tries again after a failure.
const RETRY_MOST: Duration = Duration::from_secs(5);
/// The schema this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// At start: the file cannot be opened, read or written.
    #[error("cannot open the store {path}: {reason}")]
    Open {
        /// `--db`.
        path: String,
        /// SQLite's words, or ours.
        reason: String,
    },
    /// The writer failed or has stopped.
    #[error("the store failed: {0}")]
    Failed(String),
}

/// A message as the store keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub seq: u64,
    pub from: String,
    pub text: String,
    pub ts: Timestamp,
}

impl Stored {
    /// Message bytes, as the store's size bound counts them.
    fn bytes(&self) -> usize {
        self.from.len() + self.text.len()
    }
}

/// A room read back from the store.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub room: String,
    pub epoch: String,
    /// The last message numbered, as far as the store knows.
    pub seq: u64,
    /// After a crash: numbers up to here may have been handed out (the
    /// ceiling then), so numbering goes on above it; 0 after a clean stop.
    pub floor: u64,
    /// Numbers up to here are reserved on disk.
    pub ceiling: Arc<Ceiling>,
    /// The last messages, oldest first (numbers jump where a crash was).
    pub history: Vec<Stored>,
}

/// A page of older messages.
#[derive(Debug)]
pub(crate) struct Page {
    pub messages: Vec<PastMessage<'static>>,
    pub more: bool,
}

/// The highest number a room may hand out in its epoch: what is on disk,
/// or, for an epoch not written yet, what its first reservation asks for
/// (a crash before that is written leaves the old epoch on disk, whose
/// numbers this one never touched).
#[derive(Debug)]
pub(crate) struct Ceiling(AtomicU64);

impl Ceiling {
    pub(crate) fn new(seq: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(seq)))
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn raise(&self, to: u64) {
        self.0.fetch_max(to, Ordering::AcqRel);
    }
}

/// The store's counters, shown in `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreCounters {
    /// Messages written.
    pub written: Counter,
    /// Messages delivered but not stored: the queue was full.
    pub dropped: Counter,
    /// Messages delivered but not stored: the write failed.
    pub failed: Counter,
    /// Transactions that failed.
    pub errors: Counter,
    /// Messages deleted by retention (count, age or size).
    pub trimmed: Counter,
    /// Message bytes queued for the writer.
    pub queue_bytes: Gauge,
    /// Message bytes the store holds.
    pub bytes: Gauge,
    /// 1 while the last transaction succeeded, else 0.
    pub up: Gauge,
}

/// What the writer is asked to do.
enum Job {
    Append {
        room: Box<str>,
        message: Stored,
        queued: usize,
    },
    Reserve {
        room: Box<str>,
        epoch: Box<str>,
        upto: u64,
        ceiling: Arc<Ceiling>,
    },
    Load {
        room: Box<str>,
        history: usize,
        history_bytes: usize,
        reply: oneshot::Sender<Result<Loaded, StoreError>>,
    },
    Page {
        room: Box<str>,
        before: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Page, StoreError>>,
    },
    Settle {
        room: Box<str>,
        epoch: Box<str>,
        seq: u64,
    },
    /// Records a ban or mute, in place of the one of the same action, key
    /// and subject.
    Sanction {
        room: Box<str>,
        sanction: Sanction,
    },
    /// Forgets a room's bans or mutes of a name's key.
    Lift {
        room: Box<str>,
        action: Action,
        key: Box<str>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// The handle the hub holds.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    jobs: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    counters: StoreCounters,
    /// Every room's bans and mutes, read at start and written through: a
    /// join looks here, not at the disk.
    sanctions: Arc<Mutex<Sanctions>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// Retention, as the writer applies it.
#[derive(Debug, Clone, Copy)]
struct Retention {
    per_room: u64,
    age: Duration,
    total_bytes: usize,
}

impl Store {
    /// Opens (or creates) `config.db`, migrates its schema, and starts the
    /// writer. Fails with one line naming the file.
    pub(crate) fn open(config: &ServerConfig) -> Result<Self, StoreError> {
        let path = config.db.clone();
        let in_memory = path == Path::new(MEMORY_DB);
        let total_bytes = if in_memory {
            config.db_max_bytes.min(config.max_memory)
        } else {
            config.db_max_bytes
        };
        let retention =
            Retention { per_room: config.keep_messages, age: config.keep_for, total_bytes };
        let opened = Database::open(&path, retention)
            .map_err(|reason| StoreError::Open { path: path.display().to_string(), reason })?;
        let sanctions = opened.sanctions().map_err(|error| StoreError::Open {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        let counters = StoreCounters::default();
        counters.up.set(1);
        counters.bytes.set(i64::try_from(opened.bytes).unwrap_or(i64::MAX));
        let (jobs, inbox) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            db: opened,
            inbox,
            queued: queued.clone(),
            counters: counters.clone(),
            last_sweep: Instant::now(),
            last_room_sweep: Instant::now(),
        };
        std::thread::Builder::new().name("store".into()).spawn(move || writer.run()).map_err(
            |error| StoreError::Open {
                path: path.display().to_string(),
                reason: format!("cannot start its writer: {error}"),
            },
        )?;
        let sanctions = Arc::new(Mutex::new(sanctions));
        Ok(Self { jobs, queued, max_queued: config.db_queue_bytes, counters, sanctions })
    }

    /// The active bans and mutes of `room` that apply to the name of key
    /// `key` or to `subject`.
    pub(crate) fn sanctions(
        &self,
        room: &str,
        key: impl FnOnce() -> String,
        subject: &str,
    ) -> Vec<Sanction> {
        lock(&self.sanctions).applying(room, key, subject)
    }

    /// Records a ban or mute (in place of the one of the same action, key
    /// and subject); false when [`MAX_SANCTIONS_PER_ROOM`](crate::protocol::MAX_SANCTIONS_PER_ROOM)
    /// or [`MAX_SANCTIONS`](crate::protocol::MAX_SANCTIONS) are reached.
    pub(crate) fn sanction(&self, room: &str, sanction: Sanction) -> bool {
        if !lock(&self.sanctions).add(room, sanction.clone()) {
            return false;
        }
        let _ = self.jobs.send(Job::Sanction { room: room.into(), sanction });
        true
    }

    /// Lifts `room`'s bans (or mutes) of the name of key `key`; false when
    /// there was none.
    pub(crate) fn lift(&self, room: &str, action: Action, key: &str) -> bool {
        if !lock(&self.sanctions).lift(room, action, key) {
            return false;
        }
        let _ = self.jobs.send(Job::Lift { room: room.into(), action, key: key.into() });
        true
    }

    /// The counters `/metrics` shows.
    pub(crate) fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Queues a message for the disk; past `--db-queue-bytes` it is not
    /// stored (it is delivered all the same), and counted.
    pub(crate) fn append(&self, room: &str, message: Stored) {
        let queued = QUEUED_OVERHEAD + room.len() + message.bytes();
        let before = self.queued.fetch_add(queued, Ordering::AcqRel);
        if before + queued > self.max_queued {
            self.queued.fetch_sub(queued, Ordering::AcqRel);
            self.counters.dropped.inc();
            return;
        }
        self.counters.queue_bytes.set(i64::try_from(before + queued).unwrap_or(i64::MAX));
        let job = Job::Append { room: room.into(), message, queued };
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(queued, Ordering::AcqRel);
            self.counters.failed.inc();
        }
    }

    /// Asks the writer to reserve numbers up to `upto` for `room` in
    /// `epoch` (taking that epoch, if it is new), and to raise `ceiling`
    /// once that is on disk.
    pub(crate) fn reserve(&self, room: &str, epoch: &str, upto: u64, ceiling: Arc<Ceiling>) {
        let job = Job::Reserve { room: room.into(), epoch: epoch.into(), upto, ceiling };
        // A stopped writer reserves nothing: the ceiling stays, and the
        // room takes a new epoch when it reaches it.
        let _ = self.jobs.send(job);
    }

    /// Records that `room` (in `epoch`) stopped at `seq`, all of it stored
    /// or given up: the next load numbers on from there, not from the
    /// ceiling. When a room empties, and at a clean stop.
    pub(crate) fn settle(&self, room: &str, epoch: &str, seq: u64) {
        let _ = self.jobs.send(Job::Settle { room: room.into(), epoch: epoch.into(), seq });
    }

    /// Reads `room` back (creating it, with a new epoch, if the store has
    /// never seen it) with its last `history` messages, at most
    /// `history_bytes` of text and names (the hub keeps no more, and counts
    /// more for each), and reserves numbers ahead of its last.
    pub(crate) async fn load(
        &self,
        room: &str,
        history: usize,
        history_bytes: usize,
    ) -> Result<Loaded, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Load { room: room.into(), history, history_bytes, reply })
            .map_err(|_| StoreError::Failed("the writer stopped".into()))?;
        answer.await.map_err(|_| StoreError::Failed("the writer stopped".into()))?
    }

    /// The messages of `room` numbered below `before`: at most `limit` (and
    /// [`HISTORY_PAGE_MESSAGES`]), and [`HISTORY_PAGE_BYTES`] of text (one
    /// message at least).
    pub(crate) async fn page(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let (reply, answer) = oneshot::channel();
        let limit = limit.min(HISTORY_PAGE_MESSAGES);
        // SQLite's integers are signed: a larger `before` from a client
        // would fail the whole transaction, other rooms' messages with it.
        let before = before.min(i64::MAX.unsigned_abs());
        self.jobs
            .send(Job::Page { room: room.into(), before, limit, reply })
            .map_err(|_| StoreError::Failed("the writer stopped".into()))?;
        answer.await.map_err(|_| StoreError::Failed("the writer stopped".into()))?
    }

    /// Writes what is queued and stops the writer; waits for it at most
    /// `timeout`. After [`Store::settle`] for every room in memory, this
    /// is a clean stop.
    pub(crate) async fn close(&self, timeout: Duration) {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job::Close { reply }).is_ok()
            && tokio::time::timeout(timeout, answer).await.is_err()
        {
            warn!("the store's writer did not finish in time: the last messages may be lost");
        }
    }
}

/// The database and what the writer knows of it.
struct Database {
    conn: Connection,
    retention: Retention,
    /// Message bytes held.
    bytes: u64,
}

impl Database {
    fn open(path: &PathBuf, retention: Retention) -> Result<Self, String> {
        let conn = Connection::open(path).map_err(|error| error.to_string())?;
        let fail = |error: rusqlite::Error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                "another server uses it".to_owned()
            }
            _ => error.to_string(),
        };
        // One connection, in this process only: a second server on the same
        // file is refused, and WAL needs no shared-memory file.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(fail)?;
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(fail)?;
        if version > SCHEMA_VERSION {
            return Err(format!(
                "its schema (version {version}) is newer than this server's ({SCHEMA_VERSION})"
            ));
        }
        if version == 0 {
            // Before any table: it cannot change afterwards.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(fail)?;
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(format!("it cannot run in WAL mode (it is in {mode} mode)"));
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(fail)?;
        conn.execute_batch(MIGRATIONS[usize::try_from(version).unwrap_or(0)..].join("\n").as_str())
            .map_err(fail)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(fail)?;
        let bytes: i64 =
            conn.query_row("SELECT bytes FROM totals", [], |row| row.get(0)).map_err(fail)?;
        Ok(Self { conn, retention, bytes: u64::try_from(bytes).unwrap_or(0) })
    }

    /// The bans and mutes that have not expired, the newest
    /// [`MAX_SANCTIONS`](crate::protocol::MAX_SANCTIONS) at most.
    fn sanctions(&self) -> rusqlite::Result<Sanctions> {
        let now = i64::try_from(super::unix_ms()).unwrap_or(i64::MAX);
        self.conn.execute("DELETE FROM sanctions WHERE until < ?1", [now])?;
        let mut statement = self.conn.prepare(
            "SELECT room, action, key, name, subject, until, reason FROM sanctions \
             ORDER BY rowid DESC LIMIT ?1",
        )?;
        let limit = i64::try_from(crate::protocol::MAX_SANCTIONS).unwrap_or(i64::MAX);
        let rows = statement.query_map([limit], |row| {
            let action: String = row.get(1)?;
            let until: Option<i64> = row.get(5)?;
            Ok((
                row.get::<_, String>(0)?,
                Sanction {
                    action: Action::from_command(&action).unwrap_or(Action::Ban),
                    key: row.get(2)?,
                    name: row.get(3)?,
                    subject: row.get(4)?,
                    until: until.and_then(|until| u64::try_from(until).ok()),
                    reason: row.get(6)?,
                },
            ))
        })?;
        let mut sanctions = Sanctions::default();
        for row in rows {
            let (room, sanction) = row?;
            sanctions.add(&room, sanction);
        }
        Ok(sanctions)
    }
}

/// Each schema version's migration from the one before, in order: the
/// store at version N runs those from index N. Each sets its version in
/// its own transaction, so a crash between two leaves a version that says
/// which ran.
const MIGRATIONS: [&str; 2] = [
    "
    BEGIN;
    CREATE TABLE rooms (
        name TEXT PRIMARY KEY,
        epoch TEXT NOT NULL,
        -- The last message numbered, once settled; else at least what is stored.
        seq INTEGER NOT NULL,
        -- Numbers up to here may have been handed out.
        ceiling INTEGER NOT NULL,
        -- 1: seq is where numbering goes on; 0: the ceiling is.
        settled INTEGER NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        ts INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX messages_by_room ON messages (room, seq);
    CREATE TABLE totals (bytes INTEGER NOT NULL);
    INSERT INTO totals VALUES (0);
    CREATE TRIGGER count_in AFTER INSERT ON messages BEGIN
        UPDATE totals SET bytes = bytes + length(CAST(new.sender AS BLOB))
            + length(CAST(new.text AS BLOB));
    END;
    CREATE TRIGGER count_out AFTER DELETE ON messages BEGIN
        UPDATE totals SET bytes = bytes - length(CAST(old.sender AS BLOB))
            - length(CAST(old.text AS BLOB));
    END;
    PRAGMA user_version = 1;
    COMMIT;
",
    "
    BEGIN;
    -- Bans and mutes (see `Sanction`); `until` is Unix ms, NULL until lifted.
    CREATE TABLE sanctions (
        room TEXT NOT NULL,
        action TEXT NOT NULL,
        key TEXT NOT NULL,
        name TEXT NOT NULL,
        subject TEXT,
        until INTEGER,
        reason TEXT
    );
    CREATE INDEX sanctions_by_room ON sanctions (room, action, key);
    PRAGMA user_version = 2;
    COMMIT;
",
];

/// The thread that owns the database.
struct Writer {
    db: Database,
    inbox: mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
    counters: StoreCounters,
    last_sweep: Instant,
    last_room_sweep: Instant,
}

/// What a transaction owes once it commits (or fails).
#[derive(Default)]
struct Owed {
    loads: Vec<(oneshot::Sender<Result<Loaded, StoreError>>, Loaded)>,
    pages: Vec<(oneshot::Sender<Result<Page, StoreError>>, Page)>,
    raises: Vec<(Arc<Ceiling>, u64)>,
    written: u64,
    closing: Option<oneshot::Sender<()>>,
}

impl Writer {
    fn run(mut self) {
        let mut failures = 0;
        while let Ok(first) = self.inbox.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_JOBS_PER_COMMIT
                && let Ok(job) = self.inbox.try_recv()
            {
                batch.push(job);
            }
            let queued: usize = batch
                .iter()
                .map(|job| if let Job::Append { queued, .. } = job { *queued } else { 0 })
                .sum();
            let appended = batch.iter().filter(|job| matches!(job, Job::Append { .. })).count();
            let result = self.commit(batch);
            let left = self.queued.fetch_sub(queued, Ordering::AcqRel) - queued;
            self.counters.queue_bytes.set(i64::try_from(left).unwrap_or(i64::MAX));
            match result {
                Ok(owed) => {
                    failures = 0;
                    self.counters.up.set(1);
                    self.counters.written.inc_by(owed.written);
                    self.counters.bytes.set(i64::try_from(self.db.bytes).unwrap_or(i64::MAX));
                    for (ceiling, upto) in owed.raises {
                        ceiling.raise(upto);
                    }
                    for (reply, loaded) in owed.loads {
                        let _ = reply.send(Ok(loaded));
                    }
                    for (reply, page) in owed.pages {
                        let _ = reply.send(Ok(page));
                    }
                    if let Some(reply) = owed.closing {
                        let _ = reply.send(());
                        info!("store closed");
                        return;
                    }
                }
                Err((error, closing)) => {
                    failures += 1;
                    self.counters.up.set(0);
                    self.counters.errors.inc();
                    self.counters.failed.inc_by(appended as u64);
                    warn!(%error, "the store failed: messages go on being delivered, not stored");
                    if let Some(reply) = closing {
                        let _ = reply.send(());
                        return;
                    }
                    // The disk may come back: wait, then go on with what is
                    // queued by then (messages past the queue's bound are
                    // dropped meanwhile, and counted).
                    std::thread::sleep(crate::util::backoff(
                        failures,
                        Duration::from_millis(100),
                        RETRY_MOST,
                    ));
                }
            }
        }
    }

    /// Carries out `batch` in one transaction. On failure, the loads and
    /// pages are answered with the error, and nothing is raised.
    fn commit(
        &mut self,
        batch: Vec<Job>,
    ) -> Result<Owed, (rusqlite::Error, Option<oneshot::Sender<()>>)> {
        let mut owed = Owed::default();
        match self.transact(batch, &mut owed) {
            Ok(()) => Ok(owed),
            Err(error) => {
                let failed = || StoreError::Failed(error.to_string());
                for (reply, _) in owed.loads {
                    let _ = reply.send(Err(failed()));
                }
                for (reply, _) in owed.pages {
                    let _ = reply.send(Err(failed()));
                }
                Err((error, owed.closing))
            }
        }
    }

    fn transact(&mut self, batch: Vec<Job>, owed: &mut Owed) -> rusqlite::Result<()> {
        let retention = self.db.retention;
        let tx = self.db.conn.transaction()?;
        // Each room written to, with its last seq written.
        let mut appended: Vec<(Box<str>, u64)> = Vec::new();
        let mut trimmed = 0;
        for job in batch {
            // A read sees each room within its count, as if committed.
            if matches!(job, Job::Load { .. } | Job::Page { .. }) {
                trimmed += keep_last(&tx, &mut appended, retention)?;
            }
            apply(&tx, job, retention, owed, &mut appended)?;
        }
        trimmed += keep_last(&tx, &mut appended, retention)?;
        let sweep = self.last_sweep.elapsed() >= AGE_SWEEP_INTERVAL || owed.closing.is_some();
        if sweep {
            self.last_sweep = Instant::now();
        }
        let (swept, bytes) = retain(&tx, retention, sweep)?;
        if sweep {
            // Bans and mutes that ended: the file keeps none past their time.
            let now = i64::try_from(super::unix_ms()).unwrap_or(i64::MAX);
            tx.execute("DELETE FROM sanctions WHERE until < ?1", [now])?;
        }
        trimmed += swept;
        if self.last_room_sweep.elapsed() >= ROOM_SWEEP_INTERVAL {
            self.last_room_sweep = Instant::now();
            // A room nobody is in and the store keeps no message of: its
            // numbering starts again, in a new epoch, if it is used again.
            tx.execute(
                "DELETE FROM rooms WHERE settled = 1 AND NOT EXISTS \
                 (SELECT 1 FROM messages WHERE messages.room = rooms.name)",
                [],
            )?;
        }
        tx.commit()?;
        if trimmed > 0 {
            self.counters.trimmed.inc_by(trimmed);
            // Free pages go back to the file system, a few at a time.
            self.db.conn.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
        }
        self.db.bytes = bytes;
        if owed.closing.is_some() {
            // The WAL folded into the file: a clean file for the next start.
            self.db.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        }
        Ok(())
    }
}

/// Carries out one job inside the writer's transaction.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    job: Job,
    retention: Retention,
    owed: &mut Owed,
    appended: &mut Vec<(Box<str>, u64)>,
) -> rusqlite::Result<()> {
    match job {
        Job::Sanction { room, sanction } => {
            let Sanction { action, key, name, subject, until, reason } = sanction;
            tx.execute(
                "DELETE FROM sanctions WHERE room = ?1 AND action = ?2 AND key = ?3 \
                 AND subject IS ?4",
                params![room, action.command(), key, subject],
            )?;
            let until = until.map(|until| i64::try_from(until).unwrap_or(i64::MAX));
            tx.execute(
                "INSERT INTO sanctions (room, action, key, name, subject, until, reason) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![room, action.command(), key, name, subject, until, reason],
            )?;
        }
        Job::Lift { room, action, key } => {
            tx.execute(
                "DELETE FROM sanctions WHERE room = ?1 AND action = ?2 AND key = ?3",
                params![room, action.command(), key],
            )?;
        }
        Job::Append { room, message, .. } => {
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO messages (room, seq, sender, text, ts) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    &*room,
                    message.seq,
                    message.from,
                    message.text,
                    message.ts.timestamp_millis()
                ])?;
            owed.written += inserted as u64;
            tx.prepare_cached("UPDATE rooms SET seq = max(seq, ?2) WHERE name = ?1")?
                .execute(params![&*room, message.seq])?;
            match appended.iter_mut().find(|(name, _)| *name == room) {
                Some((_, seq)) => *seq = message.seq,
                None => appended.push((room, message.seq)),
            }
        }
        Job::Reserve { room, epoch, upto, ceiling } => {
            // A new epoch replaces the old one; the same one only ever
            // raises its ceiling.
            tx.prepare_cached(
                "INSERT INTO rooms (name, epoch, seq, ceiling, settled) \
                 VALUES (?1, ?2, 0, ?3, 0) \
                 ON CONFLICT (name) DO UPDATE SET \
                 ceiling = CASE WHEN epoch = excluded.epoch \
                     THEN max(ceiling, excluded.ceiling) ELSE excluded.ceiling END, \
                 epoch = excluded.epoch, settled = 0",
            )?
            .execute(params![&*room, &*epoch, upto])?;
            owed.raises.push((ceiling, upto));
        }
        Job::Settle { room, epoch, seq } => {
            tx.prepare_cached(
                "UPDATE rooms SET seq = max(seq, ?3), ceiling = max(seq, ?3), settled = 1 \
                 WHERE name = ?1 AND epoch = ?2",
            )?
            .execute(params![&*room, &*epoch, seq])?;
        }
        Job::Load { room, history, history_bytes, reply } => {
            owed.loads.push((reply, load(tx, &room, history, history_bytes, retention)?));
        }
        Job::Page { room, before, limit, reply } => {
            owed.pages.push((reply, page(tx, &room, before, limit, retention)?));
        }
        Job::Close { reply } => owed.closing = Some(reply),
    }
    Ok(())
}

/// Each room written to (`appended`, emptied) keeps its last
/// `--keep-messages`; returns how many went.
fn keep_last(
    tx: &rusqlite::Transaction<'_>,
    appended: &mut Vec<(Box<str>, u64)>,
    retention: Retention,
) -> rusqlite::Result<u64> {
    let mut trimmed = 0;
    for (room, seq) in appended.drain(..) {
        let below = seq.saturating_sub(retention.per_room);
        if below > 0 {
            trimmed += tx
                .prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq <= ?2")?
                .execute(params![&*room, below])?;
        }
    }
    Ok(trimmed as u64)
}

/// Applies the rest of retention inside the writer's transaction: with
/// `sweep`, messages past `--keep-for` go; then the oldest of any room,
/// until the store is under `--db-max-bytes`. Returns how many went, and
/// the bytes left.
fn retain(
    tx: &rusqlite::Transaction<'_>,
    retention: Retention,
    sweep: bool,
) -> rusqlite::Result<(u64, u64)> {
    let mut trimmed = 0;
    if sweep {
        let cutoff = cutoff(retention.age);
        loop {
            // Ids follow time: the oldest are looked at first.
            let gone = tx
                .prepare_cached(
                    "DELETE FROM messages WHERE id IN \
                     (SELECT id FROM messages ORDER BY id LIMIT 1000) AND ts < ?1",
                )?
                .execute([cutoff])?;
            trimmed += gone;
            if gone < 1000 {
                break;
            }
        }
    }
    let bytes = || tx.query_row("SELECT bytes FROM totals", [], |row| row.get::<_, u64>(0));
    let excess = bytes()?.saturating_sub(retention.total_bytes as u64);
    if excess > 0 {
        // The oldest messages of any room, just enough of them.
        let mut oldest = tx.prepare_cached(
            "SELECT id, length(CAST(sender AS BLOB)) + length(CAST(text AS BLOB)) \
             FROM messages ORDER BY id",
        )?;
        let (mut freed, mut last) = (0, None);
        let mut rows = oldest.query([])?;
        while freed < excess
            && let Some(row) = rows.next()?
        {
            last = Some(row.get::<_, i64>(0)?);
            freed += row.get::<_, u64>(1)?;
        }
        drop(rows);
        if let Some(last) = last {
            trimmed += tx.prepare_cached("DELETE FROM messages WHERE id <= ?1")?.execute([last])?;
        }
    }
    Ok((trimmed as u64, bytes()?))
}

/// The oldest time kept, in milliseconds since 1970.
fn cutoff(age: Duration) -> i64 {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    (chrono::Utc::now() - age).timestamp_millis()
}

fn timestamp(millis: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// [`Store::load`], inside the writer's transaction.
fn load(
    tx: &rusqlite::Transaction<'_>,
    room: &str,
    history: usize,
    history_bytes: usize,
    retention: Retention,
) -> rusqlite::Result<Loaded> {
    let row = tx
        .prepare_cached("SELECT epoch, seq, ceiling, settled FROM rooms WHERE name = ?1")?
        .query_row([room], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u64>(1)?,
                row.get::<_, u64>(2)?,
                row.get::<_, bool>(3)?,
            ))
        })
        .optional()?;
    let (epoch, seq, floor) = match row {
        // Not settled: it was not stopped cleanly, and numbers up to the
        // ceiling may have been handed out.
        Some((epoch, seq, ceiling, settled)) => (epoch, seq, if settled { 0 } else { ceiling }),
        None => (new_epoch(), 0, 0),
    };
    let ceiling = seq.max(floor) + RESERVE_AHEAD;
    tx.prepare_cached(
        "INSERT INTO rooms (name, epoch, seq, ceiling, settled) VALUES (?1, ?2, ?3, ?4, 0) \
         ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, ceiling = excluded.ceiling, \
         settled = 0",
    )?
    .execute(params![room, epoch, seq, ceiling])?;
    let mut rows = tx.prepare_cached(
        "SELECT seq, sender, text, ts FROM messages WHERE room = ?1 AND ts >= ?2 \
         ORDER BY seq DESC LIMIT ?3",
    )?;
    let mut newest_first: Vec<Stored> = Vec::new();
    let limit = i64::try_from(history).unwrap_or(i64::MAX);
    let mut bytes = 0usize;
    for message in rows.query_map(params![room, cutoff(retention.age), limit], stored)? {
        let message = message?;
        // Across the jump in numbering after a crash too: the hub finds
        // messages by number, and a newcomer sees what was said before it.
        bytes = bytes.saturating_add(message.text.len() + message.from.len());
        if bytes > history_bytes {
            break;
        }
        newest_first.push(message);
    }
    newest_first.reverse();
    let ceiling = Ceiling::new(ceiling);
    Ok(Loaded { room: room.to_owned(), epoch, seq, floor, ceiling, history: newest_first })
}

fn stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        seq: row.get(0)?,
        from: row.get(1)?,
        text: row.get(2)?,
        ts: timestamp(row.get(3)?),
    })
}

/// [`Store::page`], inside the writer's transaction.
fn page(
    tx: &rusqlite::Transaction<'_>,
    room: &str,
    before: u64,
    limit: usize,
    retention: Retention,
) -> rusqlite::Result<Page> {
    let mut rows = tx.prepare_cached(
        "SELECT seq, sender, text, ts FROM messages WHERE room = ?1 AND seq < ?2 AND ts >= ?3 \
         ORDER BY seq DESC LIMIT ?4",
    )?;
    // One more than asked: whether there is more.
    let asked = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let mut messages = Vec::new();
    let (mut bytes, mut more) = (0, false);
    for message in rows.query_map(params![room, before, cutoff(retention.age), asked], stored)? {
        let message = message?;
        bytes += message.bytes();
        if messages.len() == limit || (bytes > HISTORY_PAGE_BYTES && !messages.is_empty()) {
            more = true;
            break;
        }
        messages.push(PastMessage {
            seq: message.seq,
            from: message.from.into(),
            text: message.text.into(),
            ts: message.ts,
        });
    }
    messages.reverse();
    Ok(Page { messages, more })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file of its own, deleted with its WAL when dropped.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new() -> Self {
            let name = format!("chat-unit-{}-{:016x}.db", std::process::id(), fastrand::u64(..));
            Self(std::env::temp_dir().join(name))
        }

        fn open(&self) -> Result<Store, StoreError> {
            Store::open(&ServerConfig { db: self.0.clone(), ..ServerConfig::default() })
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    fn message(seq: u64) -> Stored {
        Stored { seq, from: "alice".into(), text: format!("m{seq}"), ts: crate::protocol::now() }
    }

    /// Opens the store, numbers three messages in room `r`, and stops it,
    /// cleanly (the room settled) or as a crash leaves it (not settled).
    fn three_then_stop(db: &TempDb, clean: bool) -> String {
        let store = db.open().expect("opens");
        block_on(async {
            let loaded = store.load("r", 100, usize::MAX).await.expect("loads");
            assert_eq!((loaded.seq, loaded.floor, loaded.ceiling.get()), (0, 0, RESERVE_AHEAD));
            for seq in 1..=3 {
                store.append("r", message(seq));
            }
            if clean {
                store.settle("r", &loaded.epoch, 3);
            }
            store.close(Duration::from_secs(10)).await;
            loaded.epoch
        })
    }

    #[test]
    fn a_room_is_read_back_with_no_more_than_the_history_bytes() {
        let db = TempDb::new();
        three_then_stop(&db, true);
        let store = db.open().expect("opens again");
        // Each message is "alice" and "mN": 7 bytes; 15 hold the last two.
        let loaded = block_on(store.load("r", 100, 15)).expect("loads");
        let seqs: Vec<_> = loaded.history.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(loaded.seq, 3);
    }

    #[test]
    fn after_a_clean_stop_numbering_goes_on_from_the_last_message() {
        let db = TempDb::new();
        let epoch = three_then_stop(&db, true);
        let store = db.open().expect("opens again");
        let loaded = block_on(store.load("r", 100, usize::MAX)).expect("loads");
        assert_eq!((loaded.epoch.as_str(), loaded.seq, loaded.floor), (epoch.as_str(), 3, 0));
        let seqs: Vec<_> = loaded.history.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(loaded.ceiling.get(), 3 + RESERVE_AHEAD);
    }

    #[test]
    fn after_a_crash_numbering_goes_on_above_the_ceiling() {
        let db = TempDb::new();
        let epoch = three_then_stop(&db, false);
        let store = db.open().expect("opens again");
        let loaded = block_on(store.load("r", 100, usize::MAX)).expect("loads");
        // Numbers up to the ceiling may have been handed out before the crash.
        assert_eq!(
            (loaded.epoch.as_str(), loaded.seq, loaded.floor),
            (epoch.as_str(), 3, RESERVE_AHEAD)
        );
        assert_eq!(loaded.history.len(), 3);
        assert_eq!(loaded.ceiling.get(), 2 * RESERVE_AHEAD);
    }

    #[test]
    fn a_room_is_read_back_across_the_jump_a_crash_left() {
        let db = TempDb::new();
        let epoch = three_then_stop(&db, false);
        let store = db.open().expect("opens again");
        block_on(async {
            let loaded = store.load("r", 100, usize::MAX).await.expect("loads");
            store.append("r", message(loaded.floor + 1));
            store.settle("r", &epoch, loaded.floor + 1);
            store.close(Duration::from_secs(10)).await;
        });
        let store = db.open().expect("opens a third time");
        let loaded = block_on(store.load("r", 100, usize::MAX)).expect("loads");
        let seqs: Vec<_> = loaded.history.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3, RESERVE_AHEAD + 1]);
    }

    #[test]
    fn a_ceiling_rises_once_the_reservation_is_on_disk() {
        let db = TempDb::new();
        let store = db.open().expect("opens");
        block_on(async {
            let loaded = store.load("r", 100, usize::MAX).await.expect("loads");
            store.reserve("r", &loaded.epoch, 5000, loaded.ceiling.clone());
            // Answered after the reservation's commit.
            store.page("r", 1, 1).await.expect("a page");
            assert_eq!(loaded.ceiling.get(), 5000);
            // A new epoch starts from its own reservation.
            let next = Ceiling::new(6000);
            store.reserve("r", "another", 6000, next.clone());
            store.close(Duration::from_secs(10)).await;
        });
        let store = db.open().expect("opens again");
        let loaded = block_on(store.load("r", 100, usize::MAX)).expect("loads");
        assert_eq!((loaded.epoch.as_str(), loaded.floor), ("another", 6000));
    }

    #[test]
    fn a_store_of_a_newer_schema_is_refused() {
        let db = TempDb::new();
        drop(db.open().expect("opens"));
        // The writer holds the file until its queue closes: wait for that.
        let conn = (0..500)
            .find_map(|_| {
                let conn = Connection::open(&db.0).ok()?;
                conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).ok()?;
                Some(conn)
            })
            .expect("the file is free again");
        drop(conn);
        let refused = db.open().expect_err("refused");
        assert!(refused.to_string().contains("newer than this server's"), "{refused}");
    }

    #[test]
    fn a_store_of_the_version_before_gains_bans_and_keeps_them() {
        let db = TempDb::new();
        let conn = Connection::open(&db.0).expect("a file");
        conn.execute_batch(MIGRATIONS[0]).expect("the first schema");
        drop(conn);
        let store = db.open().expect("migrated");
        let ban = Sanction {
            action: Action::Ban,
            key: "bob".into(),
            name: "bob".into(),
            subject: Some("ip:10.0.0.1".into()),
            until: None,
            reason: Some("spam".into()),
        };
        assert!(store.sanction("lobby", ban.clone()));
        block_on(store.close(Duration::from_secs(5)));
        drop(store);
        let again = (0..500).find_map(|_| db.open().ok()).expect("the file is free again");
        assert_eq!(
            again.sanctions("lobby", || "bob".into(), "ip:10.0.0.9"),
            std::slice::from_ref(&ban)
        );
        assert_eq!(again.sanctions("lobby", || "rob".into(), "ip:10.0.0.1"), [ban]);
        assert!(again.sanctions("lobby", || "rob".into(), "ip:10.0.0.9").is_empty());
        assert!(again.lift("lobby", Action::Ban, "bob"));
        assert!(again.sanctions("lobby", || "bob".into(), "ip:10.0.0.1").is_empty());
    }
}
