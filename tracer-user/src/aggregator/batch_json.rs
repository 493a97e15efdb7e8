//! Parsing an ingest body: the derived parser's answer, in less time.
//!
//! `Event` is `#[serde(flatten)]` over an internally tagged `EventData`,
//! so serde's derived parser first copies every field of every event into
//! a buffer of its own (`Content`: each string allocated once more), then
//! parses that buffer again. That took 0.8 µs of the ~1.6 µs an
//! aggregator spends per event (docs/benchmarks.md).
//!
//! Agents write each event in one order: the common fields (`ts_ns`,
//! `host`, `pid`, `tid`, `comm`), then `kind`, then the kind's own fields
//! (that is how `Event` serializes). For that shape this module parses
//! straight into the final types: the common fields directly, then the
//! rest of the object as the kind's fields. Anything else (another order,
//! a field twice, a malformed body) makes it give up, and the whole body
//! is parsed again by the derived parser, whose answer (the batch, or the
//! error the agent is told) is the one that counts. So the result is
//! always the derived parser's; `tests` compares the two.

use std::{cell::Cell, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{
        self, DeserializeSeed, IntoDeserializer as _, MapAccess, SeqAccess, Visitor,
        value::{BorrowedStrDeserializer, MapAccessDeserializer},
    },
};

use super::store::Batch;
use crate::event::{Event, EventData, HttpExchange, StreamName, Tuple};

/// Parses an ingest body as `serde_json::from_slice::<Batch>` does.
pub fn parse_batch(json: &[u8]) -> serde_json::Result<Batch> {
    match serde_json::from_slice::<FastBatch>(json) {
        Ok(FastBatch(batch)) => Ok(batch),
        Err(_) => serde_json::from_slice(json),
    }
}

/// A batch whose events take the direct path.
struct FastBatch(Batch);

impl<'de> Deserialize<'de> for FastBatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            host: String,
            run_id: String,
            seq: u64,
            events: FastEvents,
        }
        let s = Shape::deserialize(d)?;
        Ok(FastBatch(Batch {
            host: s.host,
            run_id: s.run_id,
            seq: s.seq,
            events: s.events.0,
        }))
    }
}

struct FastEvents(Vec<Event>);

impl<'de> Deserialize<'de> for FastEvents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Events;
        impl<'de> Visitor<'de> for Events {
            type Value = FastEvents;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FastEvents, A::Error> {
                let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(e) = seq.next_element_seed(EventSeed)? {
                    events.push(e);
                }
                Ok(FastEvents(events))
            }
        }
        d.deserialize_seq(Events)
    }
}

/// The keys `Event` reads itself; every other key is the kind's.
const COMMON: [&str; 6] = ["ts_ns", "host", "pid", "tid", "comm", "kind"];

struct EventSeed;

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = Event;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event with its common fields first, then kind")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut ts_ns = None;
        let mut host = None;
        let mut pid = None;
        let mut tid = None;
        let mut comm = None;
        fn once<T, E: de::Error>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), E> {
            match slot.replace(v) {
                None => Ok(()),
                Some(_) => Err(E::duplicate_field(name)),
            }
        }
        let data = loop {
            let Some(key) = map.next_key::<Key>()? else {
                return Err(de::Error::missing_field("kind"));
            };
            match key {
                Key::TsNs => once(&mut ts_ns, map.next_value()?, "ts_ns")?,
                Key::Host => once(&mut host, map.next_value()?, "host")?,
                Key::Pid => once(&mut pid, map.next_value()?, "pid")?,
                Key::Tid => once(&mut tid, map.next_value()?, "tid")?,
                Key::Comm => once(&mut comm, map.next_value()?, "comm")?,
                Key::Kind => {
                    let kind: Kind = map.next_value()?;
                    break kind.read_rest(&mut map)?;
                }
                Key::Other => return Err(de::Error::custom("a kind's field before kind")),
            }
        };
        let missing = de::Error::missing_field;
        Ok(Event {
            ts_ns: ts_ns.ok_or_else(|| missing("ts_ns"))?,
            host: host.ok_or_else(|| missing("host"))?,
            pid: pid.ok_or_else(|| missing("pid"))?,
            tid: tid.ok_or_else(|| missing("tid"))?,
            comm: comm.ok_or_else(|| missing("comm"))?,
            data,
        })
    }
}

/// A key of an event object.
enum Key {
    TsNs,
    Host,
    Pid,
    Tid,
    Comm,
    Kind,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrAs("a field name", |v| match v {
            "ts_ns" => Key::TsNs,
            "host" => Key::Host,
            "pid" => Key::Pid,
            "tid" => Key::Tid,
            "comm" => Key::Comm,
            "kind" => Key::Kind,
            _ => Key::Other,
        }))
    }
}

/// Reads a string as a `T` (what it is, and how), without allocating
/// for it.
struct StrAs<T>(&'static str, fn(&str) -> T);

impl<T> Visitor<'_> for StrAs<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.1)(v))
    }
}

/// The kinds read directly; any other `kind` value goes through `Value`.
enum Kind {
    Log,
    Http,
    TcpConnect,
    TcpAccept,
    Other(String),
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrAs("an event kind", |v| match v {
            "log" => Kind::Log,
            "http" => Kind::Http,
            "tcp_connect" => Kind::TcpConnect,
            "tcp_accept" => Kind::TcpAccept,
            other => Kind::Other(other.to_owned()),
        }))
    }
}

/// A log line's fields, as `EventData::Log` declares them.
#[derive(Deserialize)]
struct LogFields {
    stream: StreamName,
    #[serde(default)]
    path: Option<String>,
    text: String,
    #[serde(default)]
    truncated: bool,
    #[serde(default)]
    req_id: Option<String>,
}

impl Kind {
    /// Reads the rest of the event's object as this kind's fields.
    fn read_rest<'de, A: MapAccess<'de>>(self, map: &mut A) -> Result<EventData, A::Error> {
        let common_seen = Cell::new(false);
        let rest = MapAccessDeserializer::new(KindFields {
            map,
            common_seen: &common_seen,
        });
        let data = match self {
            Kind::Log => {
                let f = LogFields::deserialize(rest)?;
                EventData::Log {
                    stream: f.stream,
                    path: f.path,
                    text: f.text,
                    truncated: f.truncated,
                    req_id: f.req_id,
                }
            }
            Kind::Http => EventData::Http(Box::new(HttpExchange::deserialize(rest)?)),
            Kind::TcpConnect => EventData::TcpConnect(Tuple::deserialize(rest)?),
            Kind::TcpAccept => EventData::TcpAccept(Tuple::deserialize(rest)?),
            Kind::Other(kind) => {
                let mut fields = UniqueMap::deserialize(rest)?.0;
                fields.insert("kind".into(), kind.into());
                EventData::deserialize(serde_json::Value::Object(fields))
                    .map_err(de::Error::custom)?
            }
        };
        if common_seen.get() {
            return Err(de::Error::custom("a common field after kind"));
        }
        Ok(data)
    }
}

/// The rest of an event's object, after `kind`. Notes a common field (or
/// `kind` again) there, which the direct path does not handle.
struct KindFields<'a, A> {
    map: &'a mut A,
    common_seen: &'a Cell<bool>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for KindFields<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.map.next_key_seed(NotingKey {
            seed,
            common_seen: self.common_seen,
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A key seed that looks at the key before passing it on.
struct NotingKey<'a, K> {
    seed: K,
    common_seen: &'a Cell<bool>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for NotingKey<'_, K> {
    type Value = K::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for NotingKey<'_, K> {
    type Value = K::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<K::Value, E> {
        if COMMON.contains(&v) {
            self.common_seen.set(true);
        }
        self.seed.deserialize(BorrowedStrDeserializer::new(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<K::Value, E> {
        if COMMON.contains(&v) {
            self.common_seen.set(true);
        }
        self.seed.deserialize(v.to_owned().into_deserializer())
    }
}

/// A JSON object that refuses a key given twice, as the derived parser
/// does for every field it knows.
struct UniqueMap(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueMap, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!("duplicate field `{k}`")));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Fields)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::event::{AuditRecord, HttpSide, LossStage, ProbeHit, ProcessOutcome};

    fn tuple() -> Tuple {
        Tuple {
            saddr: "10.0.0.2".parse().unwrap(),
            sport: 8080,
            daddr: "::1".parse().unwrap(),
            dport: 41_000,
        }
    }

    /// One event of every kind, optional fields set on some and not others.
    fn every_kind() -> Vec<EventData> {
        vec![
            EventData::Log {
                stream: StreamName::Stdout,
                path: None,
                text: "plain \"quoted\" \u{e9}\n".into(),
                truncated: false,
                req_id: None,
            },
            EventData::Log {
                stream: StreamName::File,
                path: Some("/var/log/app.log".into()),
                text: "cut".into(),
                truncated: true,
                req_id: Some(String::new()),
            },
            EventData::Http(Box::new(HttpExchange {
                side: HttpSide::Client,
                method: "POST".into(),
                path: "/a?b=c".into(),
                status: 201,
                duration_ns: 1_500_000,
                req_bytes: 10,
                resp_bytes: 20,
                tuple: tuple(),
                tls: true,
                req_id: "r-1".into(),
                parent_req_id: Some("r-0".into()),
                traceparent: Some("00-aa-bb-01".into()),
                request_id: None,
                complete: false,
                req_body: Some("{}".into()),
                resp_body: None,
            })),
            EventData::TcpConnect(tuple()),
            EventData::TcpAccept(tuple()),
            EventData::TcpClose {
                tuple: tuple(),
                bytes_sent: 900,
                bytes_received: 120,
                retransmits: 2,
                duration_ns: None,
                preexisting: true,
                failed: false,
            },
            EventData::TcpRetransmit {
                tuple: tuple(),
                segments: 3,
            },
            EventData::Loop {
                poll_ns: 5,
                busy_ns: 6,
            },
            EventData::Gc { duration_ns: 7 },
            EventData::Exec {
                exe: "/usr/bin/node".into(),
            },
            EventData::Lost {
                count: 8,
                stage: LossStage::Ring,
                for_kind: Some("log".into()),
            },
            EventData::Exit {
                exit_code: None,
                signal: Some(9),
            },
            EventData::Logpoint {
                id: "lp-1".into(),
                location: "/srv/a.js:3:5".into(),
                text: "x=1".into(),
                dropped: 4,
                unwatched_ms: 0,
                req_id: Some("r-1".into()),
            },
            EventData::Inspector {
                text: "Debugger listening".into(),
            },
            EventData::Probe(Box::new(ProbeHit {
                probe: "usdt:node:gc__start".into(),
                object: "/usr/bin/node".into(),
                point: "node:gc__start".into(),
                record: "args".into(),
                count: None,
                interval_ns: None,
                args: Some(vec![json!(1), json!("two")]),
                latency_ns: None,
            })),
            EventData::Audit(Box::new(AuditRecord {
                command: "cmd-1".into(),
                phase: "done".into(),
                who: "alice".into(),
                op: "eval".into(),
                args: json!({ "expression": "1+1" }),
                match_cmdline: Some("api".into()),
                processes: vec![ProcessOutcome {
                    pid: 42,
                    ok: true,
                    result: Some(json!(2)),
                    text: None,
                    error: None,
                }],
                error: None,
            })),
        ]
    }

    fn batch_of(data: Vec<EventData>) -> Batch {
        Batch {
            host: "h1".into(),
            run_id: "run-1".into(),
            seq: 3,
            events: data
                .into_iter()
                .enumerate()
                .map(|(i, data)| Event {
                    ts_ns: 1_000 + i as u64,
                    host: "h1".into(),
                    pid: 42,
                    tid: 43,
                    comm: "node".into(),
                    data,
                })
                .collect(),
        }
    }

    /// What the direct path makes of `json`, if it takes it.
    fn direct(json: &str) -> Option<Batch> {
        serde_json::from_str::<FastBatch>(json).ok().map(|b| b.0)
    }

    /// `parse_batch` answers exactly as the derived parser does, and the
    /// direct path never accepts what the derived parser refuses or reads
    /// differently.
    fn agrees(json: &str) {
        let derived = serde_json::from_str::<Batch>(json).map_err(|e| e.to_string());
        let ours = parse_batch(json.as_bytes()).map_err(|e| e.to_string());
        assert_eq!(ours, derived, "{json}");
        if let Some(d) = direct(json) {
            assert_eq!(Ok(d), derived, "the direct path read {json} differently");
        }
    }

    #[test]
    fn every_kind_takes_the_direct_path_and_reads_as_derived() {
        for data in every_kind() {
            let batch = batch_of(vec![data]);
            let json = serde_json::to_string(&batch).unwrap();
            assert_eq!(direct(&json).as_ref(), Some(&batch), "{json}");
            agrees(&json);
        }
        let all = batch_of(every_kind());
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(direct(&json), Some(all));
    }

    /// An object's fields in the order written (`serde_json::Map` sorts
    /// them).
    struct Ordered(Vec<(String, Value)>);

    impl<'de> Deserialize<'de> for Ordered {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Fields;
            impl<'de> Visitor<'de> for Fields {
                type Value = Ordered;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        out.push(entry);
                    }
                    Ok(Ordered(out))
                }
            }
            d.deserialize_map(Fields)
        }
    }

    /// The fields of each event of a batch of every kind, in the order
    /// `Event` writes them.
    fn event_fields() -> Vec<Vec<(String, Value)>> {
        batch_of(every_kind())
            .events
            .iter()
            .map(|e| {
                serde_json::from_str::<Ordered>(&serde_json::to_string(e).unwrap())
                    .unwrap()
                    .0
            })
            .collect()
    }

    /// Writes a batch holding one event whose fields are `fields`, in
    /// that order (repeats allowed).
    fn with_fields(fields: &[(String, Value)]) -> String {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
            .collect();
        format!(
            r#"{{"host":"h1","run_id":"run-1","seq":3,"events":[{{{}}}]}}"#,
            body.join(",")
        )
    }

    #[test]
    fn other_shapes_read_as_the_derived_parser_reads_them() {
        for fields in event_fields() {
            assert_eq!(fields[5].0, "kind");
            assert!(direct(&with_fields(&fields)).is_some());
            let n = fields.len();
            // Every field moved to the front, and to the back.
            for i in 0..n {
                let mut f = fields.clone();
                let x = f.remove(i);
                f.insert(0, x.clone());
                agrees(&with_fields(&f));
                let mut f = fields.clone();
                f.remove(i);
                f.push(x);
                agrees(&with_fields(&f));
            }
            // Every field missing, given twice, or of the wrong type.
            for i in 0..n {
                let mut f = fields.clone();
                f.remove(i);
                agrees(&with_fields(&f));
                let mut f = fields.clone();
                f.push(fields[i].clone());
                agrees(&with_fields(&f));
                let mut f = fields.clone();
                f.insert(5, fields[i].clone());
                agrees(&with_fields(&f));
                let mut f = fields.clone();
                f[i].1 = json!([1]);
                agrees(&with_fields(&f));
                let mut f = fields.clone();
                f[i].1 = Value::Null;
                agrees(&with_fields(&f));
            }
            // An unknown field before kind (the derived parser ignores
            // it; the direct path leaves it to that parser), and after.
            let mut f = fields.clone();
            f.insert(1, ("extra".into(), json!(1)));
            agrees(&with_fields(&f));
            let mut f = fields.clone();
            f.push(("extra".into(), json!({ "a": [1, 2] })));
            let json = with_fields(&f);
            agrees(&json);
        }
    }

    #[test]
    fn malformed_bodies_get_the_derived_parsers_error() {
        let good = serde_json::to_string(&batch_of(every_kind())).unwrap();
        for bad in [
            "",
            "{",
            "[]",
            r#"{"host":"h1","run_id":"r","seq":1}"#,
            r#"{"host":"h1","run_id":"r","seq":1,"events":{}}"#,
            r#"{"host":"h1","run_id":"r","seq":1,"events":[1]}"#,
            r#"{"host":"h1","run_id":"r","seq":1,"events":[{"kind":"nope"}]}"#,
            r#"{"host":"h1","run_id":"r","seq":-1,"events":[]}"#,
        ] {
            agrees(bad);
            assert!(parse_batch(bad.as_bytes()).is_err(), "{bad}");
        }
        // Cut anywhere.
        for end in (0..good.len()).step_by(7) {
            agrees(&good[..end]);
        }
        // A key written with an escape is the same key.
        let escaped = good.replacen(r#""text":"#, r#""te\u0078t":"#, 1);
        assert_ne!(escaped, good);
        agrees(&escaped);
        assert_eq!(
            parse_batch(escaped.as_bytes()).unwrap(),
            batch_of(every_kind())
        );
    }
}
