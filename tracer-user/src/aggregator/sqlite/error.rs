//! SQLite's errors as the store's own: the caller sees what failed, not a
//! rusqlite type.

use crate::aggregator::store::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend {
            backend: "sqlite",
            message: e.to_string(),
        }
    }
}
