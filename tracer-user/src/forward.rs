//! Forwarding the agent's events to the aggregator, at least once.
//!
//! Events are cut into batches (up to `BATCH_EVENTS`, `BATCH_DELAY` after
//! the first event, or as soon as no event came for `BATCH_IDLE`),
//! each written to the on-disk spool *before* it is sent, and deleted only
//! when the aggregator has acknowledged it (it acknowledges after its commit).
//! A batch is identified by (host, run id, seq), so a resend after a lost
//! acknowledgement, an aggregator outage or an agent restart is recognised
//! and stored once. Spool files of earlier runs are sent first after a
//! restart. When the spool exceeds its cap, the oldest batches are deleted
//! and the loss is reported in the stream itself (a `lost` event with
//! `stage: spool` in the next batch) and in the metrics.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use crate::{
    client_tls::{ClientTls, http_client, tls_problem},
    event::{Event, EventData, LossStage},
};

/// Most events in one batch.
pub const BATCH_EVENTS: usize = 2000;
/// Longest an event waits before its batch is cut (keeps `tail -f` live).
pub const BATCH_DELAY: Duration = Duration::from_millis(50);
/// A batch is also cut when no event came for this long: the pipeline
/// hands events over a ring drain at a time (at least every 10 ms), so a
/// pause this long means the burst is over, and a quiet host's line need
/// not wait for `BATCH_DELAY`. Under steady load events keep coming and
/// batches still fill up; and while a batch is being written to the spool
/// (an fsync, a few ms) the next one collects, so batches never outpace
/// the disk.
pub const BATCH_IDLE: Duration = Duration::from_millis(3);
/// Events waiting for the batcher; beyond this they are dropped and counted.
const QUEUE: usize = 65536;

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Base URL of the aggregator, e.g. http://10.0.0.1:7878, or several,
    /// comma-separated: aggregators of one shared store (ClickHouse),
    /// tried in turn when one cannot take a batch.
    pub url: String,
    pub token: String,
    pub host: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// --ca-cert, --client-cert/--client-key for an https:// aggregator.
    pub tls: ClientTls,
}

#[derive(Serialize)]
struct Batch<'a> {
    host: &'a str,
    run_id: &'a str,
    seq: u64,
    events: &'a [Event],
}

/// The agent's side of the queue.
#[derive(Clone)]
pub struct ForwardHandle {
    tx: mpsc::Sender<Event>,
    pub stats: Arc<ForwardStats>,
}

#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Events dropped because the queue to the batcher was full.
    pub queue_dropped: AtomicU64,
    /// Events in batches deleted from a full spool.
    pub spool_dropped: AtomicU64,
    /// Batches acknowledged by the aggregator.
    pub acked_batches: AtomicU64,
    /// Batches the aggregator refused as invalid (4xx other than 401).
    pub rejected_batches: AtomicU64,
}

impl ForwardHandle {
    pub fn push(&self, event: &Event) {
        if self.tx.try_send(event.clone()).is_err() {
            self.stats.queue_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Start the batcher and the sender; returns the handle and a task that
/// finishes once the handle is dropped and everything spooled was sent (or
/// `drain_timeout` passed).
pub fn start(
    cfg: ForwardConfig,
    drain_timeout: Duration,
) -> Result<(ForwardHandle, tokio::task::JoinHandle<()>)> {
    std::fs::create_dir_all(&cfg.spool_dir)
        .with_context(|| format!("creating the spool directory {}", cfg.spool_dir.display()))?;
    let client = client(&cfg)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let stats = Arc::new(ForwardStats::default());
    let wake = Arc::new(Notify::new());
    let run_id = uuid::Uuid::new_v4().to_string();
    let spool = Spool {
        dir: cfg.spool_dir.clone(),
        max_bytes: cfg.spool_max_bytes,
    };
    let batcher = tokio::spawn(batcher(
        rx,
        cfg.host.clone(),
        run_id,
        spool.clone(),
        stats.clone(),
        wake.clone(),
    ));
    let sender_stats = stats.clone();
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender_finished = finished.clone();
    let task = tokio::spawn(async move {
        let sender = tokio::spawn(sender(
            client,
            cfg,
            spool,
            sender_stats,
            wake.clone(),
            sender_finished,
        ));
        // The batcher ends when the handle is dropped, after its last batch.
        let _ = batcher.await;
        finished.store(true, Ordering::SeqCst);
        wake.notify_one();
        let _ = tokio::time::timeout(drain_timeout, sender).await;
    });
    Ok((ForwardHandle { tx, stats }, task))
}

fn client(cfg: &ForwardConfig) -> Result<reqwest::Client> {
    for url in aggregator_urls(&cfg.url) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--aggregator {url} must start with http:// or https://");
        }
    }
    http_client(
        &cfg.tls,
        Duration::from_secs(3),
        Some(Duration::from_secs(10)),
    )
}

/// The base URLs of a comma-separated `--aggregator` list.
pub fn base_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect()
}

/// The ingest URLs of a comma-separated `--aggregator` list.
fn aggregator_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| format!("{}/v1/ingest", u.trim_end_matches('/')))
        .collect()
}

#[derive(Clone)]
struct Spool {
    dir: PathBuf,
    max_bytes: u64,
}

impl Spool {
    /// Batch files, oldest first (names start with a creation timestamp).
    fn files(&self) -> Vec<(PathBuf, u64, u64)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(PathBuf, u64, u64)> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let events = batch_events(&name)?;
                Some((e.path(), e.metadata().ok()?.len(), events))
            })
            .collect();
        files.sort();
        files
    }

    /// Write a batch durably (temp file, fsync, rename), then enforce the cap.
    /// Returns the number of events in batches deleted to make room.
    fn write(&self, name: &str, body: &[u8]) -> Result<u64> {
        use std::io::Write as _;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(name))?;
        let mut dropped = 0;
        let mut files = self.files();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        // Never delete the batch just written.
        while total > self.max_bytes && files.len() > 1 {
            let (path, len, events) = files.remove(0);
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                dropped += events;
            }
        }
        Ok(dropped)
    }
}

/// `<ms>-<run>-<seq>-<events>.zst` -> events
fn batch_events(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".zst")?;
    stem.rsplit('-').next()?.parse().ok()
}

async fn batcher(
    mut rx: mpsc::Receiver<Event>,
    host: String,
    run_id: String,
    spool: Spool,
    stats: Arc<ForwardStats>,
    wake: Arc<Notify>,
) {
    let mut seq = 0u64;
    let mut pending: Vec<Event> = Vec::new();
    let mut reported_queue_drops = 0u64;
    let mut unreported_spool_drops = 0u64;
    loop {
        let first = if pending.is_empty() {
            match rx.recv().await {
                Some(e) => Some(e),
                None => break,
            }
        } else {
            None
        };
        pending.extend(first);
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        let mut closed = false;
        while pending.len() < BATCH_EVENTS {
            let idle = deadline.min(tokio::time::Instant::now() + BATCH_IDLE);
            match tokio::time::timeout_at(idle, rx.recv()).await {
                Ok(Some(e)) => pending.push(e),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // Losses travel with the data, so the aggregator shows them too.
        let queue_drops = stats.queue_dropped.load(Ordering::Relaxed);
        if queue_drops > reported_queue_drops {
            pending.push(loss_event(
                &host,
                queue_drops - reported_queue_drops,
                LossStage::Forward,
            ));
            reported_queue_drops = queue_drops;
        }
        if unreported_spool_drops > 0 {
            pending.push(loss_event(&host, unreported_spool_drops, LossStage::Spool));
            unreported_spool_drops = 0;
        }
        if !pending.is_empty() {
            // On the blocking pool: the spool's fsync must not stall the
            // runtime (the agent's tracing runs on a single thread).
            let written = {
                let (spool, host, run_id, events) = (
                    spool.clone(),
                    host.clone(),
                    run_id.clone(),
                    std::mem::take(&mut pending),
                );
                tokio::task::spawn_blocking(move || {
                    let r = write_batch(&spool, &host, &run_id, seq, &events);
                    (r, events)
                })
                .await
            };
            let result = match written {
                Ok((r, events)) => {
                    pending = events;
                    r
                }
                Err(e) => Err(anyhow::anyhow!("spool writer task failed: {e}")),
            };
            match result {
                Ok(dropped) => {
                    seq += 1;
                    if dropped > 0 {
                        stats.spool_dropped.fetch_add(dropped, Ordering::Relaxed);
                        unreported_spool_drops += dropped;
                        eprintln!(
                            "tracer: spool full ({} bytes): dropped the oldest batches ({dropped} events)",
                            spool.max_bytes
                        );
                    }
                    pending.clear();
                    wake.notify_one();
                }
                Err(e) => {
                    // Disk trouble: keep the events and try again shortly.
                    eprintln!(
                        "tracer: cannot write to the spool {}: {e:#}",
                        spool.dir.display()
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if closed {
            break;
        }
    }
}

fn loss_event(host: &str, count: u64, stage: LossStage) -> Event {
    Event {
        ts_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        host: host.to_string(),
        pid: 0,
        tid: 0,
        comm: String::new(),
        data: EventData::Lost {
            count,
            stage,
            for_kind: None,
        },
    }
}

fn write_batch(spool: &Spool, host: &str, run_id: &str, seq: u64, events: &[Event]) -> Result<u64> {
    let json = serde_json::to_vec(&Batch {
        host,
        run_id,
        seq,
        events,
    })?;
    // One call records the size in the frame: the aggregator then
    // decodes it in one call too (`aggregator::body`).
    let body = zstd::bulk::compress(&json, 3)?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let name = format!("{ms:016}-{run_id}-{seq:012}-{}.zst", events.len());
    spool.write(&name, &body)
}

/// Spooled batches sent at once (see `sender`).
pub const IN_FLIGHT: usize = 8;

async fn sender(
    client: reqwest::Client,
    cfg: ForwardConfig,
    spool: Spool,
    stats: Arc<ForwardStats>,
    wake: Arc<Notify>,
    finished: Arc<std::sync::atomic::AtomicBool>,
) {
    // Failover: a batch that one aggregator cannot take goes to the next
    // (any aggregator of a shared store accepts any batch, and a batch
    // sent twice is stored once); the pause only comes once every
    // aggregator failed.
    let urls = aggregator_urls(&cfg.url);
    let mut current = 0;
    let mut backoff = Duration::from_millis(100);
    let mut down_reported = false;
    loop {
        let files = spool.files();
        if files.is_empty() {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            wake.notified().await;
            continue;
        }
        let mut progressed = true;
        let mut failed_in_turn = 0;
        let mut pending: Vec<PathBuf> = files.into_iter().map(|(path, _, _)| path).collect();
        while !pending.is_empty() {
            let url = &urls[current % urls.len()];
            // Up to IN_FLIGHT batches at once: the aggregator commits
            // concurrent batches as one group, so a backlog (a spool
            // filled during an outage) drains several times faster than
            // one round trip per batch (~100-300 ms each on ClickHouse).
            // Order does not matter: batches are keyed by (host, run_id,
            // seq) and events ordered by time.
            let window = &pending[..pending.len().min(IN_FLIGHT)];
            let results = futures_util::future::join_all(
                window
                    .iter()
                    .map(|path| send_file(&client, url, &cfg.token, &cfg.tls, path)),
            )
            .await;
            let mut done = Vec::new();
            let mut error = None;
            for (path, result) in window.iter().zip(results) {
                match result {
                    Ok(sent) => {
                        let counter = match sent {
                            Sent::Acked => &stats.acked_batches,
                            Sent::Rejected => &stats.rejected_batches,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let _ = std::fs::remove_file(path);
                        done.push(path.clone());
                    }
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            if !done.is_empty() {
                pending.retain(|p| !done.contains(p));
                failed_in_turn = 0;
                backoff = Duration::from_millis(100);
                if down_reported {
                    eprintln!("tracer: aggregator reachable again; sending the spool");
                    down_reported = false;
                }
            }
            match error {
                None => {}
                Some(e) if failed_in_turn + 1 < urls.len() => {
                    failed_in_turn += 1;
                    current += 1;
                    eprintln!(
                        "tracer: {e:#}; trying {}",
                        urls[current % urls.len()].trim_end_matches("/v1/ingest")
                    );
                }
                Some(e) => {
                    current += 1;
                    if !down_reported {
                        eprintln!(
                            "tracer: {e:#}; keeping batches in {} and retrying",
                            cfg.spool_dir.display()
                        );
                        down_reported = true;
                    }
                    progressed = false;
                    break;
                }
            }
        }
        if !progressed {
            // Retry after a growing pause, or sooner if new data arrives.
            let _ = tokio::time::timeout(backoff, wake.notified()).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

enum Sent {
    Acked,
    /// Invalid batch (4xx other than 401): resending cannot help.
    Rejected,
}

async fn send_file(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    tls: &ClientTls,
    path: &Path,
) -> Result<Sent> {
    let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let resp = client
        .post(url)
        .bearer_auth(token)
        .header("content-encoding", "zstd")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => match tls_problem(&e, url.trim_end_matches("/v1/ingest"), tls).await {
            Some(problem) => bail!(problem),
            None => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot reach the aggregator at {url}"))
                );
            }
        },
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(Sent::Acked);
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!("the aggregator at {url} rejected the token (check --token-file)");
    }
    if status.is_client_error() {
        eprintln!(
            "tracer: the aggregator refused batch {} ({status}); dropping it",
            path.display()
        );
        return Ok(Sent::Rejected);
    }
    bail!("the aggregator at {url} answered {status}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aggregator::conformance::log, event::StreamName};

    /// What an agent spools, and so sends, is one zstd frame that records
    /// its size: the aggregator decodes that in one call, not as a stream
    /// (`aggregator::body`), so this is the path every agent's batch takes.
    #[test]
    fn a_spooled_batch_is_one_frame_that_records_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool {
            dir: dir.path().to_path_buf(),
            max_bytes: 1 << 20,
        };
        let events: Vec<Event> = (0..3)
            .map(|i| {
                log(
                    "web-1",
                    1_000 + i,
                    StreamName::Stdout,
                    &format!("hello {i}"),
                )
            })
            .collect();
        assert_eq!(write_batch(&spool, "web-1", "run", 7, &events).unwrap(), 0);
        let files = spool.files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].2, 3);
        let body = std::fs::read(&files[0].0).unwrap();
        let json = serde_json::to_vec(&Batch {
            host: "web-1",
            run_id: "run",
            seq: 7,
            events: &events,
        })
        .unwrap();
        assert_eq!(
            zstd::zstd_safe::find_frame_compressed_size(&body),
            Ok(body.len())
        );
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&body).ok(),
            Some(Some(json.len() as u64))
        );
        assert_eq!(
            crate::aggregator::body::zstd_decompress(&body, 1 << 20).unwrap(),
            json
        );
    }
}
