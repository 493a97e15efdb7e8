//! The ring-buffer reader: one task, woken through AsyncFd (epoll) when the
//! probes force a wakeup — once the ring holds an eighth of its size — and
//! by a 10 ms flush timer otherwise, so records are read in batches instead
//! of one epoll round trip each (see `emit::submit_flags` in the probes). It
//! decodes what the ring holds and hands it to the pipeline as one batch per
//! drain through a bounded channel.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};

use crate::decode::{Record, decode};

/// Counters the reader shares with the pipeline.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub decode_errors: AtomicU64,
}

/// Longest a record waits in a quiet ring before it is read. The probes
/// wake the reader only when a good part of the ring is full (batching); this
/// flush bounds the latency of everything else (a live `tail -f`).
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Ring fill level that wakes the reader at once: an eighth of the ring,
/// leaving room for a burst while the reader catches up.
pub fn wakeup_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 8).max(4096)
}

/// Read until `stop` turns true, then drain what is left and return.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<Record>>,
    stats: Arc<ReaderStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns
    // the RingBuf, and always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                if !drain(guard.get_inner_mut(), &tx, &stats).await {
                    return Ok(());
                }
                guard.clear_ready();
            }
            _ = flush.tick() => {
                if !drain(fd.get_mut(), &tx, &stats).await {
                    return Ok(());
                }
            }
            _ = stop.changed() => {
                drain(fd.get_mut(), &tx, &stats).await;
                return Ok(());
            }
        }
    }
}

/// Most records in one batch (bounds the memory a burst takes at once).
const BATCH: usize = 4096;

/// Forward every record in the ring. False when the pipeline has gone.
async fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Vec<Record>>,
    stats: &ReaderStats,
) -> bool {
    loop {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            // Decode into an owned record and release the ring slot before
            // awaiting the channel.
            let decoded = match ring.next() {
                Some(item) => decode(&item),
                None => break,
            };
            match decoded {
                Ok(record) => batch.push(record),
                Err(e) => {
                    stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("undecodable ring record: {e}");
                }
            }
        }
        if batch.is_empty() {
            return true;
        }
        let full = batch.len() == BATCH;
        if tx.send(batch).await.is_err() {
            return false;
        }
        if !full {
            return true;
        }
    }
}
