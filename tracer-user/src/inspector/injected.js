// The code tracer installs in a node process for its logpoints (see
// docs/logpoints.md). Evaluated through the inspector as
// `(THIS)(require).METHOD(ARGS)`; `require` comes from the inspector's
// command-line API, so this works in CommonJS and ES-module programs alike.
//
// It owns one in-process inspector.Session: breakpoints set through it stay
// active after the inspector port is closed. Each logpoint is a breakpoint
// whose condition renders the template, hands the line to emit() and
// returns false, so the program never pauses. A hit costs V8's
// conditional-breakpoint machinery (~100-200 µs) whether or not it logs, so
// the rate cap also lifts the breakpoint: once a logpoint has written its
// `rate` lines in a second and counted as many again as dropped, it stops
// being watched until that second ends (the time unwatched is reported).
// Lines go to a file of their
// own (tracer-logpoints-PID.jsonl), one JSON object per line, which tracer's log capture
// turns into `logpoint` events; the program's stdout and stderr are not
// touched. When the last logpoint is removed everything is undone: the
// breakpoints, the session, the file and the one global, __tracer.
function (require) {
  'use strict';
  const VERSION = 1;
  const existing = globalThis.__tracer;
  if (existing !== undefined) {
    if (existing && existing.version === VERSION) return existing;
    throw new Error('globalThis.__tracer already exists and is not tracer\'s (version ' +
      (existing && existing.version) + '); refusing to replace it');
  }
  const inspector = require('inspector');
  const fs = require('fs');
  const path = require('path');
  const os = require('os');
  // The output file is truncated when it reaches this size: the capture
  // reads each write as it happens, the file is only a sink.
  const MAX_FILE_BYTES = 1 << 20;
  const MAX_TEXT = 4096;

  const dir = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const file = path.join(dir, 'tracer-logpoints-' + process.pid + '.jsonl');
  // Never through a symlink someone planted in a shared directory, and
  // only a plain file of this process's own user.
  const { O_WRONLY, O_APPEND, O_CREAT, O_NOFOLLOW } = fs.constants;
  const fd = fs.openSync(file, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, 0o600);
  const st = fs.fstatSync(fd);
  if (!st.isFile() || st.nlink !== 1 || st.uid !== process.getuid()) {
    fs.closeSync(fd);
    throw new Error(file + ' exists and is not a plain file of this process\'s user; ' +
      'remove it and retry');
  }

  const session = new inspector.Session();
  session.connect();
  const urls = new Set();
  session.on('Debugger.scriptParsed', (m) => {
    if (m.params.url) urls.add(m.params.url);
  });
  // A same-thread session answers synchronously.
  const post = (method, params) => {
    let error;
    let result;
    session.post(method, params || {}, (e, r) => { error = e; result = r; });
    if (error) throw error;
    return result;
  };
  post('Debugger.enable');
  // Conditions still run; nothing pauses (a `debugger;` statement in the
  // program must not stop it because tracer's session is attached).
  post('Debugger.setSkipAllPauses', { skip: true });

  let fileBytes = 0;
  let writeErrors = 0;
  const lps = new Map();

  const scriptPath = (u) => {
    if (!u.startsWith('file://')) return u;
    try { return decodeURIComponent(u.slice(7)); } catch (e) { return u.slice(7); }
  };

  const write = (line) => {
    try {
      fs.writeSync(fd, line);
      fileBytes += Buffer.byteLength(line);
      if (fileBytes > MAX_FILE_BYTES) {
        fs.ftruncateSync(fd, 0);
        fileBytes = 0;
      }
    } catch (e) {
      writeErrors++;
    }
  };

  const describe = (lp) => ({
    id: lp.id,
    url: lp.url,
    line: lp.line,
    column: lp.column,
    template: lp.template,
    condition: lp.condition,
    hits: lp.hits,
    emitted: lp.emitted,
    dropped: lp.dropped,
    unwatched_ms: lp.unwatchedMs + (lp.liftedAt ? Date.now() - lp.liftedAt : 0),
    max_hits: lp.maxHits,
    rate: lp.rate,
    expires_in_ms: Math.max(0, lp.expiresAt - Date.now()),
  });

  // Several logpoints may share a location: one breakpoint per requested
  // location, whose condition runs each logpoint's block in turn.
  const bps = new Map();
  const conditionOf = (ids) => '(() => { const __t = globalThis.__tracer; ' +
    'if (__t === undefined) return false; ' +
    ids.map((id) => lps.get(id).block).join(' ') + ' return false; })()';
  // Only the logpoints being watched (not lifted by their rate cap) are in
  // the condition; with none, the location has no breakpoint (bp.id null).
  const watched = (bp) => bp.ids.filter((id) => !lps.get(id).liftedAt);
  const setBreakpoint = (bp) => {
    const params = { url: bp.url, lineNumber: bp.line, condition: conditionOf(watched(bp)) };
    if (bp.column !== null) params.columnNumber = bp.column;
    return post('Debugger.setBreakpointByUrl', params);
  };
  const clearBreakpoint = (bp) => {
    if (bp.id === null) return;
    try { post('Debugger.removeBreakpoint', { breakpointId: bp.id }); } catch (e) {}
    bp.id = null;
  };
  // Sets the location's breakpoint again for the logpoints now watched.
  const rearmLocation = (bp) => {
    clearBreakpoint(bp);
    if (watched(bp).length === 0) return;
    try { bp.id = setBreakpoint(bp).breakpointId; } catch (e) {}
  };

  // The rate cap's second half: stop watching until the window ends. Not
  // from inside the condition (the debugger is busy evaluating it).
  const lift = (lp) => {
    lp.liftPending = false;
    const bp = bps.get(lp.key);
    if (!lps.has(lp.id) || lp.liftedAt || !bp) return;
    lp.liftedAt = Date.now();
    rearmLocation(bp);
    lp.liftTimer = setTimeout(() => watchAgain(lp), Math.max(1, lp.winStart + 1000 - lp.liftedAt));
    lp.liftTimer.unref();
  };
  const watchAgain = (lp) => {
    lp.liftTimer = null;
    if (!lps.has(lp.id) || !lp.liftedAt) return;
    const ms = Date.now() - lp.liftedAt;
    lp.unwatchedMs += ms;
    lp.pendingUnwatchedMs += ms;
    lp.liftedAt = 0;
    const bp = bps.get(lp.key);
    if (bp) rearmLocation(bp);
  };

  const addOne = (spec) => {
    if (lps.has(spec.id)) throw new Error('logpoint ' + spec.id + ' exists already');
    const want = spec.file;
    const tail = '/' + want.replace(/^(\.\/)+/, '').replace(/^\/+/, '');
    const matches = [...urls].filter((u) => {
      const p = scriptPath(u);
      return p === want || p.endsWith(tail);
    });
    if (matches.length === 0) {
      const base = tail.slice(tail.lastIndexOf('/') + 1);
      const near = [...urls].filter((u) => scriptPath(u).endsWith('/' + base)).slice(0, 5);
      throw new Error('no loaded script matches "' + want + '" (' + urls.size +
        ' scripts loaded' + (near.length ? '; same file name: ' + near.join(', ') : '') +
        '). Is the module loaded yet?');
    }
    if (matches.length > 1) {
      throw new Error('"' + want + '" matches ' + matches.length + ' loaded scripts: ' +
        matches.slice(0, 10).join(', ') + '. Give more of the path.');
    }
    // Syntax errors surface here, not silently at every hit.
    try { new Function('const __t = null; ' + spec.block); } catch (e) {
      throw new Error('the template or condition does not compile: ' + e.message);
    }
    const column = spec.column ? spec.column - 1 : null;
    const key = matches[0] + '|' + (spec.line - 1) + '|' + column;
    const lp = {
      id: spec.id,
      key,
      block: spec.block,
      template: spec.template,
      condition: spec.condition,
      hits: 0,
      emitted: 0,
      dropped: 0,
      pendingDropped: 0,
      winStart: 0,
      winCount: 0,
      winDropped: 0,
      liftPending: false,
      liftedAt: 0,
      liftTimer: null,
      unwatchedMs: 0,
      pendingUnwatchedMs: 0,
      maxHits: spec.maxHits,
      rate: spec.rate,
      expiresAt: Date.now() + spec.ttlMs,
      timer: null,
    };
    const old = bps.get(key);
    const bp = old ? { ...old, ids: [...old.ids, lp.id] }
      : { url: matches[0], line: spec.line - 1, column, ids: [lp.id], id: null, loc: null };
    lps.set(lp.id, lp);
    let res;
    try {
      if (old) clearBreakpoint(old);
      res = setBreakpoint(bp);
      if (!res.locations || res.locations.length === 0) {
        post('Debugger.removeBreakpoint', { breakpointId: res.breakpointId });
        throw new Error('no code at or after ' + want + ':' + spec.line +
          ' where a logpoint can stop');
      }
    } catch (e) {
      lps.delete(lp.id);
      if (old) {
        try { rearmLocation(old); } catch (e2) { bps.delete(key); }
      }
      throw e;
    }
    const loc = res.locations[0];
    bp.id = res.breakpointId;
    bp.loc = { line: loc.lineNumber + 1, column: loc.columnNumber + 1 };
    bps.set(key, bp);
    lp.url = bp.url;
    lp.line = bp.loc.line;
    lp.column = bp.loc.column;
    lp.loc = scriptPath(lp.url) + ':' + lp.line + ':' + lp.column;
    lp.timer = setTimeout(() => T.rm([lp.id]), spec.ttlMs);
    lp.timer.unref();
    return describe(lp);
  };

  const removeOne = (lp) => {
    clearTimeout(lp.timer);
    clearTimeout(lp.liftTimer);
    const bp = bps.get(lp.key);
    if (bp) {
      // Before it leaves `lps`: watched() looks the ids up there.
      bp.ids = bp.ids.filter((id) => id !== lp.id);
      if (bp.ids.length === 0) {
        clearBreakpoint(bp);
        bps.delete(lp.key);
      }
    }
    lps.delete(lp.id);
    if (bp && bp.ids.length > 0) rearmLocation(bp);
  };

  const teardown = () => {
    try { post('Debugger.disable'); } catch (e) {}
    session.disconnect();
    try { fs.closeSync(fd); } catch (e) {}
    try { fs.unlinkSync(file); } catch (e) {}
    delete globalThis.__tracer;
  };

  const T = {
    version: VERSION,
    file,

    add(spec) {
      try {
        return addOne(spec);
      } catch (e) {
        // A failed first add leaves nothing behind either.
        if (lps.size === 0) teardown();
        throw e;
      }
    },

    list() {
      return [...lps.values()].map(describe);
    },

    // Removes the given ids (all when `ids` is null). The last one out
    // undoes everything tracer installed.
    rm(ids) {
      const removed = [];
      for (const id of ids === null ? [...lps.keys()] : ids) {
        const lp = lps.get(id);
        if (!lp) continue;
        removeOne(lp);
        removed.push(describe(lp));
      }
      if (lps.size === 0) teardown();
      return { removed, remaining: lps.size, write_errors: writeErrors };
    },

    // Called from a condition: whether this hit may log (max-hits, rate).
    admit(id) {
      const lp = lps.get(id);
      if (lp === undefined) return false;
      lp.hits++;
      if (lp.maxHits && lp.emitted >= lp.maxHits) return false;
      const now = Date.now();
      if (now - lp.winStart >= 1000) {
        lp.winStart = now;
        lp.winCount = 0;
        lp.winDropped = 0;
      }
      if (lp.winCount >= lp.rate) {
        lp.dropped++;
        lp.pendingDropped++;
        lp.winDropped++;
        if (lp.winDropped >= lp.rate && !lp.liftPending) {
          lp.liftPending = true;
          setImmediate(() => lift(lp));
        }
        return false;
      }
      lp.winCount++;
      return true;
    },

    emit(id, text) {
      const lp = lps.get(id);
      if (lp === undefined) return;
      lp.emitted++;
      let s = String(text);
      if (s.length > MAX_TEXT) s = s.slice(0, MAX_TEXT) + '…';
      const rec = { lp: id, loc: lp.loc, text: s };
      if (lp.pendingDropped) {
        rec.dropped = lp.pendingDropped;
        lp.pendingDropped = 0;
      }
      if (lp.pendingUnwatchedMs) {
        rec.unwatched_ms = lp.pendingUnwatchedMs;
        lp.pendingUnwatchedMs = 0;
      }
      write(JSON.stringify(rec) + '\n');
      // Not from inside the condition: the debugger is busy evaluating it.
      if (lp.maxHits && lp.emitted >= lp.maxHits) setImmediate(() => T.rm([id]));
    },
  };
  Object.defineProperty(globalThis, '__tracer', {
    value: T, configurable: true, enumerable: false, writable: false,
  });
  return T;
}
