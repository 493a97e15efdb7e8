//! WAL checkpoints off the commit path (docs/aggregator.md, "Durability").

use std::{path::Path, sync::mpsc, time::Duration};

use rusqlite::Connection;

use crate::aggregator::store::{Result, StoreError};

/// WAL pages after which the writer checkpoints by itself: a backstop for
/// when the checkpoint thread cannot keep up (~40 MiB).
pub(super) const WRITER_AUTOCHECKPOINT: i64 = 10_000;
/// Least time between two background checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Runs WAL checkpoints on its own thread and connection, so that commits
/// do not wait for them: a checkpoint copies WAL pages into the database
/// and fsyncs it, which SQLite's automatic checkpoint would do inside the
/// committing call. PASSIVE checkpoints never block the writer or readers.
pub(super) struct Checkpointer {
    poke: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA busy_timeout=5000;")?;
        let (poke, pokes) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while pokes.recv().is_ok() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        log::warn!("WAL checkpoint failed (retried after the next commit): {e}");
                    }
                    std::thread::sleep(CHECKPOINT_EVERY);
                }
            })
            .map_err(|e| StoreError::Open(format!("starting the checkpoint thread: {e}")))?;
        Ok(Self {
            poke: Some(poke),
            thread: Some(thread),
        })
    }

    /// After a commit: checkpoint soon (pokes while one runs coalesce).
    pub(super) fn poke(&self) {
        if let Some(p) = &self.poke {
            let _ = p.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.poke = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
