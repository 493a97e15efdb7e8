//! Upgrades a store written by an older tracer in place, when an
//! aggregator opens it: each column added since its version
//! (`schema::ADDED`) is added to every table that holds the rows (on a
//! cluster each shard's `_local` table first, then the `Distributed` one,
//! whose inserts name the column); a store before version 5 gets
//! `http_keys` filled from `http_index` and `hosts` from `batches`; then
//! the version is recorded.
//!
//! Several aggregators may open an older store at once. Each checks that
//! the column is missing before adding it, and an `ALTER` that fails
//! because another one added the column in between is not an error.

use clickhouse::Row;
use serde::Deserialize;

use super::{ClickhouseStore, Config, ch_err, layout::Table, schema, sql::lit};
use crate::aggregator::store::{Result, StoreError};

impl ClickhouseStore {
    /// Adds the columns of the versions after `found` (at least 1) and
    /// says which through `log`.
    pub(super) fn upgrade(&self, config: &Config, found: u64) -> Result<()> {
        for added in schema::ADDED
            .iter()
            .filter(|a| u64::from(a.version) > found)
        {
            for t in &self.with_columns_of(config, added.table) {
                self.add_column(config, t, added)?;
            }
        }
        if found < 5 {
            self.fill_http_keys(config)?;
            let sql = schema::HOSTS_FROM_BATCHES.replace("{db}", &self.db);
            self.exec(&sql).map_err(|e| {
                StoreError::Open(format!(
                    "upgrading {}.hosts to schema version 5: {e}",
                    self.db
                ))
            })?;
        }
        log::info!(
            "ClickHouse database {} upgraded from tracer schema version {found} to {}",
            self.db,
            schema::SCHEMA_VERSION
        );
        Ok(())
    }

    /// Fills `http_keys` (new in version 5) from the exchanges stored
    /// before: on a cluster each shard's from its own `http_index_local`
    /// (both spread by host, so the rows stay on their shard). Two
    /// aggregators upgrading at once both fill it; a trace's lookups and
    /// the clock estimates read each exchange once whatever the copies
    /// (`stitch.rs`, `exchanges_by` and `distinct`).
    fn fill_http_keys(&self, config: &Config) -> Result<()> {
        for t in self.holding(config, "http_index") {
            let into = t.name.replacen("http_index", "http_keys", 1);
            log::info!(
                "filling {}.{into} on {} from {} (client calls by host, for the clock \
                 estimates; each exchange under its request ids, for traces)",
                self.db,
                t.url,
                t.name
            );
            for sql in schema::http_keys_from(&self.db, &into, &t.name) {
                self.note(&sql, None, None);
                self.block_on(t.client.query_raw(&sql).execute())
                    .map_err(|e| {
                        StoreError::Open(format!(
                            "upgrading {}.{into} on {} to schema version 5: {}",
                            self.db,
                            t.url,
                            ch_err(e)
                        ))
                    })?;
            }
        }
        Ok(())
    }

    fn add_column(&self, config: &Config, t: &Table, a: &schema::Added) -> Result<()> {
        if self.has_column(config, t, a.column)? {
            return Ok(());
        }
        let sql = format!(
            "ALTER TABLE {}.{} ADD COLUMN {} {} AFTER {}",
            self.db, t.name, a.column, a.ty, a.after
        );
        self.note(&sql, None, None);
        match self.block_on(t.client.query_raw(&sql).execute()) {
            Ok(()) => Ok(()),
            // Another aggregator added it meanwhile.
            Err(_) if self.has_column(config, t, a.column)? => Ok(()),
            Err(e) => Err(StoreError::Open(format!(
                "upgrading {}.{} on {} to schema version {}: {}",
                self.db,
                t.name,
                t.url,
                a.version,
                ch_err(e)
            ))),
        }
    }

    fn has_column(&self, config: &Config, t: &Table, column: &str) -> Result<bool> {
        #[derive(Row, Deserialize)]
        struct Found {
            n: u64,
        }
        let sql = format!(
            "SELECT toUInt64(count()) AS n FROM system.columns \
             WHERE database = {} AND table = {} AND name = {}",
            lit(&config.database),
            lit(&t.name),
            lit(column)
        );
        let found: Vec<Found> = self
            .block_on(t.client.query_raw(&sql).fetch_all())
            .map_err(ch_err)?;
        self.note(&sql, None, Some(found.len()));
        Ok(found.first().is_some_and(|f| f.n > 0))
    }
}
