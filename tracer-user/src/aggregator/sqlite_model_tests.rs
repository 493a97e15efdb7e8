//! The SQLite store against a model: random batches (log lines in blocks,
//! other events as rows, times overlapping across batches and hosts) and
//! random queries, each answered by the store and by filtering and sorting
//! everything in memory. The block side's early stops, the merge with the
//! rows and the paging must give exactly the model's answer.

use super::{
    sqlite::SqliteStore,
    store::{Batch, Filter, Position, Query, Store as _, Stored, TextMatch},
};
use crate::event::{Event, EventData, StreamName};
use rand::{RngExt as _, SeedableRng as _, rngs::StdRng};

/// A seeded generator: the same test every run.
struct Rng(StdRng);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const HOSTS: [&str; 3] = ["a", "b", "c"];
const WORDS: [&str; 6] = ["GET /x", "error disk", "ok", "Error net", "slow", "retry"];

fn event(rng: &mut Rng, host: &str, ts: u64) -> Event {
    let data = match rng.below(10) {
        0..7 => EventData::Log {
            stream: *rng.pick(&[StreamName::Stdout, StreamName::Stderr, StreamName::File]),
            path: (rng.below(4) == 0).then(|| "/var/log/app.log".to_string()),
            text: format!("{} {}", rng.pick(&WORDS), rng.below(1000)),
            truncated: rng.below(8) == 0,
            req_id: (rng.below(3) == 0).then(|| format!("r{}", rng.below(5))),
        },
        7 => EventData::Gc {
            duration_ns: rng.below(1000),
        },
        8 => EventData::Loop {
            poll_ns: rng.below(1000),
            busy_ns: rng.below(1000),
        },
        _ => EventData::Lost {
            count: rng.below(5) + 1,
            stage: crate::event::LossStage::Ring,
            for_kind: None,
        },
    };
    Event {
        ts_ns: ts,
        host: host.into(),
        pid: 1 + rng.below(3) as u32,
        tid: 1,
        comm: "node".into(),
        data,
    }
}

fn filter(rng: &mut Rng) -> Filter {
    let mut f = Filter::default();
    if rng.below(3) == 0 {
        f.since = Some(rng.below(2_000) as i64);
    }
    if rng.below(3) == 0 {
        f.until = Some(500 + rng.below(2_000) as i64);
    }
    if rng.below(3) == 0 {
        f.hosts = vec![rng.pick(&HOSTS).to_string()];
    }
    match rng.below(5) {
        0 => f.kinds = vec!["log".into()],
        1 => f.kinds = vec!["gc".into(), "lost".into()],
        2 => f.kinds = vec!["log".into(), "loop".into()],
        _ => {}
    }
    if rng.below(4) == 0 {
        f.stream = Some(rng.pick(&["stdout", "stderr", "file"]).to_string());
    }
    if rng.below(3) == 0 {
        f.text = Some(TextMatch {
            pattern: rng.pick(&["error", "^ok", r"\d9$", "net|disk"]).to_string(),
            case_insensitive: rng.below(2) == 0,
        });
    }
    f
}

fn key(s: &Stored) -> (i64, i64) {
    let p = Position::from(s);
    (p.ts_ns, p.id)
}

#[test]
fn queries_match_a_model_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let mut rng = Rng(StdRng::seed_from_u64(0x5eed_1234_abcd_0001));
    let mut all: Vec<Stored> = Vec::new();
    let mut seq = [0u64; 3];
    for _ in 0..80 {
        let h = rng.below(3) as usize;
        // Batches overlap in time, within a host and across hosts.
        let start = rng.below(2_000);
        let events: Vec<Event> = (0..1 + rng.below(40))
            .map(|_| {
                let ts = start + rng.below(300);
                event(&mut rng, HOSTS[h], ts)
            })
            .collect();
        let out = store
            .ingest(Batch {
                host: HOSTS[h].into(),
                run_id: "run".into(),
                seq: seq[h],
                events,
            })
            .unwrap();
        seq[h] += 1;
        all.extend(out.stored);
    }
    // A re-timed host moves its rows and its blocks alike.
    store.set_host_offset("b", 250).unwrap();
    for s in &mut all {
        if s.event.host == "b" {
            s.event.ts_ns += 250;
        }
    }
    let mut by_time = all.clone();
    by_time.sort_by_key(key);
    let max_id = all.iter().map(|s| s.id).max().unwrap();
    assert_eq!(store.cursor().unwrap(), max_id);
    for round in 0..400 {
        let f = filter(&mut rng);
        let re = f.text.as_ref().map(|t| t.compile().unwrap());
        let matching: Vec<&Stored> = by_time
            .iter()
            .filter(|s| f.matches(&s.event, re.as_ref()))
            .collect();
        assert_eq!(
            store.count(&f).unwrap(),
            matching.len() as u64,
            "round {round}: count {f:?}"
        );
        let newest_first = rng.below(2) == 0;
        let limit = 1 + rng.below(30) as usize;
        let as_of = (rng.below(3) == 0).then(|| rng.below(max_id as u64 + 1) as i64);
        let after =
            (rng.below(2) == 0 && !by_time.is_empty()).then(|| Position::from(rng.pick(&by_time)));
        let q = Query {
            filter: f.clone(),
            after,
            as_of,
            newest_first,
            limit,
        };
        let mut want: Vec<Stored> = matching
            .iter()
            .filter(|s| as_of.is_none_or(|a| s.id <= a))
            .filter(|s| {
                after.is_none_or(|p| {
                    let k = key(s);
                    if newest_first {
                        k < (p.ts_ns, p.id)
                    } else {
                        k > (p.ts_ns, p.id)
                    }
                })
            })
            .map(|s| (*s).clone())
            .collect();
        if newest_first {
            want.reverse();
        }
        want.truncate(limit);
        assert_eq!(store.query(&q).unwrap(), want, "round {round}: {q:?}");
        let cursor = rng.below(max_id as u64 + 1) as i64;
        let mut since: Vec<Stored> = matching
            .iter()
            .filter(|s| s.id > cursor)
            .map(|s| (*s).clone())
            .collect();
        since.sort_by_key(|s| s.id);
        since.truncate(limit);
        assert_eq!(
            store.since_cursor(cursor, &f, limit).unwrap(),
            since,
            "round {round}: since {cursor} {f:?}"
        );
    }
}
