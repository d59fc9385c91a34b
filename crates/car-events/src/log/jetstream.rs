//! [`JetStreamLog`]: the event log as a NATS JetStream stream, shared by several gateways
//! (cluster mode, PROTOCOL.md §19).
//!
//! Why: one sled directory belongs to one process on one machine. A stream replicated on
//! three NATS servers that fsync before they acknowledge gives several gateways one durable,
//! totally ordered log without replication of our own.
//!
//! How it keeps the [`EventLog`] contract:
//! - **One event, one message**, and the stream sequence *is* our seq: every publish says
//!   which sequence it expects to follow (`Nats-Expected-Last-Sequence`), so the stream
//!   stores a batch only at exactly the seqs the writer stamped, and the ack's sequence is
//!   checked against them. A batch of several events is published as one JetStream atomic
//!   batch (all or none). The payload is the record of [`crate::codec`], so every read
//!   verifies its checksum and seq as with sled.
//! - **Conditional append.** An append whose first seq is not the stream's next one (another
//!   gateway appended first) stores nothing and fails with [`LogError::Conflict`], once the
//!   local mirror holds the winner's events, so the caller can fold them and decide again.
//! - **Retries are safe.** Every message carries its event id as `Nats-Msg-Id`; a publish
//!   whose ack timed out is sent again, and the stream answers a duplicate with the first
//!   ack. A batch retried after its first attempt landed is recognised by its bytes.
//! - **Durable means acknowledged.** `append` returns only on the stream's ack (R3, every
//!   node fsyncs first: `sync_interval: always`). With the cluster out of reach it fails with
//!   [`LogError::Unavailable`] after [`APPEND_DEADLINE`]; it never reports an append the
//!   stream did not acknowledge.
//! - **Local reads.** One ordered consumer follows the stream from seq 1 into an in-memory
//!   mirror of the records; `raw_from`, `get`, `head` and `watch_head` are served from it, so
//!   reads cost what [`super::MemLog`]'s cost and keep working while NATS is away, and the
//!   head moves for events any gateway wrote. A hole or a record that does not decode stops
//!   the mirror at that seq and is reported as corruption naming it.
//!
//! [`EventLog`] is synchronous, so the NATS client runs on a runtime of its own, on its own
//! thread: `append` hands it a publish and blocks on the answer. (Never call `append` on
//! that thread; the writer calls it from its own.)
//!
//! What it costs: the mirror holds every record in memory (like [`super::MemLog`]), and an
//! append takes a round trip to the stream leader plus its replication (~2.5 ms alone on a
//! loopback cluster; the writer's group commit amortises it over concurrent writers).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, ServerAddr};
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use tokio::sync::watch;

use super::{EventLog, LogError, RawIter, RawRecord, check_sequence};
use crate::codec;
use crate::envelope::{Envelope, Seq, SeqRange};

/// The oldest nats-server cluster mode accepts: Jepsen found acknowledged writes lost in
/// membership changes during faults before 2.12.3 (shared/design/scale-out.md).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 3);
/// Replicas the stream must have: a majority of three survives one node's loss.
pub const REQUIRED_REPLICAS: usize = 3;
/// The most events in one append: JetStream's limit on the messages of one atomic batch.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// How long one publish waits for its ack before it is sent again (same message ids, so
/// the retry cannot store anything twice). An ack takes ~2.5 ms on a healthy cluster; a
/// leader election takes seconds, so a short wait and retries beat one long wait.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an append keeps retrying before it fails as unavailable: longer than the
/// longest stall measured while a stream leader was killed (~7 s), so one node's fault is
/// ridden out, short enough that a client hears of a lost cluster within seconds.
pub const APPEND_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between retries of a publish that failed at once (no responders, cluster busy).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long opening waits without progress for the mirror to catch up with the stream.
const CATCH_UP_STALL: Duration = Duration::from_secs(30);
/// How long a conflicting append waits for the mirror to hold the winner's events before it
/// reports the conflict anyway (the caller then retries against what it has).
const CONFLICT_CATCH_UP: Duration = Duration::from_secs(5);
/// The longest pause of the follower between attempts to re-create its consumer.
const FOLLOW_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// JetStream's error codes that matter here (nats-server's `errors.json`).
mod code {
    /// "wrong last sequence: N": another writer appended first.
    pub(super) const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// The same failure without N (2.15 answers it for some expectations).
    pub(super) const WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
    /// "expected last sequence per subject temporarily not ready": back off and retry.
    pub(super) const EXPECTED_LAST_SEQ_NOT_READY: u64 = 10163;
    /// The stream does not exist.
    pub(super) const STREAM_NOT_FOUND: u64 = 10059;
}

/// How to reach and check the stream.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// NATS server URLs (any node of the cluster; the client finds the others).
    pub urls: Vec<String>,
    /// The stream's name (§19: `CAR` by default).
    pub stream: String,
    /// Accept (or create) a stream with fewer than [`REQUIRED_REPLICAS`] replicas: for
    /// development only, since a lost node then loses acknowledged events.
    pub allow_unsafe_stream: bool,
    /// The client's name as the servers show it (the gateway id).
    pub client_name: Option<String>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Audit only (`car-replay --nats`): a missing stream is an error rather than created.
    pub read_only: bool,
}

impl JetStreamOptions {
    /// Options for `stream` on the servers at `urls`, with the checks on.
    pub fn new(urls: Vec<String>, stream: impl Into<String>) -> Self {
        Self {
            urls,
            stream: stream.into(),
            allow_unsafe_stream: false,
            client_name: None,
            // A reachable server answers in milliseconds; a few seconds covers a busy one.
            connect_timeout: Duration::from_secs(5),
            read_only: false,
        }
    }

    /// The stream's one subject. Each stream has its own, so several streams (one per test,
    /// say) share a cluster without overlapping.
    pub fn subject(&self) -> String {
        format!("carlog.{}", self.stream)
    }

    fn urls_text(&self) -> String {
        self.urls.join(",")
    }
}

/// The records followed from the stream, with the head and any damage found.
#[derive(Debug)]
struct Mirror {
    /// `records[i]` is seq `i + 1`.
    records: RwLock<Vec<Arc<Vec<u8>>>>,
    head: watch::Sender<Seq>,
    /// Damage found by the follower at the seq after the head: the mirror stops there.
    damage: Mutex<Option<(Seq, String)>>,
}

impl Mirror {
    fn new() -> Self {
        Self {
            records: RwLock::new(Vec::new()),
            head: watch::Sender::new(0),
            damage: Mutex::new(None),
        }
    }

    fn head(&self) -> Seq {
        *self.head.borrow()
    }

    fn get(&self, seq: Seq) -> Option<Arc<Vec<u8>>> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.records.read().get(index).cloned()
    }

    /// Adds the record of `seq` if it is the next one; a seq already held must hold the same
    /// bytes (our own append, delivered again by the follower).
    fn offer(&self, seq: Seq, bytes: Arc<Vec<u8>>) -> Result<(), LogError> {
        let mut records = self.records.write();
        let next = records.len() as Seq + 1;
        if seq == next {
            records.push(bytes);
            drop(records);
            self.head.send_replace(seq);
            Ok(())
        } else if seq < next {
            if records[(seq - 1) as usize] == bytes {
                Ok(())
            } else {
                Err(LogError::Io(format!(
                    "the stream holds a different event at seq {seq} than this gateway appended there"
                )))
            }
        } else {
            Err(LogError::Gap {
                expected: next,
                found: seq,
            })
        }
    }

    fn damage(&self) -> Option<(Seq, String)> {
        self.damage.lock().clone()
    }

    /// Waits (on the NATS runtime) until the head reaches `seq`; false on timeout.
    async fn reach(&self, seq: Seq, timeout: Duration) -> bool {
        let mut head = self.head.subscribe();
        tokio::time::timeout(timeout, head.wait_for(|h| *h >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The NATS client's runtime, on a thread of its own.
#[derive(Debug)]
struct Io {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Io {
    fn start() -> Result<Self, LogError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        thread::Builder::new()
            .name("car-nats".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = ready_tx.send(Ok(runtime.handle().clone()));
                        // Drives every task of the client until the log is dropped.
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .map_err(|e| LogError::Io(format!("cannot start the NATS client thread: {e}")))?;
        let handle = ready_rx
            .recv()
            .map_err(|_| LogError::Io("the NATS client thread ended at start".into()))?
            .map_err(|e| LogError::Io(format!("cannot start the NATS client runtime: {e}")))?;
        Ok(Self {
            handle,
            stop: Some(stop),
        })
    }

    /// Runs `fut` on the client's runtime and blocks this (other) thread until it is done.
    fn run<F>(&self, fut: F) -> Result<F::Output, LogError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| LogError::Io("the NATS client runtime has stopped".into()))
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The event log in a JetStream stream (see the module docs).
pub struct JetStreamLog {
    options: JetStreamOptions,
    subject: String,
    client: async_nats::Client,
    mirror: Arc<Mirror>,
    follower: tokio::task::JoinHandle<()>,
    // Last: dropping it stops the runtime after everything above is dropped.
    io: Io,
}

impl fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("urls", &self.options.urls)
            .field("stream", &self.options.stream)
            .field("head", &self.mirror.head())
            .finish_non_exhaustive()
    }
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// What the stream answers to a publish.
#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(default)]
    seq: Seq,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// How one attempt to publish a batch ended.
enum Attempt {
    /// Stored at the batch's seqs.
    Stored,
    /// Another writer's events are at the batch's first seq; the stream's head, if said.
    Conflict(Option<Seq>),
    /// Worth trying again (timeout, no responders, cluster busy).
    Retry(String),
    /// Will not get better by retrying.
    Fail(LogError),
}

impl JetStreamLog {
    /// Connects, creates or checks the stream (§19), and follows it until the mirror holds
    /// everything the stream held at the start.
    pub fn open(options: JetStreamOptions) -> Result<Self, LogError> {
        if options.urls.is_empty() {
            return Err(LogError::Unfit("no NATS URL given".into()));
        }
        let addrs = options
            .urls
            .iter()
            .map(|url| {
                url.parse::<ServerAddr>()
                    .map_err(|e| LogError::Unfit(format!("{url:?} is not a NATS URL: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let io = Io::start()?;
        let connect = {
            let options = options.clone();
            async move {
                let mut connect = async_nats::ConnectOptions::new()
                    .connection_timeout(options.connect_timeout)
                    .request_timeout(Some(ACK_TIMEOUT))
                    .event_callback(|event| async move {
                        match event {
                            async_nats::Event::Connected => tracing::info!("NATS connected"),
                            async_nats::Event::Disconnected => {
                                tracing::warn!("NATS disconnected: appends fail until it is back")
                            }
                            other => tracing::info!(event = %other, "NATS"),
                        }
                    });
                if let Some(name) = &options.client_name {
                    connect = connect.name(name);
                }
                connect.connect(addrs).await
            }
        };
        let client = io.run(connect)?.map_err(|e| {
            LogError::Unavailable(format!("cannot reach NATS at {}: {e}", options.urls_text()))
        })?;
        check_server_version(&client.server_info().version)?;
        let stream = io.run({
            let client = client.clone();
            let options = options.clone();
            // The context spawns onto the runtime it is made on: make it there.
            async move { ensure_stream(jetstream::new(client), options).await }
        })??;
        let last = stream.cached_info().state.last_sequence;

        let mirror = Arc::new(Mirror::new());
        let follower = io
            .handle
            .spawn(follow(stream, mirror.clone(), options.stream.clone()));
        let log = Self {
            subject: options.subject(),
            options,
            client,
            mirror,
            follower,
            io,
        };
        log.catch_up_to(last)?;
        tracing::info!(
            stream = %log.options.stream,
            urls = %log.options.urls_text(),
            head = last,
            "following the JetStream log"
        );
        Ok(log)
    }

    /// The options it was opened with.
    pub fn options(&self) -> &JetStreamOptions {
        &self.options
    }

    /// Blocks until the mirror holds `last`, failing when it stops making progress.
    fn catch_up_to(&self, last: Seq) -> Result<(), LogError> {
        let mut seen = self.mirror.head();
        let mut since = Instant::now();
        while self.mirror.head() < last {
            if let Some((seq, reason)) = self.mirror.damage() {
                return Err(LogError::Io(format!(
                    "corrupt event log at seq {seq}: {reason}"
                )));
            }
            let mirror = self.mirror.clone();
            let step = Duration::from_millis(200);
            self.io.run(async move { mirror.reach(last, step).await })?;
            let head = self.mirror.head();
            if head > seen {
                seen = head;
                since = Instant::now();
            } else if since.elapsed() > CATCH_UP_STALL {
                return Err(LogError::Unavailable(format!(
                    "reading stream {} from NATS at {} stalled at seq {head} of {last}",
                    self.options.stream,
                    self.options.urls_text()
                )));
            }
        }
        Ok(())
    }

    fn damage_error(&self) -> Option<LogError> {
        self.mirror
            .damage()
            .map(|(seq, reason)| LogError::Io(format!("corrupt event log at seq {seq}: {reason}")))
    }

    /// Whether the records at `first..` are exactly `encoded` (an earlier attempt of this
    /// very batch landed), once the mirror holds them.
    async fn landed(mirror: Arc<Mirror>, first: Seq, encoded: Arc<Vec<Arc<Vec<u8>>>>) -> bool {
        let last = first + encoded.len() as Seq - 1;
        if !mirror.reach(last, CONFLICT_CATCH_UP).await {
            return false;
        }
        encoded
            .iter()
            .enumerate()
            .all(|(i, bytes)| mirror.get(first + i as Seq).is_some_and(|b| b == *bytes))
    }
}

/// Refuses a server older than [`MIN_SERVER_VERSION`].
fn check_server_version(version: &str) -> Result<(), LogError> {
    let numbers: Vec<u64> = version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .take(3)
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    let found = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
        numbers.get(2).copied().unwrap_or(0),
    );
    if found < MIN_SERVER_VERSION {
        let (a, b, c) = MIN_SERVER_VERSION;
        return Err(LogError::Unfit(format!(
            "nats-server {version} is too old: cluster mode needs {a}.{b}.{c} or newer (acknowledged writes can be lost in older servers)"
        )));
    }
    Ok(())
}

/// The stream as §19 wants it.
fn wanted_config(options: &JetStreamOptions) -> stream::Config {
    stream::Config {
        name: options.stream.clone(),
        subjects: vec![options.subject()],
        storage: stream::StorageType::File,
        num_replicas: REQUIRED_REPLICAS,
        retention: stream::RetentionPolicy::Limits,
        // No limits: an event is never removed (-1 / 0 mean unlimited).
        max_messages: -1,
        max_bytes: -1,
        max_age: Duration::ZERO,
        max_messages_per_subject: -1,
        discard: stream::DiscardPolicy::New,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        allow_atomic_publish: true,
        description: Some("car event log (PROTOCOL.md §19)".into()),
        ..Default::default()
    }
}

/// Creates the stream when it is missing; checks it when it exists.
async fn ensure_stream(
    context: jetstream::Context,
    options: JetStreamOptions,
) -> Result<stream::Stream, LogError> {
    let name = &options.stream;
    let unavailable = |what: &str, e: &dyn fmt::Display| {
        LogError::Unavailable(format!(
            "{what} stream {name} on NATS at {}: {e}",
            options.urls_text()
        ))
    };
    match context.get_stream(name).await {
        Ok(stream) => {
            check_stream(stream.cached_info(), &options)?;
            Ok(stream)
        }
        Err(err)
            if matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code().0 == code::STREAM_NOT_FOUND) =>
        {
            if options.read_only {
                return Err(LogError::Unfit(format!(
                    "there is no stream {name} on NATS at {}",
                    options.urls_text()
                )));
            }
            let mut config = wanted_config(&options);
            if options.allow_unsafe_stream {
                // Development: whatever the cluster can place, up to three.
                config.num_replicas = 1;
            }
            context.create_stream(config).await.map_err(|e| {
                LogError::Unfit(format!(
                    "cannot create stream {name} (file storage, {} replicas) on NATS at {}: {e}",
                    if options.allow_unsafe_stream {
                        1
                    } else {
                        REQUIRED_REPLICAS
                    },
                    options.urls_text()
                ))
            })
        }
        Err(err) => Err(unavailable("cannot look up", &err)),
    }
}

/// Refuses a stream that could lose, remove or misplace events.
fn check_stream(info: &stream::Info, options: &JetStreamOptions) -> Result<(), LogError> {
    let config = &info.config;
    let name = &config.name;
    let mut wrong = Vec::new();
    if config.storage != stream::StorageType::File {
        wrong.push("it is not file-stored".to_owned());
    }
    if config.num_replicas < REQUIRED_REPLICAS && !options.allow_unsafe_stream {
        wrong.push(format!(
            "it has {} replica(s), fewer than {REQUIRED_REPLICAS} (--allow-unsafe-stream accepts that, for development)",
            config.num_replicas
        ));
    }
    if config.subjects != [options.subject()] {
        wrong.push(format!(
            "its subjects are {:?}, not [{:?}]",
            config.subjects,
            options.subject()
        ));
    }
    if config.max_messages > 0
        || config.max_bytes > 0
        || !config.max_age.is_zero()
        || config.max_messages_per_subject > 0
    {
        wrong.push("it has an age, count or size limit (events would be removed)".into());
    }
    if config.retention != stream::RetentionPolicy::Limits {
        wrong.push("its retention is not `limits` (events would be removed)".into());
    }
    if !config.deny_delete || !config.deny_purge {
        wrong.push("it allows deleting or purging messages".into());
    }
    if !config.allow_atomic_publish {
        wrong.push("it does not allow atomic batch publish".into());
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(LogError::Unfit(format!(
            "stream {name} is unfit for the car event log: {}",
            wrong.join("; ")
        )))
    }
}

/// Follows the stream into the mirror, from the mirror's head on, for as long as the log
/// lives: one ordered consumer, re-created from where the mirror is after any failure.
async fn follow(stream: stream::Stream, mirror: Arc<Mirror>, name: String) {
    let mut backoff = RETRY_PAUSE;
    loop {
        let start = mirror.head() + 1;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match messages {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    let message = match message {
                        Ok(message) => message,
                        Err(err) => {
                            tracing::warn!(stream = %name, %err, "following the stream failed; following again");
                            break;
                        }
                    };
                    backoff = RETRY_PAUSE;
                    let seq = match message.info() {
                        Ok(info) => info.stream_sequence,
                        Err(err) => {
                            tracing::warn!(stream = %name, %err, "a message without stream info");
                            break;
                        }
                    };
                    if let Err(reason) = codec::decode(seq, &message.payload) {
                        stop_at(&mirror, seq, reason.to_string());
                        return;
                    }
                    match mirror.offer(seq, Arc::new(message.payload.to_vec())) {
                        Ok(()) => {}
                        Err(LogError::Gap { expected, found }) => {
                            stop_at(
                                &mirror,
                                expected,
                                format!("the stream has no seq {expected} (next found: {found})"),
                            );
                            return;
                        }
                        Err(err) => {
                            stop_at(&mirror, seq, err.to_string());
                            return;
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(stream = %name, %err, from = start, "cannot follow the stream yet");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(FOLLOW_BACKOFF_MAX);
    }
}

fn stop_at(mirror: &Mirror, seq: Seq, reason: String) {
    tracing::error!(seq, %reason, "corrupt event log in the stream: no longer following it");
    *mirror.damage.lock() = Some((seq, reason));
}

/// Publishes `encoded` (seqs `first..`) once: one message, or one atomic batch.
async fn publish_once(
    client: &async_nats::Client,
    subject: &str,
    stream: &str,
    first: Seq,
    ids: &[String],
    encoded: &[Arc<Vec<u8>>],
) -> Attempt {
    let n = encoded.len();
    let batch_id = (n > 1).then(|| uuid::Uuid::new_v4().simple().to_string());
    for (i, bytes) in encoded.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Stream", stream);
        if i == 0 {
            headers.insert(
                "Nats-Expected-Last-Sequence",
                (first - 1).to_string().as_str(),
            );
        }
        match &batch_id {
            None => headers.insert("Nats-Msg-Id", ids[i].as_str()),
            Some(batch) => {
                headers.insert("Nats-Batch-Id", batch.as_str());
                headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            }
        }
        let payload = bytes::Bytes::copy_from_slice(bytes);
        if i + 1 < n {
            // Within a batch: stored only with the commit, so no answer to wait for.
            if let Err(e) = client
                .publish_with_headers(subject.to_owned(), headers, payload)
                .await
            {
                return Attempt::Retry(format!("sending a batch failed: {e}"));
            }
            continue;
        }
        if batch_id.is_some() {
            headers.insert("Nats-Batch-Commit", "1");
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload)
            .timeout(Some(ACK_TIMEOUT));
        let answer = match client.send_request(subject.to_owned(), request).await {
            Ok(answer) => answer,
            Err(e) => return Attempt::Retry(format!("no ack: {e}")),
        };
        let reply: Reply = match serde_json::from_slice(&answer.payload) {
            Ok(reply) => reply,
            Err(e) => return Attempt::Retry(format!("an ack that does not parse: {e}")),
        };
        return judge(reply, first, n);
    }
    Attempt::Fail(LogError::Io("an empty batch was published".into()))
}

/// What an answer of the stream means for a batch of `n` events from `first`.
fn judge(reply: Reply, first: Seq, n: usize) -> Attempt {
    let last = first + n as Seq - 1;
    if let Some(error) = reply.error {
        return match error.err_code {
            code::WRONG_LAST_SEQUENCE => Attempt::Conflict(
                error
                    .description
                    .rsplit(':')
                    .next()
                    .and_then(|n| n.trim().parse().ok()),
            ),
            code::WRONG_LAST_SEQUENCE_CONSTANT => Attempt::Conflict(None),
            code::EXPECTED_LAST_SEQ_NOT_READY => {
                Attempt::Retry(format!("stream not ready: {}", error.description))
            }
            // 503s (no leader now, cluster busy) pass; anything else is for good.
            _ if error.code == 503 => Attempt::Retry(error.description),
            _ => Attempt::Fail(LogError::Io(format!(
                "the stream refused the append (error {} / {}): {}",
                error.code, error.err_code, error.description
            ))),
        };
    }
    if reply.seq != last {
        return Attempt::Fail(LogError::Io(format!(
            "the stream stored seqs {first}..={last} at seq {} instead{}",
            reply.seq,
            if reply.duplicate { " (duplicate)" } else { "" }
        )));
    }
    if n > 1 && reply.count.is_some_and(|count| count != n as u64) {
        return Attempt::Fail(LogError::Io(format!(
            "the stream stored {} of a batch of {n}",
            reply.count.unwrap_or(0)
        )));
    }
    Attempt::Stored
}

impl EventLog for JetStreamLog {
    fn append(&self, batch: &[Envelope]) -> Result<SeqRange, LogError> {
        let Some(head_env) = batch.first() else {
            return check_sequence(self.mirror.head(), batch);
        };
        if let Some(err) = self.damage_error() {
            return Err(err);
        }
        if batch.len() > MAX_BATCH_EVENTS {
            return Err(LogError::BatchTooLarge {
                events: batch.len(),
                max: MAX_BATCH_EVENTS,
            });
        }
        let first = head_env.seq;
        let range = check_sequence(first.saturating_sub(1), batch)?;
        if first == 0 {
            return Err(LogError::OutOfSequence {
                expected: 1,
                got: 0,
            });
        }
        let mut encoded = Vec::with_capacity(batch.len());
        for env in batch {
            encoded.push(Arc::new(codec::encode(env)?));
        }
        let encoded = Arc::new(encoded);
        let ids: Vec<String> = batch.iter().map(|e| e.event_id.to_string()).collect();
        let client = self.client.clone();
        let subject = self.subject.clone();
        let stream = self.options.stream.clone();
        let mirror = self.mirror.clone();
        let urls = self.options.urls_text();
        let outcome = self.io.run({
            let encoded = encoded.clone();
            async move {
                let deadline = Instant::now() + APPEND_DEADLINE;
                loop {
                    let attempt =
                        publish_once(&client, &subject, &stream, first, &ids, &encoded).await;
                    match attempt {
                        Attempt::Stored => return Ok(()),
                        Attempt::Fail(err) => return Err(err),
                        Attempt::Conflict(head) => {
                            // The winner may be this very batch: an earlier attempt whose
                            // ack was lost (its bytes, event ids included, are unique).
                            if head.is_none_or(|h| h >= range.end() - 1)
                                && JetStreamLog::landed(mirror.clone(), first, encoded.clone())
                                    .await
                            {
                                return Ok(());
                            }
                            let head = match head {
                                Some(head) => head,
                                None => stream_head(&client, &stream).await.unwrap_or(first),
                            };
                            mirror.reach(head, CONFLICT_CATCH_UP).await;
                            return Err(LogError::Conflict { head });
                        }
                        Attempt::Retry(reason) => {
                            if Instant::now() >= deadline {
                                return Err(LogError::Unavailable(format!(
                                    "NATS at {urls} did not acknowledge the append within {}s ({reason}); it may or may not be in the log",
                                    APPEND_DEADLINE.as_secs()
                                )));
                            }
                            tracing::debug!(%reason, first, "retrying a publish");
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                }
            }
        })?;
        outcome?;
        for (i, bytes) in encoded.iter().enumerate() {
            self.mirror.offer(first + i as Seq, bytes.clone())?;
        }
        Ok(range)
    }

    fn admit_next(&self) -> Result<(), LogError> {
        if let Some(err) = self.damage_error() {
            return Err(err);
        }
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(LogError::Unavailable(format!(
                "NATS at {} is unreachable ({state:?}); nothing was recorded",
                self.options.urls_text()
            ))),
        }
    }

    fn max_batch_events(&self) -> usize {
        MAX_BATCH_EVENTS
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn raw_from(&self, from: Seq) -> RawIter<'_> {
        let mut next = from.max(1);
        let mut done = false;
        Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            match self.mirror.get(next) {
                Some(bytes) => {
                    let seq = next;
                    next += 1;
                    Some(Ok((seq, RawRecord::shared(bytes))))
                }
                None => {
                    done = true;
                    match self.mirror.damage() {
                        Some((seq, reason)) if seq == next => Some(Err(LogError::Io(format!(
                            "corrupt event log at seq {seq}: {reason}"
                        )))),
                        _ => None,
                    }
                }
            }
        }))
    }

    fn head(&self) -> Seq {
        self.mirror.head()
    }

    fn watch_head(&self) -> watch::Receiver<Seq> {
        self.mirror.head.subscribe()
    }
}

/// The stream's last seq, as its leader says.
async fn stream_head(client: &async_nats::Client, stream: &str) -> Option<Seq> {
    let context = jetstream::new(client.clone());
    let stream = context.get_stream_no_info(stream).await.ok()?;
    stream
        .get_info()
        .await
        .ok()
        .map(|info| info.state.last_sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_2_12_3_are_refused() {
        assert!(check_server_version("2.9.10").is_err());
        assert!(check_server_version("2.12.2").is_err());
        assert!(check_server_version("2.12.3").is_ok());
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("3.0.0-beta.1").is_ok());
        let err = check_server_version("2.10.0").unwrap_err().to_string();
        assert!(err.contains("2.10.0") && err.contains("2.12.3"), "{err}");
    }

    #[test]
    fn a_conflict_names_the_head_when_the_stream_says_it() {
        let reply = |code, description: &str| Reply {
            seq: 0,
            duplicate: false,
            count: None,
            error: Some(ApiError {
                code: 400,
                err_code: code,
                description: description.into(),
            }),
        };
        assert!(matches!(
            judge(reply(10071, "wrong last sequence: 41"), 5, 1),
            Attempt::Conflict(Some(41))
        ));
        assert!(matches!(
            judge(reply(10164, "wrong last sequence"), 5, 1),
            Attempt::Conflict(None)
        ));
        assert!(matches!(
            judge(reply(10163, "not ready"), 5, 1),
            Attempt::Retry(_)
        ));
    }

    #[test]
    fn an_ack_at_another_seq_is_an_error_and_a_duplicate_at_ours_is_stored() {
        let ack = |seq, duplicate| Reply {
            seq,
            duplicate,
            count: None,
            error: None,
        };
        assert!(matches!(judge(ack(7, false), 7, 1), Attempt::Stored));
        assert!(matches!(judge(ack(7, true), 7, 1), Attempt::Stored));
        assert!(matches!(judge(ack(8, true), 7, 1), Attempt::Fail(_)));
        assert!(matches!(judge(ack(9, false), 7, 3), Attempt::Stored));
    }
}
