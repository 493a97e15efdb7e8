//! The ClickHouse schema (docs/aggregator.md, "Scaling out"): SQL that
//! ClickHouse 18.16 (Debian 12) and current releases both accept: times are
//! `Int64` nanoseconds (18.16 has no `DateTime64`), no experimental types
//! (no `LowCardinality`, no JSON type), plain `MergeTree` tables. The
//! version is a row in `schema_version`; a store written by a newer tracer
//! is refused, an older one is upgraded in place by the steps below.

/// What this tracer writes. Version 2 added `tid` and `comm` ([`ADDED`])
/// and stored a plain log line without JSON. Version 3 added no column:
/// `events.json` holds an event's data alone (`EventData`'s JSON), no
/// longer its time, host, pid, tid and comm, which are columns; rows
/// written before keep their whole JSON and read back as before
/// (`decode` in `mod.rs`). A tracer of version 2 would fail to read the
/// new rows, hence the new version. Version 4 added the table
/// `http_clients` (created when an aggregator opens the store, like every
/// table): a tracer of version 3 would not write it, and the clock
/// estimates of the others would miss the exchanges it stores; and the
/// raw times each batch's events span (`batches.min_raw_ts`,
/// `max_raw_ts`, [`ADDED`]), which bound a live tail's reads. Version 5
/// replaced `http_clients` with `http_keys`: each exchange again under
/// the keys it is looked up by, a client call under its host (what
/// `http_clients` held) and every exchange under each of its request ids,
/// which a trace's lookups read. A tracer of version 4 would not write
/// it, and the clock estimates and traces of the others would miss the
/// exchanges it stores. An older store gets it filled from `http_index`
/// when an aggregator opens it ([`http_keys_from`], `upgrade.rs`); its
/// `http_clients` stays, no longer written or read. Version 5 also added
/// `hosts`, each host's first commit, which the clock offsets' order of
/// hosts reads instead of all of `batches` (filled from `batches` on
/// upgrade, [`HOSTS_FROM_BATCHES`]).
pub const SCHEMA_VERSION: u32 = 5;

/// A column added to a table after version 1: a store of an older version
/// gets it by `ALTER TABLE ... ADD COLUMN` when an aggregator opens it
/// (`upgrade.rs`). Rows written before have the type's default.
pub struct Added {
    pub version: u32,
    /// `events`, `http_index` (on a cluster, also each shard's `_local`)
    /// or `batches`.
    pub table: &'static str,
    pub column: &'static str,
    pub ty: &'static str,
    pub after: &'static str,
}

/// Every column added since version 1, oldest first.
pub const ADDED: [Added; 4] = [
    // Version 2: a log line is stored in columns only, its JSON empty
    // (`mod.rs`, `insert_group` and `decode`). Its JSON repeated its time,
    // host, pid, kind and stream, two thirds of the bytes every insert and
    // every merge of `events` handled.
    Added {
        version: 2,
        table: "events",
        column: "tid",
        ty: "UInt32",
        after: "pid",
    },
    Added {
        version: 2,
        table: "events",
        column: "comm",
        ty: "String",
        after: "tid",
    },
    // Version 4: the raw times a batch's events span, so that a live
    // tail reads only those times of the hosts whose batches are new
    // (`since_cursor` in `mod.rs`). Rows written before have 0 and 0:
    // unknown, and a tail that meets one reads as before.
    Added {
        version: 4,
        table: "batches",
        column: "min_raw_ts",
        ty: "Int64",
        after: "received_ns",
    },
    Added {
        version: 4,
        table: "batches",
        column: "max_raw_ts",
        ty: "Int64",
        after: "min_raw_ts",
    },
];

/// The statements that create this version's tables in database `db`
/// (already quoted as an identifier). `IF NOT EXISTS` everywhere: several
/// aggregators may start at once. With `cluster`, the big tables
/// ([`SHARDED`]) are `Distributed` tables over that cluster's
/// `{table}_local` ([`create_local`], on every shard), spread by a hash of
/// the host; the small tables stay on this server.
pub fn create(db: &str, cluster: Option<&str>) -> Vec<String> {
    let mut out = create_single(db);
    if let Some(cluster) = cluster {
        for (i, table) in SHARDED {
            let columns = out[i]
                .split(") ENGINE")
                .next()
                .unwrap_or_default()
                .to_string();
            out[i] = format!(
                "{columns}) ENGINE = Distributed({cluster}, {db}, {table}_local, cityHash64(host))"
            );
        }
    }
    out
}

/// Where the big tables are in [`create_single`]'s list.
const EVENTS: usize = 2;
const HTTP_INDEX: usize = 4;
const HTTP_KEYS: usize = 8;

/// The tables a cluster spreads over its shards, by their place in
/// [`create_single`]'s list.
pub const SHARDED: [(usize, &str); 3] = [
    (EVENTS, "events"),
    (HTTP_INDEX, "http_index"),
    (HTTP_KEYS, "http_keys"),
];

/// What every shard of a cluster holds: the big tables, under `_local`.
pub fn create_local(db: &str) -> Vec<String> {
    let single = create_single(db);
    let mut out = vec![single[0].clone()];
    for (i, table) in SHARDED {
        out.push(single[i].replacen(&format!(".{table} ("), &format!(".{table}_local ("), 1));
    }
    out
}

/// `http_index`'s statement, for a table called `name` (a rebuild's
/// copy, `layout.rs`).
pub fn http_index(db: &str, name: &str) -> String {
    create_single(db)[HTTP_INDEX].replacen(".http_index (", &format!(".{name} ("), 1)
}

/// The statements that fill `into` (`http_keys` or a shard's
/// `http_keys_local`) from `from` (the `http_index` holding the same
/// hosts' rows) as ingest writes it: each client call under its host,
/// each exchange under each of its distinct request ids ([`KEYED_BY`]).
/// For a store of a version before 5.
pub fn http_keys_from(db: &str, into: &str, from: &str) -> Vec<String> {
    let cols = EXCHANGE_COLUMN_NAMES;
    let mut out = vec![format!(
        "INSERT INTO {db}.{into} (kind, key, {cols}) SELECT '{BY_CLIENT}', host, {cols} \
         FROM {db}.{from} WHERE side = 'client'"
    )];
    out.extend(KEYED_BY.iter().map(|(column, unless)| {
        format!(
            "INSERT INTO {db}.{into} (kind, key, {cols}) SELECT '{BY_REQUEST}', {column}, \
             {cols} FROM {db}.{from} WHERE {column} != ''{unless}"
        )
    }));
    out
}

/// The statement that fills `hosts` from `batches` (`{db}` the
/// database): each host's first commit. For a store of a version before
/// 5.
pub const HOSTS_FROM_BATCHES: &str = "INSERT INTO {db}.hosts (host, first_commit) \
     SELECT host, min(commit_id) FROM {db}.batches GROUP BY host";

/// `http_keys.kind` of a client call under its host (the clock
/// estimates' reads of a client host's latest exchanges).
pub const BY_CLIENT: &str = "client";
/// `http_keys.kind` of an exchange under one of its request ids (a
/// trace's lookups, [`KEYED_BY`]).
pub const BY_REQUEST: &str = "request";

/// The request ids an exchange is found by in `http_keys`: its own, its
/// trace's and the server request it was made within (a client call's),
/// each once, and an empty one never: (column, the SQL condition that it
/// is not one of those before it).
pub const KEYED_BY: [(&str, &str); 3] = [
    ("req_id", ""),
    ("own_trace", " AND own_trace != req_id"),
    (
        "parent_req_id",
        " AND parent_req_id != req_id AND parent_req_id != own_trace",
    ),
];

/// The request ids ingest writes an exchange under in `http_keys`
/// ([`BY_REQUEST`]), as [`KEYED_BY`] says: its own, its trace and its
/// parent request, each once, none empty.
pub fn exchange_keys<'a>(
    req_id: &'a str,
    own_trace: &'a str,
    parent_req_id: &'a str,
) -> impl Iterator<Item = &'a str> {
    let trace = (own_trace != req_id).then_some(own_trace);
    let parent = (parent_req_id != req_id && parent_req_id != own_trace).then_some(parent_req_id);
    [Some(req_id), trace, parent]
        .into_iter()
        .flatten()
        .filter(|k| !k.is_empty())
}

/// The names of [`EXCHANGE_COLUMNS`], in order.
pub const EXCHANGE_COLUMN_NAMES: &str =
    "id, commit_id, host, side, conn, start_ns, end_ns, req_id, parent_req_id, own_trace";

/// The columns of `http_index` and (after its kind and key) `http_keys`
/// (and of version 4's `http_clients`).
const EXCHANGE_COLUMNS: &str = "id Int64, commit_id Int64, host String, side String, \
    conn String, start_ns Int64, end_ns Int64, req_id String, parent_req_id String, \
    own_trace String";

fn create_single(db: &str) -> Vec<String> {
    let tag_mask = (1u32 << super::ids::TAG_BITS) - 1;
    // A day of commit ids (`ids.rs`).
    let commit_day = super::ids::IdSource::floor_at(86_400_000);
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_version (
                version UInt32,
                applied_ns Int64
            ) ENGINE = MergeTree ORDER BY version"
        ),
        // Every event. `commit_id` is its batch's commit (the batch's first
        // id): an event is visible only when its batch's row in `batches`
        // exists and is the first commit of that batch (see `committed`).
        // Sorted by host then raw time: queries give a time range and
        // often hosts, and both prune granules through the primary key.
        // `json` is what the columns do not hold: empty for a plain log
        // line (since version 2), whose columns are all of it; else the
        // event's data without time, host, pid, tid and comm (since
        // version 3); a log line's text is in `text` only.
        // Partitioned by day and by the aggregator that wrote the row (an
        // id's low 8 bits are its aggregator's tag, `ids.rs`): ClickHouse
        // merges parts only within a partition, and grows keener to merge
        // the more parts a partition has, so two aggregators' small
        // inserts in one partition were merged (rewritten) ~1.3 times
        // per row within a 1M-event load, against ~1.0 each in its own,
        // and the server's CPU per event fell ~17% (docs/aggregator.md,
        // "Scaling out"). A table made before 2026-12-06 has one
        // partition per day and works the same.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.events (
                id Int64,
                commit_id Int64,
                raw_ts Int64,
                host String,
                pid UInt32,
                tid UInt32,
                comm String,
                kind String,
                stream String,
                text String,
                req_id String,
                json String
            ) ENGINE = MergeTree
            PARTITION BY (intDiv(raw_ts, 86400000000000), bitAnd(id, {tag_mask}))
            ORDER BY (host, raw_ts, id)"
        ),
        // One row per stored batch, written after its events: the commit
        // record. A batch stored twice (two aggregators racing on one
        // retried batch) has two rows; the lower commit id wins. Before
        // each group, its batches' keys are looked up here (`known`):
        // each key reads the granule that may hold it, and a group's keys
        // are the latest batches of many hosts, so granules of 1024 rows
        // rather than 8192 make that read 8x smaller once the table is
        // large (since 2026-12-06; an older table works the same).
        // Partitioned by the day of the batch's first event (since
        // 2026-12-07): a batch sent again has the same events, so `known`
        // looks in the partitions of its group's days alone, and each
        // insert merges only its day's rows. In one partition, every
        // insert of one row per batch set off a merge of the whole table
        // (18.16 merges parts of under ~1 MB freely), and every lookup
        // read a granule of each part: ~0.3 µs of server CPU per event
        // ingested once the store held 48M (docs/benchmarks.md). And by
        // the day of its last event and of its commit (later on 2026-12-07;
        // for most batches the same day, so a day is still about one
        // partition): each part then records the range of all three
        // columns, so the commit check of a read bounded in time
        // (`sql::committed`) and a live tail's listing of new commits
        // (`batches_past`) skip the parts of other times; before, both
        // read the whole table, every query and every poll. A table
        // created before works the same, reading more.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.batches (
                host String,
                run_id String,
                seq Int64,
                commit_id Int64,
                events UInt32,
                received_ns Int64,
                min_raw_ts Int64,
                max_raw_ts Int64
            ) ENGINE = MergeTree
            PARTITION BY (intDiv(min_raw_ts, 86400000000000), \
                intDiv(max_raw_ts, 86400000000000), intDiv(commit_id, {commit_day}))
            ORDER BY (host, run_id, seq)
            SETTINGS index_granularity = 1024"
        ),
        // HTTP exchanges by connection, for stitching (raw times). Looked
        // up by a few connection keys at a time (after each ingested group
        // and per connection a trace walk crosses): each key reads a
        // granule of every part that may hold it, so granules of 1024 rows
        // rather than 8192 make those lookups 8x cheaper once the table
        // is large. Partitioned by day of `start_ns`, so that every part
        // records the range of start times it holds (its partition key's
        // min/max): the lookups after each group are bounded in time and
        // skip the parts of older traffic, which makes them cost the same
        // however large the table grows (docs/aggregator.md, "Flat as the
        // store grows"). A table created before either (granules of 8192,
        // one partition) works the same, slower.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.http_index ({EXCHANGE_COLUMNS}) ENGINE = MergeTree
            PARTITION BY intDiv(start_ns, 86400000000000)
            ORDER BY (conn, side, start_ns)
            SETTINGS index_granularity = 1024"
        ),
        // Clock difference per host pair (server minus client), the latest
        // row of a pair wins.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.host_pairs (
                client_host String,
                server_host String,
                theta_ns Int64,
                pairs Int64,
                updated_ns Int64
            ) ENGINE = MergeTree ORDER BY (client_host, server_host, updated_ns)"
        ),
        // Clock correction per host, the latest row wins; `reference` is
        // empty for an offset set by hand.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.host_offsets (
                host String,
                offset_ns Int64,
                pairs Int64,
                reference String,
                updated_ns Int64
            ) ENGINE = MergeTree ORDER BY (host, updated_ns)"
        ),
        // The aggregators writing here, for their id tags (`ids.rs`).
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.aggregators (
                tag UInt32,
                started_ns Int64,
                name String
            ) ENGINE = MergeTree ORDER BY (tag, started_ns)"
        ),
        // Every exchange again under the keys it is looked up by, one
        // table for both: a table of its own for the request ids, one
        // more small insert per group and the parts it makes and merges,
        // cost the server ~25% more CPU per event; their rows here, 4-5%
        // (docs/benchmarks.md, 2026-12-07):
        // - kind `client`: a client call under its host, sorted by time:
        //   the clock estimates after ingest read a client host's latest
        //   exchanges (stitch.rs, `estimate`). On `http_index`, sorted by
        //   connection, that read could skip only the parts whose start
        //   times all lie before its bound; once merges joined the new
        //   parts to the older ones of the day, it read them whole (at
        //   49M events 215k rows per read, 36 reads per 1M events
        //   ingested, docs/aggregator.md, "Flat as the store grows").
        //   Version 4 kept these rows in a table of their own,
        //   `http_clients`.
        // - kind `request`: every exchange under each of its request ids
        //   (`KEYED_BY`): a trace's lookups (stitch.rs, `trace`: the id
        //   asked for, a trace's roots, a client call's server request,
        //   the calls made within one). On `http_index` each read all of
        //   it, so a trace took longer the longer the store had been
        //   written.
        // Here the primary key bounds each read to its key (and time),
        // however the parts were merged. Partitioned by day of `start_ns`
        // like `http_index`: a lookup by request id, which has no time,
        // reads a granule per part of every day kept. Since version 5.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.http_keys (kind String, key String, \
             {EXCHANGE_COLUMNS}) ENGINE = MergeTree
            PARTITION BY intDiv(start_ns, 86400000000000)
            ORDER BY (kind, key, start_ns)
            SETTINGS index_granularity = 1024"
        ),
        // Each host an aggregator stored, with the commit of the first
        // group of it that aggregator stored: the least of a host's rows
        // is its first commit. The clock offsets pick their references
        // by it (stitch.rs, `hosts_by_first_commit`); a row per host and
        // aggregator start, where `batches` has one per batch. Since
        // version 5.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.hosts (
                host String,
                first_commit Int64
            ) ENGINE = MergeTree ORDER BY (host, first_commit)"
        ),
    ]
}
