// Small helpers shared by the UI modules. Captured text only ever reaches
// the page through textContent (el() below): never through innerHTML.

/** Creates an element; `props` sets properties (className, dataset.*,
 * title, ...), children are nodes or strings (added as text). */
export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c == null) continue;
    e.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

/** Milliseconds since the epoch → the ns string the API takes (exact). */
export function nsParam(ms) {
  return (BigInt(Math.round(ms * 1000)) * 1000n).toString();
}

/** Event time in ms (floating; sub-µs precision is not needed to draw). */
export function evMs(e) {
  return e.ts_ns / 1e6;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

/** "HH:MM:SS.mmm" in UTC (the CLI prints UTC too). */
export function fmtClock(ms) {
  const d = new Date(ms);
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}`;
}

/** Full UTC time, as RFC 3339 with milliseconds. */
export function fmtTime(ms) {
  return new Date(ms).toISOString();
}

/** A duration in ns, readable. */
export function fmtDur(ns) {
  if (ns == null) return '?';
  if (ns < 1e3) return `${ns} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(1)} µs`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : 1)} ms`;
  return `${(ns / 1e9).toFixed(2)} s`;
}

/** A span of ms, readable (axis labels, window). */
export function fmtSpan(ms) {
  return fmtDur(ms * 1e6);
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

/** One line describing an event (tooltips, tail, trace rows). */
// The counts a logpoint line carries about the hits before it, as the
// CLI's text form writes them.
function logpointDropped(e) {
  if (!e.dropped && !e.unwatched_ms) return '';
  const unwatched = e.unwatched_ms ? `, not watched for ${e.unwatched_ms} ms` : '';
  return ` [${e.dropped || 0} dropped${unwatched}]`;
}

export function describe(e) {
  switch (e.kind) {
    case 'log':
      return `${e.stream}| ${e.text}`;
    case 'http':
      return `${e.side === 'server' ? 'served' : 'called'} ${e.method} ${e.path} ${e.status} ${fmtDur(e.duration_ns)}`;
    case 'gc':
      return `gc ${fmtDur(e.duration_ns)}`;
    case 'loop':
      return `loop turn busy ${fmtDur(e.busy_ns)} (blocked on I/O ${fmtDur(e.poll_ns)})`;
    case 'lost':
      return `lost ${e.count} (${e.stage}${e.for_kind ? ` ${e.for_kind}` : ''})`;
    case 'exec':
      return `exec ${e.exe}`;
    case 'logpoint':
      return `logpoint ${e.id} ${e.location}| ${e.text}${logpointDropped(e)}`;
    case 'probe':
      return `probe ${e.probe} ${e.point}${probeDetail(e)}`;
    case 'inspector':
      return `node inspector| ${e.text}`;
    case 'audit':
      return `audit ${e.phase} ${e.op} by ${e.who} (${e.command})${e.match ? ` match=${e.match}` : ''} ${JSON.stringify(e.args)}${auditDetail(e)}`;
    case 'exit':
      return `exit ${e.exit_code ?? ''}${e.signal ? ` signal ${e.signal}` : ''}`;
    case 'tcp_close':
      return `tcp_close ${e.saddr}:${e.sport} -> ${e.daddr}:${e.dport} sent=${e.bytes_sent} recv=${e.bytes_received}${e.retransmits ? ` retrans=${e.retransmits}` : ''}`;
    default:
      if (e.kind.startsWith('tcp_')) return `${e.kind} ${e.saddr}:${e.sport} -> ${e.daddr}:${e.dport}`;
      return e.kind;
  }
}

/** The text the aggregator's grep matches (`EventData::search_text`), for
 * display and highlighting: a log line's or logpoint's text, a probe hit
 * as printed after its kind (durations formatted the UI's way). */
export function searchText(e) {
  switch (e.kind) {
    case 'log':
    case 'logpoint':
    case 'inspector':
      return e.text;
    case 'probe':
      return `${e.probe} ${e.object.split('/').pop()}:${e.point}${probeDetail(e)}`;
    default:
      return '';
  }
}

/** Per process outcomes of an audited command, or its error. */
function auditDetail(e) {
  const ps = (e.processes || []).map((p) => ` | PID ${p.pid}: ${p.ok ? 'ok' : `error: ${p.error}`}`).join('');
  return ps + (e.error ? ` | error: ${e.error}` : '');
}

/** What a probe event recorded: its arguments, or its count (and latency
 * buckets) over the interval. */
function probeDetail(e) {
  if (e.args) return ' ' + e.args.map((a, i) => `arg${i}=${JSON.stringify(a)}`).join(' ');
  let s = e.count != null ? ` count=${e.count} in ${fmtDur(e.interval_ns)}` : '';
  if (e.latency_ns) s += ' latency ' + e.latency_ns.map(([b, n]) => `<${fmtDur(b)}:${n}`).join(' ');
  return s;
}

/** IPv4-mapped IPv6 compared as IPv4 (as the aggregator's stitching does). */
export function addr(a) {
  return typeof a === 'string' && a.startsWith('::ffff:') ? a.slice(7) : a;
}
