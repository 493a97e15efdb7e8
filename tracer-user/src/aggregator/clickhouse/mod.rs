//! The ClickHouse backend (`tracer aggregator --store
//! clickhouse://HOST:8123/DB`): the store of a cluster that outgrows one
//! machine, shared by any number of stateless aggregators.
//!
//! Files: `schema.rs` (tables, versions), `sql.rs` (literals, filters, the
//! regex prefilter), `ids.rs` (event ids without a shared counter),
//! `rowbinary.rs` (insert bodies), `fresh.rs` (what ingest reads after
//! every group, reused for a second), `stitch.rs` (clock offsets after
//! ingest, traces at query time), `layout.rs` (`http_index` tables of an
//! older layout, and their rebuild), `upgrade.rs` (a store of an older
//! schema version brought up to this one), `local_server.rs` (a clickhouse-server of
//! our own, for tests and `tracer demo`), `tests.rs` (the conformance suite on a
//! ClickHouse server the test starts, and every statement checked on a
//! current ClickHouse through chdb).
//!
//! What differs from SQLite, and why:
//! - **Commit.** ClickHouse has no transactions. A group's events are
//!   inserted first, then one row per batch into `batches`; a query sees
//!   an event only when its batch's row exists and is that batch's first
//!   commit ([`sql::committed`]). So a batch is visible whole or not at
//!   all, an insert that fails half-way leaves nothing visible (the agent
//!   retries), and a batch stored twice — a retry to another aggregator
//!   racing the first — counts once. A batch already in `batches` when it
//!   arrives is answered `duplicate` without inserting anything. The 200
//!   goes out after both inserts returned (ClickHouse wrote the parts).
//! - **Clock corrections** are applied when reading (`raw_ts + offset`,
//!   [`sql::Offsets::ts_expr`]) rather than written into each event, so a
//!   new estimate moves all of a host's events at no cost and every
//!   aggregator shows the same times.
//! - **Stitching** keeps only what is shared by every aggregator in
//!   ClickHouse: each host pair's clock difference (`host_pairs`,
//!   re-estimated after a group with http events, from the pair's latest
//!   exchanges) and the offsets derived from them. Which client exchange
//!   is which server exchange is decided when a trace is asked for, per
//!   connection, by the same pure matching (`super::stitch`) at the
//!   pair's clock difference. So halves ingested through two aggregators
//!   stitch like halves ingested through one.
//! - **Ids** come from each aggregator's clock (`ids.rs`), not a counter.

mod fresh;
mod ids;
mod layout;
pub mod local_server;
mod rowbinary;
mod schema;
mod sql;
mod stitch;
mod tail;
mod upgrade;
#[doc(hidden)]
pub use self::local_server as test_server;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use clickhouse::{Client, Row};
use regex::Regex;
use serde::Deserialize;

use self::{
    ids::IdSource,
    rowbinary::RowBinary,
    sql::{Offsets, RawBounds, TraceSet, filter_sql, lit},
};
use super::{
    series::{Sample, Series, SeriesBuilder, SeriesQuery},
    stitch::{conn_key, own_trace},
    store::{
        Batch, EventId, EventKind, Filter, GroupWait, HostOffset, IngestOutcome, MAX_BATCH_EVENTS,
        Query, Result, Store, StoreError, Stored, TailMark, TailPage, corrected, parse_stream,
        stream_name,
    },
};
use crate::event::{Event, EventData, HttpSide};

pub use self::schema::SCHEMA_VERSION;

const BACKEND: &str = "clickhouse";

/// Where the store is and who it logs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A cluster (in the server's `remote_servers`) whose shards hold the
    /// events, through `Distributed` tables; None: this server alone.
    pub cluster: Option<String>,
    /// The shards' HTTP URLs, where this store creates the local tables
    /// (18.16 has no `ON CLUSTER` without ZooKeeper).
    pub shards: Vec<String>,
}

impl Config {
    /// Checks a cluster name (it is written into the DDL).
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(c) = &self.cluster
            && (c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(format!(
                "{c:?} is not a cluster name (letters, digits and _)"
            ));
        }
        for s in &self.shards {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(format!("shard {s:?} must be an http:// or https:// URL"));
            }
        }
        Ok(())
    }

    /// Parses `clickhouse://HOST:PORT/DB` (HTTP) or
    /// `clickhouses://HOST:PORT/DB` (HTTPS); the port defaults to 8123
    /// (8443), the database to `tracer`.
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let (scheme, rest, port) = if let Some(r) = url.strip_prefix("clickhouse://") {
            ("http", r, 8123)
        } else if let Some(r) = url.strip_prefix("clickhouses://") {
            ("https", r, 8443)
        } else {
            return Err(format!(
                "{url:?}: a ClickHouse store is clickhouse://HOST:PORT/DB \
                 (or clickhouses:// for HTTPS)"
            ));
        };
        let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
        let db = if db.is_empty() { "tracer" } else { db };
        if hostport.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        if hostport.contains('@') {
            return Err(format!(
                "{url:?}: give the user with --clickhouse-user and the password \
                 with --clickhouse-password-file, not in the URL"
            ));
        }
        if !db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "{db:?} is not a database name this store uses (letters, digits and _)"
            ));
        }
        let has_port = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok());
        let hostport = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:{port}")
        };
        Ok(Self {
            url: format!("{scheme}://{hostport}"),
            database: db.to_string(),
            user: None,
            password: None,
            cluster: None,
            shards: Vec::new(),
        })
    }
}

/// How often a live tail reads new events (other aggregators' included).
const TAIL_POLL: Duration = Duration::from_millis(100);
/// How far behind its newest event a live tail reads again: an event's id
/// is taken from its aggregator's clock before its batch is committed, so
/// it can become visible after events with later ids. Covers inserts that
/// take up to this long and clocks of aggregators this far apart.
const TAIL_REWIND_MS: i64 = 2_000;
/// Most batches listed to bound a tail's reads ([`ClickhouseStore::tail_windows`]);
/// past them one read is not bounded by times.
const MAX_TAIL_BATCHES: usize = 2048;

/// Most exchanges one trace walk reads (a runaway loop guard).
const MAX_TRACE_EXCHANGES: usize = 100_000;
/// Rows read per step when a regex decides which rows count.
const SCAN_PAGE: usize = 4096;

/// A statement the store sent, kept when recording (tests: `tests.rs`
/// runs them all on a current ClickHouse).
#[derive(Debug, Clone)]
pub struct Sent {
    pub sql: String,
    /// An insert's RowBinary body.
    pub body: Option<Vec<u8>>,
    /// Rows a SELECT returned.
    pub rows: Option<usize>,
}

pub struct ClickhouseStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    /// The database, quoted.
    db: String,
    ids: IdSource,
    recording: Mutex<Option<Vec<Sent>>>,
    /// Whether `events` and `http_index` are Distributed tables.
    sharded: bool,
    /// When this aggregator last re-estimated each host pair's clock
    /// difference (`stitch::after_ingest`): only how often, never what.
    estimated: Mutex<HashMap<(String, String), std::time::Instant>>,
    /// The host pairs this aggregator last found behind each (host, side,
    /// peer address) of a group, and when (`stitch::after_ingest`): only
    /// how often to look again, never what a query answers.
    resolved: Mutex<stitch::Resolved>,
    /// The offsets and host pairs as ingest last read them (`fresh.rs`).
    ingest_offsets: fresh::Fresh<Offsets>,
    pairs_seen: fresh::Fresh<Vec<stitch::PairRow>>,
    /// The hosts this aggregator has recorded in `hosts` (with the commit
    /// of the first group it stored of each, `insert_group`).
    hosts_recorded: Mutex<HashSet<String>>,
    /// Bytes per row of the last group's `events` insert, to size the
    /// next one's buffer (`insert_group`).
    event_row_bytes: AtomicUsize,
}

impl Drop for ClickhouseStore {
    fn drop(&mut self) {
        // May be dropped on an async worker, where a runtime must not
        // block to shut down.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Whether `url` (`http://HOST:PORT`) names this machine: then requests
/// and answers go uncompressed (elsewhere LZ4, the crate's default).
fn on_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A ClickHouse error as the store's own: network failures are
/// "unreachable" (retry later), everything else the server's message.
fn ch_err(e: clickhouse::error::Error) -> StoreError {
    match e {
        clickhouse::error::Error::Network(inner) => StoreError::Unavailable {
            backend: BACKEND,
            message: inner.to_string(),
        },
        clickhouse::error::Error::TimedOut => StoreError::Unavailable {
            backend: BACKEND,
            message: "timed out".into(),
        },
        other => StoreError::Backend {
            backend: BACKEND,
            message: other.to_string().trim().to_string(),
        },
    }
}

#[derive(Row, Deserialize)]
struct EventRow {
    id: i64,
    ts: i64,
    host: String,
    pid: u32,
    tid: u32,
    comm: String,
    stream: String,
    /// A log line's text (its JSON has it empty).
    text: String,
    req_id: String,
    /// Empty for a plain log line, else the event's data (`stored_json`).
    json: String,
}

#[derive(Row, Deserialize)]
struct Count {
    n: u64,
}

#[derive(Row, Deserialize)]
struct OffsetRow {
    host: String,
    offset_ns: i64,
    pairs: i64,
    reference: String,
    updated_ns: i64,
}

#[derive(Row, Deserialize)]
struct BatchKey {
    host: String,
    run_id: String,
    seq: i64,
}

impl ClickhouseStore {
    /// Connects, checks the login and the schema version, creates the
    /// tables on first start and registers this aggregator's id tag.
    pub fn open(config: &Config) -> Result<Self> {
        Self::open_with(config, false)
    }

    /// [`Self::open`], keeping every statement sent from the first on
    /// ([`Self::recorded`]; tests).
    pub fn open_recording(config: &Config) -> Result<Self> {
        Self::open_with(config, true)
    }

    fn open_with(config: &Config, record: bool) -> Result<Self> {
        config.check().map_err(StoreError::Open)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clickhouse")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Open(format!("starting the ClickHouse client: {e}")))?;
        let mut client = Client::default()
            .with_url(&config.url)
            .with_validation(false);
        if on_loopback(&config.url) {
            // Nothing to save on the wire, and LZ4 on the inserts took 15%
            // of the aggregator's CPU (perf during `bench clickhouse`).
            client = client.with_compression(clickhouse::Compression::None);
        }
        if let Some(u) = &config.user {
            client = client.with_user(u);
        }
        if let Some(p) = &config.password {
            client = client.with_password(p);
        }
        let mut store = Self {
            rt: Some(rt),
            client,
            db: sql::ident(&config.database),
            ids: IdSource::new(0),
            recording: Mutex::new(record.then(Vec::new)),
            sharded: config.cluster.is_some(),
            estimated: Mutex::default(),
            resolved: Mutex::default(),
            event_row_bytes: AtomicUsize::new(0),
            ingest_offsets: fresh::Fresh::default(),
            pairs_seen: fresh::Fresh::default(),
            hosts_recorded: Mutex::default(),
        };
        // The login first, for a clear message when it fails.
        store
            .fetch::<Count>("SELECT toUInt64(1) AS n")
            .map_err(|e| match e {
                StoreError::Unavailable { message, .. } => StoreError::Open(format!(
                    "cannot reach ClickHouse at {} ({message}); is it running, and does --store \
                     name its HTTP port (8123 by default)?",
                    config.url
                )),
                StoreError::Backend { message, .. } => StoreError::Open(format!(
                    "ClickHouse at {} refused us: {message} (check --clickhouse-user and \
                     --clickhouse-password-file)",
                    config.url
                )),
                other => other,
            })?;
        for shard in &config.shards {
            store.create_on_shard(config, shard)?;
        }
        store.create_or_check(config)?;
        for table in store.older_http_index(config)? {
            log::warn!(
                "{table} was created by a tracer before 2026-12-06, without partitions by \
                 time: the lookups after each group read all of it, so ingest slows as the \
                 store grows. Rebuild it with `tracer migrate --rebuild-http-index --to URL` \
                 while no aggregator runs (docs/aggregator.md, \"Flat as the store grows\")."
            );
        }
        store.ids = IdSource::new(store.register()?);
        Ok(store)
    }

    /// The local tables on one shard of the cluster.
    fn create_on_shard(&self, config: &Config, url: &str) -> Result<()> {
        let client = layout::shard_client(config, url);
        for sql in schema::create_local(&self.db) {
            self.note(&sql, None, None);
            self.block_on(client.query_raw(&sql).execute())
                .map_err(|e| {
                    StoreError::Open(format!("creating the tables on shard {url}: {}", ch_err(e)))
                })?;
        }
        Ok(())
    }

    fn create_or_check(&self, config: &Config) -> Result<()> {
        let db = &self.db;
        let stmts = schema::create(db, config.cluster.as_deref());
        // The database first; then what version it holds.
        self.exec(&stmts[0])?;
        self.exec(&stmts[1])?;
        let found: Vec<Count> = self.fetch(&format!(
            "SELECT toUInt64(max(version)) AS n FROM {db}.schema_version"
        ))?;
        let found = found.first().map_or(0, |c| c.n);
        if found > u64::from(SCHEMA_VERSION) {
            return Err(StoreError::Open(format!(
                "the ClickHouse database {db} has tracer schema version {found}; this \
                 tracer knows up to {SCHEMA_VERSION} (upgrade tracer, or use another database)"
            )));
        }
        for s in &stmts[2..] {
            self.exec(s)?;
        }
        if found < u64::from(SCHEMA_VERSION) {
            // A new store has its tables as this version creates them
            // (above); an older one gets the columns added since.
            if found > 0 {
                self.upgrade(config, found)?;
            }
            let mut body = RowBinary::default();
            body.u32(SCHEMA_VERSION).i64(now_ns()).end_row();
            self.insert(
                &format!("INSERT INTO {db}.schema_version (version, applied_ns) FORMAT RowBinary"),
                body,
            )?;
        }
        Ok(())
    }

    /// Picks an id tag no aggregator started in the last day uses, and
    /// records it.
    fn register(&self) -> Result<u8> {
        #[derive(Row, Deserialize)]
        struct Tag {
            tag: u32,
        }
        let day_ago = now_ns() - 86_400_000_000_000;
        let used: HashSet<u32> = self
            .fetch::<Tag>(&format!(
                "SELECT tag FROM {}.aggregators WHERE started_ns > {day_ago}",
                self.db
            ))?
            .into_iter()
            .map(|t| t.tag)
            .collect();
        let seed = u32::try_from(now_ns().rem_euclid(256)).unwrap_or(0) ^ std::process::id();
        let tag = (0..256u32)
            .map(|i| (seed.wrapping_add(i)) % 256)
            .find(|t| !used.contains(t))
            .unwrap_or(seed % 256);
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let mut body = RowBinary::default();
        body.u32(tag)
            .i64(now_ns())
            .str(&format!("{name}:{}", std::process::id()))
            .end_row();
        self.insert(
            &format!(
                "INSERT INTO {}.aggregators (tag, started_ns, name) FORMAT RowBinary",
                self.db
            ),
            body,
        )?;
        Ok(u8::try_from(tag).unwrap_or(0))
    }

    /// The statements sent, when recording.
    pub fn recorded(&self) -> Vec<Sent> {
        self.recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    fn note(&self, sql: &str, body: Option<&[u8]>, rows: Option<usize>) {
        if let Some(v) = self
            .recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            v.push(Sent {
                sql: sql.to_string(),
                body: body.map(<[u8]>::to_vec),
                rows,
            });
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => unreachable!("the runtime lives as long as the store"),
        }
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.note(sql, None, None);
        self.block_on(self.client.query_raw(sql).execute())
            .map_err(ch_err)
    }

    fn fetch<T>(&self, sql: &str) -> Result<Vec<T>>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let rows = self
            .block_on(self.client.query_raw(sql).fetch_all::<T>())
            .map_err(ch_err)?;
        self.note(sql, None, Some(rows.len()));
        Ok(rows)
    }

    /// Sends one insert and returns once ClickHouse has answered it.
    fn insert(&self, sql: &str, body: RowBinary) -> Result<()> {
        self.insert_all(vec![(sql.to_string(), body)])
    }

    /// Sends the inserts at once (each on its own connection) and returns
    /// once ClickHouse has answered them all: the first error, if any.
    /// Together they take one round trip instead of one each.
    fn insert_all(&self, inserts: Vec<(String, RowBinary)>) -> Result<()> {
        let Some(rt) = &self.rt else {
            unreachable!("the runtime lives as long as the store")
        };
        let tasks: Vec<_> = inserts
            .into_iter()
            .map(|(sql, body)| {
                let bytes = body.into_bytes();
                self.note(&sql, Some(&bytes), None);
                // Into a Distributed table: answered once every shard has
                // the rows (by default 18.16 queues them and answers at
                // once).
                let distributed = self.sharded
                    && schema::SHARDED
                        .iter()
                        .any(|(_, table)| sql.contains(&format!(".{table} (")));
                let client = self.client.clone();
                rt.spawn(async move {
                    let mut ins = client.insert_formatted_with(sql);
                    if distributed {
                        ins = ins.with_setting("insert_distributed_sync", "1");
                    }
                    ins.send(Bytes::from(bytes)).await?;
                    ins.end().await
                })
            })
            .collect();
        self.block_on(async {
            let mut result = Ok(());
            for t in tasks {
                let r = match t.await {
                    Ok(r) => r.map_err(ch_err),
                    Err(e) => Err(StoreError::Commit(format!("an insert task failed: {e}"))),
                };
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }

    /// Every host's current correction.
    fn offsets_now(&self) -> Result<Offsets> {
        Ok(Offsets(
            self.offsets()?
                .into_iter()
                .map(|o| (o.host, o.offset_ns))
                .collect(),
        ))
    }

    /// The members of `f.trace`'s trace, when it has one.
    fn trace_set(&self, f: &Filter) -> Result<Option<TraceSet>> {
        f.trace
            .as_deref()
            .map(|t| stitch::trace(self, t))
            .transpose()
    }

    /// Rows for `where_` in `order`, `limit` at a time, kept when the
    /// regex (if any) matches their text, until `want` are kept or none
    /// are left. `next_page` moves the WHERE clause past the last row.
    fn scan(
        &self,
        select: &str,
        where_: &str,
        order: &str,
        want: usize,
        re: Option<&Regex>,
        mut next_page: impl FnMut(&Stored) -> String,
    ) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        let mut extra = String::new();
        let page = if re.is_some() {
            SCAN_PAGE.max(want)
        } else {
            want
        };
        while out.len() < want {
            let rows: Vec<EventRow> = self.fetch(&format!(
                "{select} WHERE {where_}{extra} ORDER BY {order} LIMIT {page}"
            ))?;
            let n = rows.len();
            let mut last = None;
            for r in rows {
                let s = decode(r)?;
                let keep = match (re, &s.event.data) {
                    (None, _) => true,
                    (Some(re), data) => data.search_text().is_some_and(|t| re.is_match(&t)),
                };
                last = Some(next_page(&s));
                if keep {
                    out.push(s);
                }
            }
            match last {
                Some(l) if n == page => extra = format!(" AND {l}"),
                _ => break,
            }
        }
        out.truncate(want);
        Ok(out)
    }

    /// The reads that hold the events after `cursor`, bounded by the ids
    /// and raw times its batches' rows record (`tail.rs`): none when no
    /// batch has ids past it; one read bounded by ids alone when some
    /// batch's times are not known (written before version 4).
    fn tail_windows(&self, cursor: EventId) -> Result<Vec<tail::Window>> {
        let (batches, complete) = self.batches_past(cursor, i64::MIN)?;
        if batches.iter().any(|b| !b.timed()) {
            return Ok(tail::windows(&[], cursor.raw(), false));
        }
        Ok(tail::windows(&batches, cursor.raw(), complete))
    }

    /// Where a polling tail at `cursor` lists batches from: ids come from
    /// each aggregator's clock, and a batch commits after it took its ids,
    /// so a batch may become visible after batches with higher ids, up to
    /// [`TAIL_REWIND_MS`] later.
    fn rewind(&self, cursor: EventId) -> EventId {
        let ms = IdSource::millis(cursor.raw()) - TAIL_REWIND_MS;
        EventId::from_raw(IdSource::floor_at(ms))
    }

    /// The rows of the batches whose last id is past `cursor` and whose
    /// commit id is past `after_commit`, in commit order, at most
    /// [`MAX_TAIL_BATCHES`], and whether that was all.
    fn batches_past(
        &self,
        cursor: EventId,
        after_commit: i64,
    ) -> Result<(Vec<tail::NewBatch>, bool)> {
        #[derive(Row, Deserialize)]
        struct BatchRow {
            host: String,
            lo: i64,
            hi: i64,
            first: i64,
            events: u32,
        }
        let step = 1i64 << ids::TAG_BITS;
        // A batch whose last id is past the cursor begins at most its
        // largest size's ids before it: a bound on `commit_id` alone, by
        // which the newest parts alone are read (their commit ids' range is
        // recorded in each, `batches` being partitioned by commit day).
        // Without it every poll read the whole table.
        let reach = i64::try_from(MAX_BATCH_EVENTS).unwrap_or(i64::MAX) * step;
        let rows: Vec<BatchRow> = self.fetch(&format!(
            "SELECT host, min_raw_ts AS lo, max_raw_ts AS hi, commit_id AS first, events \
             FROM {}.batches \
             WHERE commit_id > {} AND events > 0 \
             AND commit_id + (toInt64(events) - 1) * {step} > {} \
             AND commit_id > {after_commit} ORDER BY commit_id LIMIT {}",
            self.db,
            cursor.raw().saturating_sub(reach),
            cursor.raw(),
            MAX_TAIL_BATCHES + 1
        ))?;
        let complete = rows.len() <= MAX_TAIL_BATCHES;
        let batches = rows
            .into_iter()
            .take(MAX_TAIL_BATCHES)
            .map(|r| tail::NewBatch {
                last: r.first + (i64::from(r.events) - 1) * step,
                host: r.host,
                lo: r.lo,
                hi: r.hi,
                first: r.first,
                events: u64::from(r.events),
            })
            .collect();
        Ok((batches, complete))
    }

    /// The batches past `mark`'s rewind that it has not read, in commit
    /// order, at most [`MAX_TAIL_BATCHES`] (and whether that was all):
    /// listed page by page past the ones it has read, since more than a
    /// listing's worth may lie in those 2 s (many hosts' small batches),
    /// and a listing of read ones only would leave the tail where it was.
    fn unread_batches(&self, mark: &TailMark) -> Result<(Vec<tail::NewBatch>, bool)> {
        let from = self.rewind(mark.upto);
        let mut after_commit = i64::MIN;
        loop {
            let (listed, complete) = self.batches_past(from, after_commit)?;
            let Some(last) = listed.last().map(|b| b.first) else {
                return Ok((Vec::new(), true));
            };
            let new: Vec<tail::NewBatch> = listed
                .into_iter()
                .filter(|b| !mark.read.contains_key(&EventId::from_raw(b.first)))
                .collect();
            if complete || !new.is_empty() {
                return Ok((new, complete));
            }
            after_commit = last;
        }
    }

    /// One read of [`Store::query`].
    fn query_read(
        &self,
        q: &Query,
        offsets: &Offsets,
        trace: Option<&TraceSet>,
        re: Option<&Regex>,
    ) -> Result<Vec<Stored>> {
        let mut where_ = filter_sql(
            &self.db,
            self.sharded,
            &q.filter,
            offsets,
            trace,
            RawBounds::ALL,
        );
        if let Some(a) = q.as_of {
            where_.push_str(&format!(" AND id <= {}", a.raw()));
        }
        let (cmp, dir) = if q.newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some(p) = q.after {
            where_.push_str(&format!(
                " AND (ts, id) {cmp} ({}, {})",
                p.ts_ns,
                p.id.raw()
            ));
        }
        self.scan(
            &self.select(offsets),
            &where_,
            &format!("ts {dir}, id {dir}"),
            q.limit,
            re,
            |s| {
                let p = s.position();
                format!("(ts, id) {cmp} ({}, {})", p.ts_ns, p.id.raw())
            },
        )
    }

    /// Where a newest-first query without `since` looks first: the last
    /// minute, hour and day (corrected times) before its `until`, its
    /// page's position, or the newest event time of the last day's
    /// commits, whichever is earliest. If a window holds as many events as
    /// asked, they are the newest: every event outside it is older. No
    /// window when no batch was committed in the last day.
    fn newest_windows(&self, q: &Query, offsets: &Offsets) -> Result<Vec<i64>> {
        #[derive(Row, Deserialize)]
        struct Newest {
            raw: i64,
            batches: u64,
        }
        let now_ms = now_ns() / 1_000_000;
        let newest: Vec<Newest> = self.fetch(&format!(
            "SELECT max(max_raw_ts) AS raw, count() AS batches FROM {}.batches \
             WHERE commit_id >= {}",
            self.db,
            IdSource::floor_at(now_ms - 86_400_000)
        ))?;
        let Some(raw) = newest.first().filter(|n| n.batches > 0).map(|n| n.raw) else {
            return Ok(Vec::new());
        };
        let (_, most) = offsets.bounds();
        let mut anchor = raw.saturating_add(most).saturating_add(1);
        if let Some(u) = q.filter.until {
            anchor = anchor.min(u);
        }
        if let Some(p) = q.after {
            anchor = anchor.min(p.ts_ns);
        }
        Ok([60, 3600, 86_400]
            .iter()
            .map(|s| anchor.saturating_sub(s * 1_000_000_000))
            .collect())
    }

    /// [`sql::committed`] for this store's layout.
    fn committed(&self, within: RawBounds) -> String {
        sql::committed(&self.db, self.sharded, within)
    }

    fn select(&self, offsets: &Offsets) -> String {
        format!(
            "SELECT id, {} AS ts, host, pid, tid, comm, stream, text, req_id, json FROM {}.events",
            offsets.ts_expr(),
            self.db
        )
    }
}

/// The fields of a whole event's JSON that `events` had no column for
/// before version 2 (`tid`, `comm`), read from the JSON of a row written
/// before version 3 (the whole event); absent from the JSON written since
/// (the event's data alone).
#[derive(Deserialize)]
struct OlderFields {
    tid: Option<u32>,
    comm: Option<String>,
}

fn decode(r: EventRow) -> Result<Stored> {
    let id = EventId::from_raw(r.id);
    let corrupt = |source| StoreError::Corrupt { id, source };
    let (mut tid, mut comm) = (r.tid, r.comm);
    let data = if r.json.is_empty() {
        // A plain log line (version 2): its columns are all of it.
        let stream = parse_stream(&r.stream).ok_or_else(|| {
            corrupt(serde::de::Error::custom(format!(
                "a log line without JSON has stream {:?}",
                r.stream
            )))
        })?;
        EventData::Log {
            stream,
            path: None,
            text: r.text,
            truncated: false,
            req_id: (!r.req_id.is_empty()).then_some(r.req_id),
        }
    } else {
        // The data alone (version 3) or within the whole event (before),
        // whose other fields `EventData` skips.
        let mut data: EventData = serde_json::from_str(&r.json).map_err(corrupt)?;
        // Only JSON with these keys can hold them (this store wrote all of
        // it, and serde_json escapes no letters): most rows skip the
        // second read.
        if r.json.contains("\"tid\":") || r.json.contains("\"comm\":") {
            let older: OlderFields = serde_json::from_str(&r.json).map_err(corrupt)?;
            tid = older.tid.unwrap_or(tid);
            comm = older.comm.unwrap_or(comm);
        }
        if let EventData::Log { text, .. } = &mut data {
            *text = r.text;
        }
        data
    };
    let event = Event {
        ts_ns: u64::try_from(r.ts).unwrap_or(0),
        host: r.host,
        pid: r.pid,
        tid,
        comm,
        data,
    };
    Ok(Stored { id, event })
}

/// What `events.json` holds for `e`: what the columns do not. Nothing for
/// a plain log line (its columns hold all of it, `decode`); for a log line
/// with a path, cut short, or with an empty request id (which the empty
/// `req_id` column would read back as none), its data without the text
/// (that is in `text`); for any other event, its data (`EventData`'s JSON:
/// the kind and the kind's fields; time, host, pid, tid and comm are
/// columns).
fn stored_json(e: &Event) -> serde_json::Result<String> {
    match &e.data {
        EventData::Log {
            path: None,
            truncated: false,
            req_id,
            ..
        } if req_id.as_deref() != Some("") => Ok(String::new()),
        EventData::Log {
            stream,
            path,
            truncated,
            req_id,
            ..
        } => serde_json::to_string(&EventData::Log {
            stream: *stream,
            path: path.clone(),
            text: String::new(),
            truncated: *truncated,
            req_id: req_id.clone(),
        }),
        data => serde_json::to_string(data),
    }
}

fn compiled(f: &Filter) -> Result<Option<Regex>> {
    Ok(f.text.as_ref().map(|t| t.compile()).transpose()?)
}

/// The earliest and the latest raw time of a batch's events (None for an
/// empty batch): its row's `min_raw_ts` and `max_raw_ts`.
type RawSpan = Option<(i64, i64)>;

/// A batch's [`RawSpan`], worked out once per group (`ingest_group`) for
/// the lookup of stored batches and for the batch rows.
fn raw_span(b: &Batch) -> RawSpan {
    let times = b
        .events
        .iter()
        .map(|e| i64::try_from(e.ts_ns).unwrap_or(i64::MAX));
    times.fold(None, |span, t| {
        Some(span.map_or((t, t), |(lo, hi): (i64, i64)| (lo.min(t), hi.max(t))))
    })
}

/// A stored batch: its first id (also its commit id) and the correction
/// its events were shown with.
struct Placed {
    first: i64,
    offset: i64,
}

impl ClickhouseStore {
    /// Which of `batches` (with the raw times each spans, [`raw_span`])
    /// are stored already (by an earlier send of the same batch).
    fn known(
        &self,
        batches: &[Batch],
        spans: &[RawSpan],
    ) -> Result<HashSet<(String, String, i64)>> {
        if batches.is_empty() {
            return Ok(HashSet::new());
        }
        // A batch sent again has the same events, so the same first raw
        // time, and its row is in that time's day partition (`schema.rs`):
        // the lookup reads the partitions of the group's first times only,
        // and the 0 of a row written before version 4 or of an empty batch.
        let firsts = spans.iter().map(|s| s.map_or(0, |s| s.0));
        let (lo, hi) = firsts.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
        let keys: Vec<String> = batches
            .iter()
            .map(|b| {
                format!(
                    "({}, {}, {})",
                    lit(&b.host),
                    lit(&b.run_id),
                    i64::try_from(b.seq).unwrap_or(i64::MAX)
                )
            })
            .collect();
        Ok(self
            .fetch::<BatchKey>(&format!(
                "SELECT host, run_id, seq FROM {}.batches WHERE (host, run_id, seq) IN ({}) \
                 AND (min_raw_ts BETWEEN {lo} AND {hi} OR min_raw_ts = 0)",
                self.db,
                keys.join(", ")
            ))?
            .into_iter()
            .map(|k| (k.host, k.run_id, k.seq))
            .collect())
    }

    /// Inserts the events of `batches` (with their placement and the raw
    /// times each spans), then their batch rows: the commit.
    fn insert_group(&self, batches: &[(&Batch, i64, RawSpan)]) -> Result<bool> {
        let db = &self.db;
        let rows: usize = batches.iter().map(|(b, ..)| b.events.len()).sum();
        let row_bytes = self.event_row_bytes.load(Ordering::Relaxed);
        // A tenth more than the last group's rows took, for some margin.
        let mut events = RowBinary::with_capacity(rows * row_bytes / 10 * 11);
        let mut http = RowBinary::default();
        // The rows of `http` again under the keys they are looked up by
        // (`schema.rs`): a client call's host, each request id.
        let mut keys = RowBinary::default();
        let mut commits = RowBinary::default();
        let received = now_ns();
        for &(b, first, span) in batches {
            for (i, e) in b.events.iter().enumerate() {
                let id = IdSource::nth(first, i);
                let raw = i64::try_from(e.ts_ns).unwrap_or(i64::MAX);
                let json = stored_json(e).map_err(|source| StoreError::Corrupt {
                    id: EventId::from_raw(id),
                    source,
                })?;
                let other_text = match &e.data {
                    EventData::Log { .. } => None,
                    other => other.search_text(),
                };
                let (stream, text, req_id) = match &e.data {
                    EventData::Log {
                        stream,
                        text,
                        req_id,
                        ..
                    } => (
                        stream_name(*stream),
                        text.as_str(),
                        req_id.as_deref().unwrap_or(""),
                    ),
                    EventData::Http(h) => ("", "", h.req_id.as_str()),
                    // Logpoint, probe and inspector lines: `text` is what
                    // grep reads (their JSON keeps it too, they are few).
                    other => (
                        "",
                        other_text.as_deref().unwrap_or(""),
                        other.line_req_id().unwrap_or(""),
                    ),
                };
                events
                    .i64(id)
                    .i64(first)
                    .i64(raw)
                    .str(&e.host)
                    .u32(e.pid)
                    .u32(e.tid)
                    .str(&e.comm)
                    .str(e.data.kind())
                    .str(stream)
                    .str(text)
                    .str(req_id)
                    .str(&json)
                    .end_row();
                if let EventData::Http(h) = &e.data {
                    let side = stitch::side_name(h.side);
                    let end = raw.saturating_add(i64::try_from(h.duration_ns).unwrap_or(i64::MAX));
                    let (conn, trace) = (conn_key(h), own_trace(h));
                    let parent = h.parent_req_id.as_deref().unwrap_or("");
                    let row = |t: &mut RowBinary| {
                        t.i64(id)
                            .i64(first)
                            .str(&e.host)
                            .str(side)
                            .str(&conn)
                            .i64(raw)
                            .i64(end)
                            .str(&h.req_id)
                            .str(parent)
                            .str(&trace)
                            .end_row();
                    };
                    row(&mut http);
                    if h.side == HttpSide::Client {
                        keys.str(schema::BY_CLIENT).str(&e.host);
                        row(&mut keys);
                    }
                    for key in schema::exchange_keys(&h.req_id, &trace, parent) {
                        keys.str(schema::BY_REQUEST).str(key);
                        row(&mut keys);
                    }
                }
            }
            commits
                .str(&b.host)
                .str(&b.run_id)
                .i64(i64::try_from(b.seq).unwrap_or(i64::MAX))
                .i64(first)
                .u32(u32::try_from(b.events.len()).unwrap_or(u32::MAX))
                .i64(received)
                .i64(span.map_or(0, |s| s.0))
                .i64(span.map_or(0, |s| s.1))
                .end_row();
        }
        if let Some(per_row) = events.len().checked_div(rows) {
            self.event_row_bytes.store(per_row, Ordering::Relaxed);
        }
        // Events and exchanges together (one round trip); the commit
        // rows only after all are in.
        let mut inserts = Vec::new();
        if events.rows() > 0 {
            inserts.push((
                format!(
                    "INSERT INTO {db}.events (id, commit_id, raw_ts, host, pid, tid, comm, \
                     kind, stream, text, req_id, json) FORMAT RowBinary"
                ),
                events,
            ));
        }
        let had_http = http.rows() > 0;
        for (table, key, rows) in [("http_index", "", http), ("http_keys", "kind, key, ", keys)] {
            if rows.rows() > 0 {
                inserts.push((
                    format!(
                        "INSERT INTO {db}.{table} ({key}{}) FORMAT RowBinary",
                        schema::EXCHANGE_COLUMN_NAMES
                    ),
                    rows,
                ));
            }
        }
        let new_hosts = self.new_hosts(batches);
        if !new_hosts.is_empty() {
            let mut rows = RowBinary::default();
            for (host, first) in &new_hosts {
                rows.str(host).i64(*first).end_row();
            }
            inserts.push((
                format!("INSERT INTO {db}.hosts (host, first_commit) FORMAT RowBinary"),
                rows,
            ));
        }
        self.insert_all(inserts)?;
        // Recorded even if the commit below fails: a host's row then
        // holds an id below its first commit, which orders it as seen
        // when it first sent, as it was.
        self.hosts_recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(new_hosts.into_keys());
        self.insert(
            &format!(
                "INSERT INTO {db}.batches (host, run_id, seq, commit_id, events, received_ns, \
                 min_raw_ts, max_raw_ts) FORMAT RowBinary"
            ),
            commits,
        )
        .map_err(|e| StoreError::Commit(e.to_string()))?;
        Ok(had_http)
    }

    /// The hosts of `batches` this aggregator has not recorded in `hosts`
    /// yet, each with the least commit id among its batches here. The
    /// first commit of every host is then in `hosts` (whichever
    /// aggregator stored it recorded it with its events), and the order
    /// of hosts by first commit reads that small table, not `batches`
    /// (`stitch::hosts_by_first_commit`).
    fn new_hosts(&self, batches: &[(&Batch, i64, RawSpan)]) -> HashMap<String, i64> {
        let recorded = self
            .hosts_recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: HashMap<String, i64> = HashMap::new();
        for &(b, first, _) in batches {
            if !recorded.contains(&b.host) {
                let f = out.entry(b.host.clone()).or_insert(first);
                *f = (*f).min(first);
            }
        }
        out
    }

    /// Stores `batches` as one group; per batch its outcome's placement,
    /// or None for a duplicate.
    fn ingest_group(&self, batches: &[Batch]) -> Result<Vec<Option<Placed>>> {
        let spans: Vec<RawSpan> = batches.iter().map(raw_span).collect();
        let known = self.known(batches, &spans)?;
        // Only for the times `IngestOutcome::stored` shows: what is
        // stored is the raw time.
        let offsets = self.ingest_offsets.get(|| self.offsets_now())?;
        let mut seen = HashSet::new();
        let mut placed = Vec::with_capacity(batches.len());
        let mut new = Vec::new();
        let now_ms = now_ns() / 1_000_000;
        for (b, &span) in batches.iter().zip(&spans) {
            let key = (
                b.host.clone(),
                b.run_id.clone(),
                i64::try_from(b.seq).unwrap_or(i64::MAX),
            );
            if known.contains(&key) || !seen.insert(key) {
                placed.push(None);
                continue;
            }
            let (first, _) = self.ids.reserve(b.events.len(), now_ms);
            let offset = offsets.of(&b.host);
            placed.push(Some(Placed { first, offset }));
            new.push((b, first, span));
        }
        if !new.is_empty() && self.insert_group(&new)? {
            // New exchanges: re-estimate the clock differences they bear
            // on. A failure here loses nothing (the next group retries).
            if let Err(e) =
                stitch::after_ingest(self, &new.iter().map(|(b, ..)| *b).collect::<Vec<_>>())
            {
                log::warn!(
                    "re-estimating clock offsets failed (retried after the next batch): {e}"
                );
            }
        }
        Ok(placed)
    }
}

impl Store for ClickhouseStore {
    fn ingest(&self, batch: Batch) -> Result<IngestOutcome> {
        self.ingest_many(vec![batch])
            .pop()
            .unwrap_or_else(|| Err(StoreError::Commit("no outcome".into())))
    }

    /// One insert per table for the whole group; if it fails, each batch
    /// is tried alone so that only a failing one gets the error.
    fn ingest_many(&self, batches: Vec<Batch>) -> Vec<Result<IngestOutcome>> {
        let results: Vec<Result<Option<Placed>>> = match self.ingest_group(&batches) {
            Ok(all) => all.into_iter().map(Ok).collect(),
            Err(e) if batches.len() == 1 => vec![Err(e)],
            Err(e) => {
                log::warn!(
                    "storing a group of {} batches failed ({e}); storing them one by one",
                    batches.len()
                );
                batches
                    .chunks(1)
                    .map(|one| self.ingest_group(one).map(|mut v| v.pop().flatten()))
                    .collect()
            }
        };
        batches
            .into_iter()
            .zip(results)
            .map(|(batch, result)| {
                Ok(match result? {
                    None => IngestOutcome {
                        duplicate: true,
                        stored: Vec::new(),
                    },
                    Some(p) => IngestOutcome {
                        duplicate: false,
                        stored: batch
                            .events
                            .into_iter()
                            .enumerate()
                            .map(|(i, mut event)| {
                                let raw = i64::try_from(event.ts_ns).unwrap_or(i64::MAX);
                                event.ts_ns = u64::try_from(corrected(raw, p.offset)).unwrap_or(0);
                                Stored {
                                    id: EventId::from_raw(IdSource::nth(p.first, i)),
                                    event,
                                }
                            })
                            .collect(),
                    },
                })
            })
            .collect()
    }

    /// Groups up to 64 agents' batches of 2000: on 18.16 each insert is a
    /// new part (a directory of files, merged later), so the server's CPU
    /// per event falls as groups grow (docs/aggregator.md, Scaling out).
    /// A group of 131072 events takes ~0.5-1 s to store here, within the
    /// agents' 10 s request timeout.
    fn max_group_events(&self) -> usize {
        131_072
    }

    /// Each page is a query, and a grep's scans the text of the rest of
    /// its time range until it has its rows: with pages of 1000, listing
    /// the 2001 lines of `grep -i 'connection reset by peer'` over 10M
    /// lines took three such scans (2.4 s; docs/benchmarks.md,
    /// 2026-12-07 10:23). 10,000 rows are ~2 MB of answer.
    fn page_rows(&self) -> usize {
        10_000
    }

    /// A group waits for batches that come within 15 ms of each other,
    /// up to 100 ms: agents with a backlog send their next batches as
    /// soon as a group answers theirs, and those arrive spread over tens
    /// of milliseconds, each decoded in turn on a busy machine. Without
    /// the wait the writer took what had arrived (often a few batches),
    /// so groups alternated large and small, at half the size the agents
    /// had in flight; with it, the server's CPU per event fell 16-26%
    /// (docs/benchmarks.md, 2026-12-07 09:30). A lone batch waits 15 ms
    /// more; a group takes 200-600 ms to insert here.
    fn group_wait(&self) -> GroupWait {
        GroupWait {
            quiet: Duration::from_millis(15),
            most: Duration::from_millis(100),
        }
    }

    /// The newest events first, with no `since`: windows of the last
    /// minute, hour and day before the newest time first
    /// ([`ClickhouseStore::newest_windows`]), as long as they hold fewer
    /// than the limit, and the whole store only then. A tail's snapshot
    /// (its last lines) and a page back in the web UI are such queries;
    /// unbounded, each read every batch row for its commit check.
    fn query(&self, q: &Query) -> Result<Vec<Stored>> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let offsets = self.offsets_now()?;
        let trace = self.trace_set(&q.filter)?;
        let re = compiled(&q.filter)?;
        let read = |since: Option<i64>| {
            let mut q = q.clone();
            q.filter.since = since.or(q.filter.since);
            self.query_read(&q, &offsets, trace.as_ref(), re.as_ref())
        };
        if q.newest_first && q.filter.since.is_none() {
            for since in self.newest_windows(q, &offsets)? {
                let rows = read(Some(since))?;
                if rows.len() >= q.limit {
                    return Ok(rows);
                }
            }
        }
        read(None)
    }

    fn count(&self, f: &Filter) -> Result<u64> {
        let offsets = self.offsets_now()?;
        let trace = self.trace_set(f)?;
        let where_ = filter_sql(
            &self.db,
            self.sharded,
            f,
            &offsets,
            trace.as_ref(),
            RawBounds::ALL,
        );
        let from = format!("FROM {}.events WHERE {where_}", self.db);
        let ts = offsets.ts_expr();
        let Some(re) = compiled(f)? else {
            let n: Vec<Count> = self.fetch(&format!(
                "SELECT count() AS n FROM (SELECT {ts} AS ts, id {from})"
            ))?;
            return Ok(n.first().map_or(0, |c| c.n));
        };
        // The prefilter narrowed the rows; the regex decides, line by line.
        let mut n = 0u64;
        let mut after = i64::MIN;
        loop {
            #[derive(Row, Deserialize)]
            struct IdText {
                id: i64,
                text: String,
            }
            let rows: Vec<IdText> = self.fetch(&format!(
                "SELECT id, text FROM (SELECT {ts} AS ts, id, text {from} AND id > {after}) \
                 ORDER BY id LIMIT {}",
                SCAN_PAGE * 16
            ))?;
            let got = rows.len();
            for r in &rows {
                n += u64::from(re.is_match(&r.text));
            }
            match rows.last() {
                Some(r) if got == SCAN_PAGE * 16 => after = r.id,
                _ => return Ok(n),
            }
        }
    }

    fn since_cursor(&self, cursor: EventId, f: &Filter, limit: usize) -> Result<Vec<Stored>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let offsets = self.offsets_now()?;
        let trace = self.trace_set(f)?;
        let re = compiled(f)?;
        let mut out = Vec::new();
        for window in self.tail_windows(cursor)? {
            let filtered = filter_sql(
                &self.db,
                self.sharded,
                f,
                &offsets,
                trace.as_ref(),
                window.raw,
            );
            out.extend(self.scan(
                &self.select(&offsets),
                &format!("{filtered}{}", window.condition()),
                "id",
                limit - out.len(),
                re.as_ref(),
                |s| format!("id > {}", s.id.raw()),
            )?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// After the snapshot's cursor and every batch listed behind it that
    /// a late commit could still follow: a batch committed since the
    /// cursor was read is in the snapshot too, so it is not read again.
    fn tail_mark(&self) -> Result<TailMark> {
        let mut mark = TailMark {
            upto: self.cursor()?,
            ..TailMark::default()
        };
        loop {
            let (batches, complete) = self.unread_batches(&mark)?;
            for b in &batches {
                let last = EventId::from_raw(b.last);
                mark.read.insert(EventId::from_raw(b.first), last);
                mark.upto = mark.upto.max(last);
            }
            if complete {
                return Ok(mark);
            }
        }
    }

    /// The batches listed past the mark's rewind that it has not read,
    /// read a group at a time by their commit ids (`tail.rs`, `groups`):
    /// a batch's events are read once, whatever its ids, and a poll reads
    /// only the batches committed since the last one. Before, a poll read
    /// every event after the tail's newest match, so a tail whose filter
    /// matched rarely read all the traffic since, each poll.
    fn poll_tail(&self, mark: &mut TailMark, f: &Filter, limit: usize) -> Result<TailPage> {
        let (new, complete) = self.unread_batches(mark)?;
        let mut page = TailPage {
            events: Vec::new(),
            more: !complete,
        };
        if !new.is_empty() {
            let offsets = self.offsets_now()?;
            let trace = self.trace_set(f)?;
            let re = compiled(f)?;
            for group in tail::groups(&new) {
                if page.events.len() >= limit {
                    page.more = true;
                    break;
                }
                let (condition, within) = tail::group_condition(group);
                let filtered =
                    filter_sql(&self.db, self.sharded, f, &offsets, trace.as_ref(), within);
                // All of the group's events: no more exist.
                let events = group.iter().map(|b| b.events).sum::<u64>();
                page.events.extend(self.scan(
                    &self.select(&offsets),
                    &format!("{filtered}{condition}"),
                    "id",
                    usize::try_from(events).unwrap_or(usize::MAX),
                    re.as_ref(),
                    |s| format!("id > {}", s.id.raw()),
                )?);
                for b in group {
                    let last = EventId::from_raw(b.last);
                    mark.read.insert(EventId::from_raw(b.first), last);
                    mark.upto = mark.upto.max(last);
                }
            }
        }
        let from = self.rewind(mark.upto);
        mark.read.retain(|_, last| *last > from);
        Ok(page)
    }

    /// From the batch rows (a batch's last id is its commit id and
    /// `events - 1` steps on): `max(id)` over `events` read the id column
    /// of the whole store (68M rows, 0.5 s at 56M events) each time a tail
    /// started. The rows of the last minute's commits are read first, then
    /// the last day's, then all (`batches` is partitioned by commit day,
    /// and each part records its commit ids' range): the largest id is
    /// among the first of those that holds any, whatever the aggregators'
    /// clocks.
    ///
    /// Every row counts, the second copy of a batch stored twice too: it is
    /// a commit (its events were in before it) whose events queries leave
    /// out, so a cursor past it skips nothing a tail would show. Before,
    /// the commit check made this read every batch row of the store.
    fn cursor(&self) -> Result<EventId> {
        let now_ms = now_ns() / 1_000_000;
        for back_ms in [Some(60_000), Some(86_400_000), None] {
            let since = back_ms.map_or(String::new(), |b| {
                format!(" AND commit_id >= {}", IdSource::floor_at(now_ms - b))
            });
            let n: Vec<Count> = self.fetch(&format!(
                "SELECT toUInt64(greatest(max(commit_id + (toInt64(events) - 1) * {}), \
                 toInt64(0))) AS n FROM {}.batches WHERE events > 0{since}",
                1i64 << ids::TAG_BITS,
                self.db,
            ))?;
            let n = n.first().map_or(0, |c| i64::try_from(c.n).unwrap_or(0));
            if n > 0 {
                return Ok(EventId::from_raw(n));
            }
        }
        Ok(EventId::from_raw(0))
    }

    fn polled_by_tails(&self) -> Option<Duration> {
        Some(TAIL_POLL)
    }

    fn host_offset(&self, host: &str) -> Result<i64> {
        Ok(self.offsets_now()?.of(host))
    }

    fn set_host_offset(&self, host: &str, offset_ns: i64) -> Result<()> {
        self.write_offsets(&[(host.to_string(), offset_ns, 0, String::new())])
    }

    fn offsets(&self) -> Result<Vec<HostOffset>> {
        let rows: Vec<OffsetRow> = self.fetch(&format!(
            "SELECT host, argMax(offset_ns, updated_ns) AS off, \
             argMax(pairs, updated_ns) AS n, argMax(reference, updated_ns) AS ref, \
             max(updated_ns) AS updated FROM {}.host_offsets GROUP BY host ORDER BY host",
            self.db
        ))?;
        Ok(rows
            .into_iter()
            .map(|r| HostOffset {
                host: r.host,
                offset_ns: r.offset_ns,
                pairs: r.pairs,
                reference: (!r.reference.is_empty()).then_some(r.reference),
                updated_ns: r.updated_ns,
            })
            .collect())
    }

    /// The window's events of the kinds the graphs use, bucketed by the
    /// shared `series.rs`; log lines count by their time, host and pid
    /// only (their JSON is not read).
    fn series(&self, q: &SeriesQuery) -> Result<Series> {
        #[derive(Row, Deserialize)]
        struct SeriesRow {
            id: i64,
            ts: i64,
            host: String,
            pid: u32,
            kind: String,
            json: String,
        }
        let offsets = self.offsets_now()?;
        let f = Filter {
            since: Some(q.since),
            until: Some(q.until),
            hosts: q.hosts.clone(),
            kinds: [
                "log",
                "http",
                "loop",
                "gc",
                "tcp_retransmit",
                "lost",
                "probe",
            ]
            .iter()
            .filter_map(|k| EventKind::parse(k))
            .collect(),
            ..Filter::default()
        };
        let where_ = filter_sql(&self.db, self.sharded, &f, &offsets, None, RawBounds::ALL);
        let rows: Vec<SeriesRow> = self.fetch(&format!(
            "SELECT id, {} AS ts, host, pid, kind, if(kind = 'log', '', json) AS json \
             FROM {}.events WHERE {where_}",
            offsets.ts_expr(),
            self.db
        ))?;
        let mut builder = SeriesBuilder::new(q.clone());
        for r in rows {
            let sample = if r.kind == "log" {
                Some(Sample::Log)
            } else {
                // The event's data: its JSON alone (version 3) or within
                // the whole event's (before), whose other fields it skips.
                let data: EventData =
                    serde_json::from_str(&r.json).map_err(|source| StoreError::Corrupt {
                        id: EventId::from_raw(r.id),
                        source,
                    })?;
                super::series::sample_of(&data)
            };
            if let Some(s) = sample {
                builder.add(r.ts, &r.host, r.pid, s);
            }
        }
        Ok(builder.finish())
    }
}

impl ClickhouseStore {
    /// Records corrections: `(host, offset, pairs, reference)` (an empty
    /// reference: set by hand).
    fn write_offsets(&self, rows: &[(String, i64, i64, String)]) -> Result<()> {
        let mut body = RowBinary::default();
        let now = now_ns();
        for (host, off, pairs, reference) in rows {
            body.str(host)
                .i64(*off)
                .i64(*pairs)
                .str(reference)
                .i64(now)
                .end_row();
        }
        let written = self.insert(
            &format!(
                "INSERT INTO {}.host_offsets (host, offset_ns, pairs, reference, updated_ns) \
                 FORMAT RowBinary",
                self.db
            ),
            body,
        );
        self.ingest_offsets.clear();
        written
    }

    /// Waits until ClickHouse answers (tests and `open` retries).
    pub fn ping(&self, within: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match self.fetch::<Count>("SELECT toUInt64(1) AS n") {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
