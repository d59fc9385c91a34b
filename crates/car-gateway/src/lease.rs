//! Cluster mode's leases (PROTOCOL.md §19), in a JetStream KV bucket beside the stream:
//! the I/O half of [`car_projections::gateways`], whose pure decisions say what a lost or
//! stopping gateway's end appends.
//!
//! - Heartbeats: every gateway puts the key `gw.<id>` every third of `--gateway-lease`. The
//!   bucket's `max_age` is the lease, so a gateway that stops beating (killed, frozen, cut
//!   off) has no key once the lease has passed since its last beat.
//! - The maintenance lease, key `maint`: one gateway at a time holds it, taken with `create`
//!   (only if absent) and renewed with `update` on its revision, so two gateways never both
//!   believe they hold it for longer than one renewal. A holder that cannot renew (the
//!   lease lapsed, or someone else took it) stops acting as holder at once.
//! - The holder runs what §9 gives the one daemon: retention, and declaring lost every
//!   gateway that serves a session or holds a run in progress and has no heartbeat
//!   ([`maintain`]), which ends its runs `incomplete`/`gateway_lost`.
//!
//! - A gateway judges others only after its own beats have succeeded for a whole lease:
//!   after an outage of the cluster (or at its own start) every live gateway's heartbeat
//!   may have lapsed meanwhile, and each needs up to a third of a lease to beat again.
//!   Without that wait, the first gateway back would declare all the others lost.
//!
//! Why KV rather than the event log: a heartbeat every few seconds per gateway would grow
//! the log forever with nothing worth auditing; KV keeps one message per key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use car_events::event::Event;
use car_projections::gateways::{active_gateways, gateway_lost};

use crate::app::App;
use crate::config::ClusterConfig;

/// The key of the maintenance lease.
const MAINTENANCE_KEY: &str = "maint";
/// Heartbeats and lease renewals happen this many times per lease: a beat or two may be
/// lost (a NATS leader election, a slow ack) before the gateway is taken for dead.
const BEATS_PER_LEASE: u32 = 3;
/// How long one KV operation may take before the gateway treats the cluster as out of
/// reach for this beat (a frozen call must not delay the next beat past the lease).
const KV_TIMEOUT: Duration = Duration::from_secs(2);

/// How long start-up keeps trying its first heartbeat: a bucket just created on a fresh
/// cluster takes a moment before its stream accepts puts ("no stream found for given
/// subject" meanwhile, measured up to ~100 ms here).
const FIRST_BEAT_DEADLINE: Duration = Duration::from_secs(10);
/// The pause between those tries.
const FIRST_BEAT_PAUSE: Duration = Duration::from_millis(100);

/// Why the leases could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("lease bucket {bucket}: {reason}")]
pub struct LeaseError {
    /// The bucket.
    pub bucket: String,
    /// What failed.
    pub reason: String,
}

/// This gateway's heartbeat and its hold on the maintenance lease.
#[derive(Debug)]
pub struct Leases {
    kv: kv::Store,
    gateway_id: String,
    lease: Duration,
    /// The revision of our `maint` key while we hold it; 0 when we do not.
    revision: AtomicU64,
    holder: AtomicBool,
    /// Since when every beat of this gateway succeeded (reset by a failed one).
    healthy_since: parking_lot::Mutex<Instant>,
}

/// The bucket of a stream's leases: one per stream, so clusters of tests on one NATS
/// cluster (each with its own stream) do not share leases.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}_leases")
}

/// The heartbeat key of a gateway. KV keys allow `[-/_=.a-zA-Z0-9]`; anything else in an
/// id becomes `_`.
fn heartbeat_key(gateway_id: &str) -> String {
    let id: String = gateway_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("gw.{id}")
}

impl Leases {
    /// Connects, and opens (or creates) the lease bucket with `max_age` = the lease.
    pub async fn connect(cluster: &ClusterConfig) -> Result<Self, LeaseError> {
        let bucket = bucket_name(&cluster.stream);
        let fail = |reason: String| LeaseError {
            bucket: bucket.clone(),
            reason,
        };
        let addrs = cluster
            .nats_urls
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("not a NATS URL: {e}")))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("car-server {} leases", cluster.gateway_id))
            .request_timeout(Some(KV_TIMEOUT))
            .connect(addrs)
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot reach NATS at {}: {e}",
                    cluster.nats_urls.join(",")
                ))
            })?;
        let js = jetstream::new(client);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                let created = js
                    .create_key_value(kv::Config {
                        bucket: bucket.clone(),
                        description: "car-server gateway heartbeats and the maintenance lease"
                            .into(),
                        history: 1,
                        max_age: cluster.gateway_lease,
                        num_replicas: if cluster.allow_unsafe_stream { 1 } else { 3 },
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(kv) => kv,
                    // Another gateway created it meanwhile.
                    Err(_) => js
                        .get_key_value(&bucket)
                        .await
                        .map_err(|e| fail(e.to_string()))?,
                }
            }
        };
        Ok(Self {
            kv,
            gateway_id: cluster.gateway_id.clone(),
            lease: cluster.gateway_lease,
            revision: AtomicU64::new(0),
            holder: AtomicBool::new(false),
            healthy_since: parking_lot::Mutex::new(Instant::now()),
        })
    }

    /// This gateway's id.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// How often to beat.
    pub fn period(&self) -> Duration {
        (self.lease / BEATS_PER_LEASE).max(Duration::from_millis(100))
    }

    /// Whether this gateway held the maintenance lease at its last beat.
    pub fn holds_maintenance(&self) -> bool {
        self.holder.load(Ordering::Acquire)
    }

    /// Puts this gateway's heartbeat.
    pub async fn beat(&self) -> Result<(), String> {
        let put = self.kv.put(
            heartbeat_key(&self.gateway_id),
            self.gateway_id.clone().into(),
        );
        let beat = match tokio::time::timeout(KV_TIMEOUT, put).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        };
        if beat.is_err() {
            *self.healthy_since.lock() = Instant::now();
        }
        beat
    }

    /// The heartbeat at start-up, tried again until [`FIRST_BEAT_DEADLINE`].
    pub async fn first_beat(&self) -> Result<(), String> {
        let deadline = Instant::now() + FIRST_BEAT_DEADLINE;
        loop {
            match self.beat().await {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(FIRST_BEAT_PAUSE).await,
            }
        }
    }

    /// Whether this gateway's beats have succeeded for a whole lease, so that a missing
    /// heartbeat of another gateway means it stopped beating (module docs).
    pub fn may_judge(&self) -> bool {
        self.healthy_since.lock().elapsed() >= self.lease
    }

    /// Takes or renews the maintenance lease; whether this gateway holds it now.
    pub async fn hold(&self) -> bool {
        let held = tokio::time::timeout(KV_TIMEOUT, self.take_or_renew())
            .await
            .ok()
            .flatten();
        self.revision.store(held.unwrap_or(0), Ordering::Release);
        self.holder.store(held.is_some(), Ordering::Release);
        held.is_some()
    }

    async fn take_or_renew(&self) -> Option<u64> {
        let me: kv::Store = self.kv.clone();
        let value = || self.gateway_id.clone().into();
        let revision = self.revision.load(Ordering::Acquire);
        if revision != 0 {
            return me.update(MAINTENANCE_KEY, value(), revision).await.ok();
        }
        match me.create(MAINTENANCE_KEY, value()).await {
            Ok(revision) => Some(revision),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Ours from a previous life of this gateway (same id): take it back.
                let entry = me.entry(MAINTENANCE_KEY).await.ok()??;
                let ours = entry.operation == kv::Operation::Put
                    && entry.value.as_ref() == self.gateway_id.as_bytes();
                if ours {
                    me.update(MAINTENANCE_KEY, value(), entry.revision)
                        .await
                        .ok()
                } else {
                    None
                }
            }
            Err(_) => None,
        }
    }

    /// Whether `gateway_id` has a heartbeat (`Err`: the bucket could not be read, so
    /// nothing may be concluded).
    pub async fn is_alive(&self, gateway_id: &str) -> Result<bool, String> {
        match tokio::time::timeout(KV_TIMEOUT, self.kv.get(heartbeat_key(gateway_id))).await {
            Ok(Ok(value)) => Ok(value.is_some()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// A clean stop: removes the heartbeat and gives the maintenance lease up, so another
    /// gateway takes it at once rather than after the lease. Best effort.
    pub async fn release(&self) {
        let heartbeat = self.kv.delete(heartbeat_key(&self.gateway_id));
        let _ = tokio::time::timeout(KV_TIMEOUT, heartbeat).await;
        let revision = self.revision.swap(0, Ordering::AcqRel);
        self.holder.store(false, Ordering::Release);
        if revision != 0 {
            let lease = self
                .kv
                .delete_expect_revision(MAINTENANCE_KEY, Some(revision));
            let _ = tokio::time::timeout(KV_TIMEOUT, lease).await;
        }
    }
}

/// Beats, holds the maintenance lease when it can, and, while holding it, declares lost
/// every gateway that serves a session or holds a run in progress and has no heartbeat.
/// Ends with the daemon.
pub async fn maintain(app: Arc<App>, leases: Arc<Leases>) {
    let mut ticks = tokio::time::interval(leases.period());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = app.stopping.cancelled() => return,
        }
        if let Err(err) = leases.beat().await {
            tracing::warn!(%err, "gateway heartbeat failed");
        }
        let was_holder = leases.holds_maintenance();
        let holder = leases.hold().await;
        if holder != was_holder {
            tracing::info!(
                holder,
                gateway = leases.gateway_id(),
                "maintenance lease {}",
                if holder { "taken" } else { "lost" }
            );
        }
        if holder && leases.may_judge() {
            declare_lost(&app, &leases).await;
        }
    }
}

/// The holder's check: every other active gateway without a heartbeat is declared lost.
async fn declare_lost(app: &Arc<App>, leases: &Arc<Leases>) {
    let me = leases.gateway_id().to_owned();
    let candidates: Vec<String> = {
        let state = app.writer.state();
        active_gateways(&state, &me)
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    for gateway in candidates {
        match leases.is_alive(&gateway).await {
            Ok(true) => {}
            Ok(false) => {
                let (lost, by) = (gateway.clone(), me.clone());
                match app
                    .append(move |state| gateway_lost(state, &lost, &by))
                    .await
                {
                    Ok((events, range)) if !events.is_empty() => {
                        let runs = events
                            .iter()
                            .filter(|e| matches!(e, Event::RunEnded(_)))
                            .count();
                        tracing::warn!(
                            gateway = %gateway,
                            runs_ended = runs,
                            first_seq = range.first,
                            "gateway declared lost: its heartbeat lapsed"
                        );
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::error!(%err, gateway = %gateway, "could not declare a gateway lost")
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot read the heartbeats: no gateway declared lost");
                return;
            }
        }
    }
}
