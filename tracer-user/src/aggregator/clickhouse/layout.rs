//! `http_index` tables of an older layout: found when an aggregator
//! starts (a warning), rebuilt by `tracer migrate --rebuild-http-index`
//! (docs/aggregator.md, "Flat as the store grows").
//!
//! An `http_index` created before 2026-12-06 has one partition, so its
//! parts do not record the range of start times they hold and the
//! time-bounded lookups after each group (`stitch::after_ingest`) read all
//! of it: ingest slows as the store grows. 18.16 cannot repartition a
//! table in place, so a rebuild copies it into a table of the current
//! layout which then takes its name. The copy is the table's own rows, not
//! a re-derivation from `events`: the same ids and commits.

use clickhouse::{Client, Row};
use serde::Deserialize;

use super::{ClickhouseStore, Config, ch_err, schema, sql::lit};
use crate::aggregator::store::{Result, StoreError};

/// One table: where it is and what it is called.
pub(super) struct Table {
    pub client: Client,
    /// The server's URL, for messages.
    pub url: String,
    pub name: String,
}

#[derive(Row, Deserialize)]
struct Key {
    partition_key: String,
}

#[derive(Row, Deserialize)]
struct Rows {
    n: u64,
}

impl ClickhouseStore {
    /// The tables that hold the rows of `table` (`events` or
    /// `http_index`): this server's, or on a cluster each shard's
    /// `{table}_local`.
    pub(super) fn holding(&self, config: &Config, table: &str) -> Vec<Table> {
        if config.shards.is_empty() {
            return vec![self.here(config, table)];
        }
        config
            .shards
            .iter()
            .map(|url| Table {
                client: shard_client(config, url),
                url: url.clone(),
                name: format!("{table}_local"),
            })
            .collect()
    }

    /// Every table with `table`'s columns: on a cluster each shard's
    /// `{table}_local` (for a table spread over them, `schema::SHARDED`),
    /// then the `Distributed` one over them (an `ALTER`
    /// goes in this order: the `Distributed` table's inserts name the
    /// columns); else the one table.
    pub(super) fn with_columns_of(&self, config: &Config, table: &str) -> Vec<Table> {
        let mut out = Vec::new();
        let sharded = schema::SHARDED.iter().any(|&(_, t)| t == table);
        if sharded && !config.shards.is_empty() {
            out = self.holding(config, table);
        }
        out.push(self.here(config, table));
        out
    }

    /// `table` on the server the store talks to.
    pub(super) fn here(&self, config: &Config, table: &str) -> Table {
        Table {
            client: self.client.clone(),
            url: config.url.clone(),
            name: table.to_string(),
        }
    }

    /// Whether `t` exists in `config`'s database without a partition key
    /// (the older layout).
    fn unpartitioned(&self, config: &Config, t: &Table) -> Result<bool> {
        let keys: Vec<Key> = self
            .block_on(
                t.client
                    .query_raw(&format!(
                        "SELECT partition_key FROM system.tables WHERE database = {} AND name = {}",
                        lit(&config.database),
                        lit(&t.name)
                    ))
                    .fetch_all(),
            )
            .map_err(ch_err)?;
        Ok(keys.first().is_some_and(|k| k.partition_key.is_empty()))
    }

    /// The tables of the older layout, as `URL: DB.TABLE` (checked when an
    /// aggregator opens the store).
    pub(super) fn older_http_index(&self, config: &Config) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for t in self.holding(config, "http_index") {
            if self.unpartitioned(config, &t)? {
                out.push(format!("{}: {}.{}", t.url, self.db, t.name));
            }
        }
        Ok(out)
    }

    /// Rebuilds every `http_index` table of the older layout in the
    /// current one; says what it does through `progress`. Returns how many
    /// it rebuilt. Run it while no aggregator writes to the store: rows
    /// inserted during the copy would stay behind in the old table.
    pub fn rebuild_http_index(
        &self,
        config: &Config,
        progress: &mut dyn FnMut(&str),
    ) -> Result<usize> {
        let mut rebuilt = 0;
        for t in self.holding(config, "http_index") {
            if !self.unpartitioned(config, &t)? {
                progress(&format!("{}: {}.{} is current", t.url, self.db, t.name));
                continue;
            }
            let (db, name) = (&self.db, &t.name);
            let (new, old) = (format!("{db}.{name}_rebuilt"), format!("{db}.{name}_old"));
            let n: Vec<Rows> = self
                .block_on(
                    t.client
                        .query_raw(&format!("SELECT count() AS n FROM {db}.{name}"))
                        .fetch_all(),
                )
                .map_err(ch_err)?;
            let rows = n.first().map_or(0, |r| r.n);
            progress(&format!(
                "{}: copying {db}.{name} ({rows} rows) into the current layout ...",
                t.url
            ));
            // A copy left by an interrupted run is made again.
            let steps = [
                format!("DROP TABLE IF EXISTS {new}"),
                format!("DROP TABLE IF EXISTS {old}"),
                schema::http_index(db, &format!("{name}_rebuilt")),
                format!("INSERT INTO {new} SELECT * FROM {db}.{name}"),
                format!("RENAME TABLE {db}.{name} TO {old}, {new} TO {db}.{name}"),
                format!("DROP TABLE {old}"),
            ];
            for sql in &steps {
                self.note(sql, None, None);
                self.block_on(t.client.query_raw(sql).execute())
                    .map_err(|e| StoreError::Backend {
                        backend: super::BACKEND,
                        message: format!("rebuilding {db}.{name} on {}: {}", t.url, ch_err(e)),
                    })?;
            }
            progress(&format!("{}: {db}.{name} rebuilt", t.url));
            rebuilt += 1;
        }
        Ok(rebuilt)
    }
}

/// A client of one shard, logged in as the store is.
pub(super) fn shard_client(config: &Config, url: &str) -> Client {
    let mut client = Client::default().with_url(url).with_validation(false);
    if let Some(u) = &config.user {
        client = client.with_user(u);
    }
    if let Some(p) = &config.password {
        client = client.with_password(p);
    }
    client
}
