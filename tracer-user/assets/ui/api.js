// The aggregator's API from the browser. Every call carries
// `Authorization: Bearer <token>`; the token lives in sessionStorage (this
// tab only, gone when it closes). The live tail is Server-Sent Events read
// through a streamed fetch, because EventSource cannot send headers.

const KEY = 'tracer-token';

export class Unauthorized extends Error {}

export function getToken() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

/** Takes `#token=...` from the address bar (what `tracer demo` prints),
 * keeps it, and removes it from the URL and the history entry. */
export function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return false;
  setToken(decodeURIComponent(m[1]));
  history.replaceState(null, '', location.pathname + location.search);
  return true;
}

function url(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

async function call(path, params, signal) {
  const r = await fetch(url(path, params), {
    headers: { Authorization: `Bearer ${getToken()}` },
    signal,
    cache: 'no-store',
  });
  if (r.status === 401) {
    onUnauthorized();
    throw new Unauthorized('the aggregator rejected the token');
  }
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try {
      msg = (await r.json()).error || msg;
    } catch (_) {
      /* not JSON */
    }
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return r;
}

export async function json(path, params, signal) {
  return (await call(path, params, signal)).json();
}

/** JSON Lines answer → array of objects. */
export async function ndjson(path, params, signal) {
  const text = await (await call(path, params, signal)).text();
  const out = [];
  for (const line of text.split('\n')) {
    if (line) out.push(JSON.parse(line));
  }
  return out;
}

/** Checks the token: true when the aggregator accepts it. */
export async function checkToken() {
  try {
    await call('/v1/offsets');
    return true;
  } catch (e) {
    if (e instanceof Unauthorized) return false;
    throw e;
  }
}

/** Follows GET /v1/tail (SSE) with `params`; `onEvents(array)` gets the
 * events of each chunk read. Returns a handle with `close()`. `onState`
 * gets 'open', 'closed' or an Error. */
export function tail(params, onEvents, onState) {
  const ctl = new AbortController();
  (async () => {
    try {
      const r = await call('/v1/tail', { ...params, follow: 1 }, ctl.signal);
      onState('open');
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        const batch = [];
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('data:')) data += line.slice(line[5] === ' ' ? 6 : 5);
            else if (line.startsWith('event:')) event = line.slice(6).trim();
          }
          if (event === 'error') throw new Error(data);
          if (data) batch.push(JSON.parse(data));
        }
        if (batch.length) onEvents(batch);
      }
      onState('closed');
    } catch (e) {
      if (!ctl.signal.aborted) onState(e);
    }
  })();
  return { close: () => ctl.abort() };
}
