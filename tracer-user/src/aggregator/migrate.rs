//! `tracer migrate --from DIR --to clickhouse://...`: copies an SQLite
//! store into a ClickHouse store (docs/aggregator.md, "Scaling out").
//! `tracer migrate --rebuild-http-index --to clickhouse://...` brings a
//! ClickHouse store's `http_index` tables of an older layout up to date
//! (`clickhouse/layout.rs`).
//!
//! Every event is read through the `Store` trait in commit (id) order, as
//! the aggregator shows it (its clock-corrected time), and stored again
//! through the target's own ingest, so the target builds its own indexes
//! (log text, HTTP exchanges for stitching). What the copy keeps exact:
//! every event (host, pid, kind, every field), its time as queries show
//! it, and each host's clock offset. The target shows a time as `raw +
//! the host's offset`, so each event goes in at its shown time minus its
//! host's current offset in the source, and those offsets are set on the
//! target last.
//!
//! Rerunning is harmless: events go in as batches named by the source
//! (`run_id` from the source's path) and by fixed id ranges (`seq`), so a
//! batch stored by an earlier run is a duplicate the target skips. The
//! source must not be written meanwhile (stop its aggregator first): only
//! the events committed when the copy starts are copied.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{
    clickhouse,
    sqlite::SqliteStore,
    store::{Batch, EventId, Filter, Store},
};

/// Copy an SQLite store into a ClickHouse store: every event, its time and
/// each host's clock offset. Rerunning stores nothing twice. Or bring a
/// ClickHouse store's tables of an older layout up to date.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # stop the SQLite aggregator first, then:
  tracer migrate --from /var/lib/tracer --to clickhouse://127.0.0.1:8123/tracer \\
      --clickhouse-user tracer --clickhouse-password-file /etc/tracer/ch-password

  # an aggregator warned that http_index has an older layout: stop the
  # aggregators, then:
  tracer migrate --rebuild-http-index --to clickhouse://127.0.0.1:8123/tracer \\
      --clickhouse-user tracer --clickhouse-password-file /etc/tracer/ch-password

Then start the aggregators with --store instead of --data. Run it again if it
was interrupted: batches already copied are skipped, tables already rebuilt
are left alone. See docs/aggregator.md, \"Scaling out\".")]
pub struct MigrateArgs {
    /// The SQLite store's directory (an aggregator's --data).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "rebuild_http_index",
        conflicts_with = "rebuild_http_index"
    )]
    pub from: Option<PathBuf>,

    /// Instead of copying: rebuild the store's `http_index` tables created
    /// before 2026-12-06 (not partitioned by time, so ingest slows as they
    /// grow) in the current layout. Stop the aggregators first: rows
    /// written during the copy would be left behind.
    #[arg(long)]
    pub rebuild_http_index: bool,

    /// The ClickHouse store, `clickhouse://HOST:8123/DB` (`clickhouses://`
    /// for HTTPS); its tables are created if missing.
    #[arg(long, value_name = "URL")]
    pub to: String,

    #[command(flatten)]
    pub clickhouse: super::ClickhouseArgs,
}

/// Events read from the source per step.
const PAGE: usize = 10_000;
/// Source ids per copied batch: a batch holds one host's events with ids
/// in `[seq * ID_RANGE, (seq + 1) * ID_RANGE)`, the same on every run.
const ID_RANGE: i64 = 2048;
/// Batches stored together.
const GROUP: usize = 16;

/// What a copy did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Events in the source when the copy started.
    pub events: u64,
    /// Of those, stored now (not by an earlier run).
    pub stored: u64,
    /// Batches found already copied.
    pub skipped_batches: u64,
    pub hosts: usize,
}

pub async fn run(args: MigrateArgs) -> Result<()> {
    let config = args.clickhouse.config(&args.to)?;
    let Some(from) = args.from.clone() else {
        return rebuild(config).await;
    };
    if !from.is_dir() {
        bail!(
            "{} is not an SQLite store (give the directory an aggregator ran with --data)",
            from.display()
        );
    }
    let described = format!("ClickHouse {}/{}", config.url, config.database);
    let copied = tokio::task::spawn_blocking(move || -> Result<Copied> {
        let source = SqliteStore::open(&from)
            .with_context(|| format!("opening the SQLite store in {}", from.display()))?;
        let target = clickhouse::ClickhouseStore::open(&config)
            .with_context(|| format!("opening the store {described}"))?;
        let run_id = format!("migrate:{}", source.path().display());
        copy(&source, &target, &run_id)
    })
    .await
    .context("the copy stopped")??;
    eprintln!(
        "tracer: copied {} events from {} hosts ({} stored now, {} batches were copied already)",
        copied.events, copied.hosts, copied.stored, copied.skipped_batches
    );
    Ok(())
}

/// `--rebuild-http-index`: every `http_index` table of the older layout,
/// rebuilt; what it does on stderr.
async fn rebuild(config: clickhouse::Config) -> Result<()> {
    let described = format!("ClickHouse {}/{}", config.url, config.database);
    let rebuilt = tokio::task::spawn_blocking(move || -> Result<usize> {
        let store = clickhouse::ClickhouseStore::open(&config)
            .with_context(|| format!("opening the store {described}"))?;
        Ok(store.rebuild_http_index(&config, &mut |line| eprintln!("tracer: {line}"))?)
    })
    .await
    .context("the rebuild stopped")??;
    eprintln!("tracer: {rebuilt} http_index table(s) rebuilt");
    Ok(())
}

/// Copies every event `source` holds now into `target`, then each host's
/// offset. `run_id` names the source in the target's batch keys (at most
/// `MAX_RUN_ID_LEN` bytes are kept).
pub fn copy(source: &dyn Store, target: &dyn Store, run_id: &str) -> Result<Copied> {
    let run_id: String = {
        let mut s = run_id.to_string();
        while s.len() > super::store::MAX_RUN_ID_LEN {
            s.pop();
        }
        s
    };
    let offsets: HashMap<String, i64> = source
        .offsets()?
        .into_iter()
        .map(|o| (o.host, o.offset_ns))
        .collect();
    let last = source.cursor()?;
    let all = Filter::default();
    let mut copied = Copied::default();
    let mut hosts = std::collections::HashSet::new();
    // One id range's events, by host, until the range is complete.
    let mut range: Option<i64> = None;
    let mut pending: BTreeMap<String, Vec<crate::event::Event>> = BTreeMap::new();
    let mut ready: Vec<Batch> = Vec::new();
    let mut cursor = EventId::START;
    let flush_range = |pending: &mut BTreeMap<String, Vec<crate::event::Event>>,
                       ready: &mut Vec<Batch>,
                       seq: i64| {
        for (host, events) in std::mem::take(pending) {
            ready.push(Batch {
                host,
                run_id: run_id.clone(),
                seq: u64::try_from(seq).unwrap_or(0),
                events,
            });
        }
    };
    loop {
        let page = source.since_cursor(cursor, &all, PAGE)?;
        // Done when nothing is left, or past what was committed at the
        // start (ids may have gaps, so the last one is not always seen).
        let mut done = page.is_empty();
        for s in page {
            if s.id > last {
                done = true;
                break;
            }
            cursor = s.id;
            let seq = s.id.raw().div_euclid(ID_RANGE);
            if range.is_some_and(|r| r != seq) {
                flush_range(&mut pending, &mut ready, range.unwrap_or(0));
            }
            range = Some(seq);
            let mut event = s.event;
            let offset = offsets.get(&event.host).copied().unwrap_or(0);
            let shown = i64::try_from(event.ts_ns).unwrap_or(i64::MAX);
            event.ts_ns = u64::try_from(shown.saturating_sub(offset)).unwrap_or(0);
            hosts.insert(event.host.clone());
            copied.events += 1;
            pending.entry(event.host.clone()).or_default().push(event);
        }
        let finished = done || cursor >= last;
        if finished && let Some(r) = range {
            flush_range(&mut pending, &mut ready, r);
        }
        while ready.len() >= GROUP || (finished && !ready.is_empty()) {
            let group: Vec<Batch> = ready.drain(..ready.len().min(GROUP)).collect();
            for (i, outcome) in target.ingest_many(group).into_iter().enumerate() {
                let o = outcome.with_context(|| format!("storing copied batch {i} of a group"))?;
                if o.duplicate {
                    copied.skipped_batches += 1;
                } else {
                    copied.stored += o.stored.len() as u64;
                }
            }
        }
        if finished {
            break;
        }
    }
    // Last: each host's offset (0 when the source has none, whatever the
    // target estimated while copying), so that what the target shows is
    // what the source showed.
    for host in hosts.iter().chain(offsets.keys()) {
        target.set_host_offset(host, offsets.get(host).copied().unwrap_or(0))?;
    }
    copied.hosts = hosts.len();
    Ok(copied)
}
