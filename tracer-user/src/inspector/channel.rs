//! How logpoint lines travel: tracer's code in the target appends one JSON
//! object per hit to a file of its own, `tracer-logpoints-PID.jsonl` (in
//! /dev/shm, else the OS temp dir). The log capture already sees every
//! write to a regular file, with the thread and time of the write, so the
//! line reaches `tracer attach` and the agent like any log line, with the
//! same request correlation, and the program's own stdout and stderr stay
//! byte-identical. The pipeline turns those lines into `logpoint` events.
//!
//! The lines node itself prints on stderr when its inspector opens and
//! closes ("Debugger listening on ws://…") become `inspector` events, so
//! they are not mistaken for the program's own output.

use serde::Deserialize;

use crate::event::EventData;

const FILE_PREFIX: &str = "tracer-logpoints-";
const FILE_SUFFIX: &str = ".jsonl";

/// Whether `path` is a logpoint output file.
pub fn is_logpoint_file(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.strip_prefix(FILE_PREFIX)
        .and_then(|rest| rest.strip_suffix(FILE_SUFFIX))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Deserialize)]
struct Hit {
    lp: String,
    loc: String,
    text: String,
    #[serde(default)]
    dropped: u64,
    #[serde(default)]
    unwatched_ms: u64,
}

/// The `logpoint` event for a line of a logpoint file (None when the line
/// is not one: it then stays a plain `log` line).
pub fn logpoint_event(line: &str, req_id: Option<String>) -> Option<EventData> {
    let hit: Hit = serde_json::from_str(line).ok()?;
    Some(EventData::Logpoint {
        id: hit.lp,
        location: hit.loc,
        text: hit.text,
        dropped: hit.dropped,
        unwatched_ms: hit.unwatched_ms,
        req_id,
    })
}

/// Whether a stderr line is one node prints about its inspector.
pub fn is_inspector_notice(line: &str) -> bool {
    line.starts_with("Debugger listening on ws://")
        || line.starts_with("Debugger ending on ws://")
        || line == "For help, see: https://nodejs.org/en/docs/inspector"
        || line == "Debugger attached."
        || line == "Waiting for the debugger to disconnect..."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files() {
        assert!(is_logpoint_file("/dev/shm/tracer-logpoints-4242.jsonl"));
        assert!(!is_logpoint_file("/dev/shm/tracer-logpoints-.jsonl"));
        assert!(!is_logpoint_file("/var/log/app.jsonl"));
    }

    #[test]
    fn lines() {
        let e = logpoint_event(
            r#"{"lp":"lp-0011aabb","loc":"/a.js:3:5","text":"x=1","dropped":2}"#,
            Some("r1".into()),
        )
        .unwrap();
        assert_eq!(
            e,
            EventData::Logpoint {
                id: "lp-0011aabb".into(),
                location: "/a.js:3:5".into(),
                text: "x=1".into(),
                dropped: 2,
                unwatched_ms: 0,
                req_id: Some("r1".into())
            }
        );
        assert!(logpoint_event("not json", None).is_none());
    }

    /// docs/events.md: the fields, absent ones left out, and the text form.
    #[test]
    fn event_json_and_text() {
        let e = crate::event::Event {
            ts_ns: 1_764_200_000_123_456_789,
            host: "h1".into(),
            pid: 7,
            tid: 7,
            comm: "node".into(),
            data: logpoint_event(
                r#"{"lp":"lp-0011aabb","loc":"/a.js:3:5","text":"x=1"}"#,
                None,
            )
            .unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ts_ns":1764200000123456789,"host":"h1","pid":7,"tid":7,"comm":"node","kind":"logpoint","id":"lp-0011aabb","location":"/a.js:3:5","text":"x=1"}"#
        );
        assert_eq!(
            e.to_text(),
            "2025-11-26T23:33:20.123456Z h1 7/7 node logpoint lp-0011aabb /a.js:3:5| x=1"
        );
        let back: crate::event::Event =
            serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        // After the rate cap lifted it: both counts, in JSON and text.
        let lifted = crate::event::Event {
            data: logpoint_event(
                r#"{"lp":"lp-0011aabb","loc":"/a.js:3:5","text":"x=1","dropped":100,"unwatched_ms":850}"#,
                None,
            )
            .unwrap(),
            ..e.clone()
        };
        assert!(
            serde_json::to_string(&lifted)
                .unwrap()
                .ends_with(r#""text":"x=1","dropped":100,"unwatched_ms":850}"#)
        );
        assert_eq!(
            lifted.to_text(),
            "2025-11-26T23:33:20.123456Z h1 7/7 node logpoint lp-0011aabb /a.js:3:5| x=1 \
             [100 dropped, not watched for 850 ms]"
        );
        assert!(is_inspector_notice(
            "Debugger listening on ws://127.0.0.1:9229/abc"
        ));
        assert!(!is_inspector_notice("Debugger listening"));
    }
}
