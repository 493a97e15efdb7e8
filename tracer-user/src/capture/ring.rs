//! The ring-buffer reader: one task, woken by epoll through AsyncFd (no
//! sleep-and-poll), decoding what the ring holds and handing it to the
//! pipeline as one batch per wakeup through a bounded channel (a hand-off
//! per record costs a task wakeup per record).
//!
//! When the pipeline falls behind, the reader waits on the channel instead
//! of dropping: the kernel ring (megabytes) is the bigger buffer, and if it
//! fills, the probes count every record they could not reserve, so the loss
//! is still reported (as `lost` events with `stage: ring`).

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
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                if !drain(guard.get_inner_mut(), &tx, &stats).await {
                    return Ok(());
                }
                guard.clear_ready();
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
