//! `car-cluster-bench`: what cluster mode costs a writer, measured side by side in one run.
//!
//! The same single [`Writer`] (group commit, as the daemon uses it) appends one small event
//! per job from `--concurrency` tasks for `--secs` seconds, first over a [`SledLog`] in a
//! fresh temporary directory, then over a [`JetStreamLog`] on a fresh stream of the cluster
//! at `--nats` (scripts/nats-cluster.sh); it prints acknowledged appends per second for
//! each and their ratio. Every append counted is durable (fsynced by sled; acknowledged by
//! an R3 stream whose nodes fsync first).
//!
//! ```sh
//! scripts/nats-cluster.sh start
//! cargo run --release -p car-events --bin car-cluster-bench -- --nats "$(scripts/nats-cluster.sh urls)"
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use car_events::event::{DaemonStopped, Event};
use car_events::log::{JetStreamLog, JetStreamOptions};
use car_events::{EventLog, OpenOptions, SledLog, Stamper, Writer};
use clap::Parser;

/// Appends/s through one writer: sled vs JetStream.
#[derive(Debug, Parser)]
struct Args {
    /// NATS URLs of the cluster, comma-separated.
    #[arg(long, value_delimiter = ',')]
    nats: Vec<String>,
    /// Concurrent appenders, comma-separated: one row per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 512])]
    concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    secs: u64,
}

fn event() -> Event {
    // ~200 bytes encoded: the size of a small turns batch's envelope.
    Event::DaemonStopped(DaemonStopped {
        reason: "x".repeat(160),
    })
}

/// Acknowledged appends per second through one writer over `log`.
fn measure(log: Arc<dyn EventLog>, concurrency: usize, secs: u64) -> anyhow::Result<f64> {
    let (writer, thread) = Writer::spawn(log, (), Stamper::system());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let elapsed = runtime.block_on(async {
        let until = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let writer = writer.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    while Instant::now() < until {
                        writer.append(vec![event()]).await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, car_events::WriteError>(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        writer.shutdown().await;
        Ok::<_, anyhow::Error>(started.elapsed())
    })?;
    thread.join();
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.nats.is_empty(), "--nats URL[,URL…] is required");
    println!("concurrency  sled appends/s  jetstream appends/s  jetstream/sled");
    for &concurrency in &args.concurrency {
        let dir = std::env::temp_dir().join(format!("car-cluster-bench-{}", uuid::Uuid::new_v4()));
        let sled = SledLog::open(&dir, OpenOptions::default())
            .with_context(|| format!("opening sled in {}", dir.display()))?;
        let sled_rate = measure(Arc::new(sled), concurrency, args.secs)?;
        std::fs::remove_dir_all(&dir).ok();
        let stream = format!("BENCH_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let js = JetStreamLog::open(JetStreamOptions::new(args.nats.clone(), stream))?;
        let js_rate = measure(Arc::new(js), concurrency, args.secs)?;
        println!(
            "{concurrency:>11}  {sled_rate:>14.0}  {js_rate:>19.0}  {:>14.2}",
            js_rate / sled_rate
        );
    }
    Ok(())
}
