//! Values the ingest path reads from ClickHouse after every group, reused
//! for a moment instead: each read is a query, ~1.6 ms of the server's CPU
//! however small the table (measured on 18.16), and a group of 30k events
//! costs the server ~60 ms in all. Only ingest uses them, never a query's
//! answer, and this aggregator's own writes clear them at once; another
//! aggregator's writes show within [`FRESH_FOR`].

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::aggregator::store::Result;

/// How long a value is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// One such value: empty until read, then reused for [`FRESH_FOR`].
pub struct Fresh<T>(Mutex<Option<(Instant, T)>>);

impl<T> Default for Fresh<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Clone> Fresh<T> {
    /// The value, from `read` when it is older than [`FRESH_FOR`] or was
    /// cleared. A failed read is not kept.
    pub fn get(&self, read: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some((at, v)) = &*self.0.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(v.clone());
        }
        let v = read()?;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    /// Forgets the value: the next [`Fresh::get`] reads it.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_value_is_reused_until_cleared_or_stale_and_a_failed_read_is_not_kept() {
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok(reads.get())
        };
        let fresh = Fresh::default();
        assert_eq!(fresh.get(read).unwrap(), 1);
        assert_eq!(fresh.get(read).unwrap(), 1);
        fresh.clear();
        assert_eq!(fresh.get(read).unwrap(), 2);
        *fresh.0.lock().unwrap() = Some((Instant::now() - FRESH_FOR, 2));
        assert_eq!(fresh.get(read).unwrap(), 3);
        fresh.clear();
        assert!(
            fresh
                .get(|| Err(crate::aggregator::store::StoreError::Commit("down".into())))
                .is_err()
        );
        assert_eq!(fresh.get(read).unwrap(), 4);
    }
}
