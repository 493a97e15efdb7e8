// The cluster timeline: one lane per host and, under it, one per process,
// drawn on a canvas by corrected time. HTTP exchanges are spans as long as
// their duration (server side on top, client side below), log lines and
// runtime events are marks, and each client request is joined to the
// request it became on the next host. Wheel zooms, drag pans; hover shows
// an event, click selects it (a request opens its trace).
//
// Lane names are DOM elements (.lane-host, .lane-proc); everything else is
// drawn, redrawn at most once per animation frame.

import { addr, describe, el, evMs, fmtClock, fmtSpan, fmtTime, searchText } from './util.js';

const AXIS_H = 22;
const HOST_H = 20;
const PROC_H = 36;
const MIN_SPAN_MS = 1;

const COLOR = {
  server: '#2f6fdb',
  client: '#8a5cd6',
  error: '#d43c3c',
  stdout: '#5b6470',
  stderr: '#d43c3c',
  file: '#138a7e',
  gc: '#e08a1e',
  loop: '#c9a800',
  tcp: '#9aa3ad',
  retransmit: '#d43c3c',
  lost: '#111',
  proc: '#8a5cd6',
  logpoint: '#e0218a',
  audit: '#1f5fd6',
  probe: '#0f9d58',
  link: 'rgba(70, 80, 200, 0.35)',
  linkHi: 'rgba(20, 30, 160, 0.95)',
  grid: '#eceff3',
  axis: '#68707a',
  cursor: '#ff7a00',
};

/** Key joining a client exchange to the server exchange it reached:
 * the server's own tuple (its local end first). */
const serverKey = (e) => `${addr(e.saddr)}:${e.sport}>${addr(e.daddr)}:${e.dport}`;
const clientTarget = (e) => `${addr(e.daddr)}:${e.dport}>${addr(e.saddr)}:${e.sport}`;

/** For each client exchange, the server exchange with the mirrored tuple
 * whose (corrected) time lies inside it. The aggregator's stitching does
 * the same with clock bounds; corrected times make it a containment. */
export function linkPairs(events) {
  const servers = new Map();
  for (const e of events) {
    if (e.kind !== 'http' || e.side !== 'server') continue;
    const k = serverKey(e);
    if (!servers.has(k)) servers.set(k, []);
    servers.get(k).push(e);
  }
  const pairs = [];
  const slack = 1; // ms
  for (const c of events) {
    if (c.kind !== 'http' || c.side !== 'client') continue;
    const cands = servers.get(clientTarget(c));
    if (!cands) continue;
    const cs = evMs(c);
    const ce = cs + c.duration_ns / 1e6;
    // Candidates are in time order (events come sorted): binary search for
    // the first that starts after the client did, then the first that ends
    // inside it (a keep-alive connection has many).
    let lo = 0;
    let hi = cands.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (evMs(cands[mid]) < cs - slack) lo = mid + 1;
      else hi = mid;
    }
    let best = null;
    for (let i = lo; i < cands.length && evMs(cands[i]) <= ce + slack; i++) {
      const s = cands[i];
      if (evMs(s) + s.duration_ns / 1e6 <= ce + slack) {
        best = s;
        break;
      }
    }
    if (best && best.host !== c.host) pairs.push([c, best]);
  }
  return pairs;
}

export class Timeline {
  constructor(root, { onSelect, onView }) {
    this.onSelect = onSelect;
    this.onView = onView;
    this.events = [];
    this.shown = [];
    this.pairs = [];
    this.filter = { hosts: null, kinds: null, text: null };
    this.view = { start: Date.now() - 60_000, end: Date.now() };
    this.cursor = null; // { ms, match }
    this.trace = new Set(); // req_ids of the selected trace
    this.items = [];
    this.lanes = [];

    this.range = el('span', { className: 'tl-range' });
    const btn = (label, title, f) => el('button', { type: 'button', title, onclick: f }, label);
    const toolbar = el(
      'div',
      { className: 'tl-toolbar' },
      btn('−', 'zoom out', () => this.zoom(2)),
      btn('+', 'zoom in', () => this.zoom(0.5)),
      btn('←', 'pan left', () => this.pan(-0.25)),
      btn('→', 'pan right', () => this.pan(0.25)),
      this.range,
      el('span', { className: 'tl-hint' }, 'wheel: zoom · drag: pan · click a request: its trace'),
    );
    this.labels = el('div', { className: 'tl-labels' });
    this.canvas = el('canvas', { className: 'tl-canvas' });
    this.plot = el('div', { className: 'tl-plot' }, this.canvas);
    this.body = el('div', { className: 'tl-body' }, this.labels, this.plot);
    this.tip = el('div', { className: 'tooltip', hidden: true });
    this.note = el('div', { className: 'tl-note' });
    root.append(toolbar, this.note, this.body, this.tip);
    this.ctx = this.canvas.getContext('2d');
    this.bindMouse();
    new ResizeObserver(() => this.redraw()).observe(this.plot);
  }

  /** New events (sorted by time) for the loaded window. */
  setData(events, note = '') {
    this.events = events;
    this.note.textContent = note;
    this.pairs = linkPairs(events);
    this.applyFilter();
  }

  setFilter(filter) {
    this.filter = filter;
    this.applyFilter();
  }

  applyFilter() {
    const { hosts, kinds, text } = this.filter;
    this.shown = this.events.filter((e) => {
      if (hosts && !hosts.has(e.host)) return false;
      if (kinds && !kinds.has(kindGroup(e.kind))) return false;
      if (text) {
        if (['log', 'logpoint', 'probe', 'inspector'].includes(e.kind)) return text.test(searchText(e));
        if (e.kind === 'http') return text.test(`${e.method} ${e.path} ${e.status}`);
        return false;
      }
      return true;
    });
    const shownSet = new Set(this.shown);
    this.shownPairs = this.pairs.filter(([c, s]) => shownSet.has(c) && shownSet.has(s));
    this.layout();
    this.redraw();
  }

  /** Lanes: hosts in name order, each followed by its processes. */
  layout() {
    const hosts = new Map();
    for (const e of this.events) {
      if (this.filter.hosts && !this.filter.hosts.has(e.host)) continue;
      if (!hosts.has(e.host)) hosts.set(e.host, new Map());
      if (e.pid !== 0 && !hosts.get(e.host).has(e.pid)) hosts.get(e.host).set(e.pid, e.comm);
    }
    this.lanes = [];
    this.laneY = new Map();
    let y = AXIS_H;
    const labels = [];
    for (const host of [...hosts.keys()].sort()) {
      this.laneY.set(host, y);
      this.lanes.push({ host, y, h: HOST_H });
      labels.push(el('div', { className: 'lane-host', dataset: { host }, style: `height:${HOST_H}px` }, host));
      y += HOST_H;
      const procs = [...hosts.get(host).entries()].sort((a, b) => a[0] - b[0]);
      for (const [pid, comm] of procs) {
        this.laneY.set(`${host}/${pid}`, y);
        this.lanes.push({ host, pid, y, h: PROC_H });
        labels.push(
          el(
            'div',
            { className: 'lane-proc', dataset: { host, pid: String(pid) }, style: `height:${PROC_H}px` },
            `${pid} ${comm}`,
          ),
        );
        y += PROC_H;
      }
    }
    this.height = Math.max(y + 4, AXIS_H + 60);
    this.labels.replaceChildren(el('div', { className: 'lane-axis', style: `height:${AXIS_H}px` }), ...labels);
    this.labels.style.height = `${this.height}px`;
    this.plot.style.height = `${this.height}px`;
  }

  setView(start, end, notify = true) {
    if (!(end > start)) return;
    if (end - start < MIN_SPAN_MS) {
      const mid = (start + end) / 2;
      start = mid - MIN_SPAN_MS / 2;
      end = mid + MIN_SPAN_MS / 2;
    }
    this.view = { start, end };
    this.tip.hidden = true;
    this.redraw();
    if (notify) this.onView(start, end);
  }

  zoom(factor, atMs) {
    const { start, end } = this.view;
    const at = atMs ?? (start + end) / 2;
    this.setView(at - (at - start) * factor, at + (end - at) * factor);
  }

  pan(fraction) {
    const d = (this.view.end - this.view.start) * fraction;
    this.setView(this.view.start + d, this.view.end + d);
  }

  /** Centres the view on `ms` (keeping its width) and marks `match`
   * (an event: the same host, pid and ts_ns is ringed once loaded). */
  focus(ms, match) {
    const w = this.view.end - this.view.start;
    this.cursor = { ms, match };
    this.setView(ms - w / 2, ms + w / 2);
  }

  /** Outlines the exchanges of a trace (their req_ids). */
  highlight(reqIds) {
    this.trace = new Set(reqIds);
    this.redraw();
  }

  x(ms) {
    return ((ms - this.view.start) / (this.view.end - this.view.start)) * this.width;
  }

  msAt(x) {
    return this.view.start + (x / this.width) * (this.view.end - this.view.start);
  }

  redraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.draw();
    });
  }

  laneOf(e) {
    return e.pid === 0 ? this.laneY.get(e.host) : this.laneY.get(`${e.host}/${e.pid}`);
  }

  draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.plot.clientWidth;
    const h = this.height || AXIS_H;
    if (!w) return;
    this.width = w;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
      this.canvas.style.width = `${w}px`;
      this.canvas.style.height = `${h}px`;
    }
    const c = this.ctx;
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, w, h);
    this.range.textContent = `${fmtTime(this.view.start)} + ${fmtSpan(this.view.end - this.view.start)}`;
    this.drawAxis(c, w, h);
    for (const lane of this.lanes) {
      c.fillStyle = lane.pid === undefined ? '#f4f6f9' : '#fff';
      c.fillRect(0, lane.y, w, lane.h);
      c.strokeStyle = '#dde2e8';
      c.beginPath();
      c.moveTo(0, lane.y + lane.h - 0.5);
      c.lineTo(w, lane.y + lane.h - 0.5);
      c.stroke();
    }
    this.items = [];
    const { start, end } = this.view;
    for (const e of this.shown) {
      const t = evMs(e);
      const dur = (e.duration_ns ?? (e.kind === 'loop' ? e.busy_ns : 0)) / 1e6;
      if (t > end || t + dur < start) continue;
      const y = this.laneOf(e);
      if (y === undefined) continue;
      this.drawEvent(c, e, t, dur, y);
    }
    this.drawLinks(c);
    if (this.cursor && this.cursor.ms >= start && this.cursor.ms <= end) {
      const x = this.x(this.cursor.ms);
      c.strokeStyle = COLOR.cursor;
      c.lineWidth = 1.5;
      c.beginPath();
      c.moveTo(x, AXIS_H);
      c.lineTo(x, h);
      c.stroke();
      c.lineWidth = 1;
    }
  }

  drawAxis(c, w, h) {
    const span = this.view.end - this.view.start;
    const target = span / Math.max(2, w / 110);
    const pow = 10 ** Math.floor(Math.log10(target));
    const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= target);
    c.font = '11px system-ui, sans-serif';
    c.textBaseline = 'middle';
    for (let t = Math.ceil(this.view.start / step) * step; t <= this.view.end; t += step) {
      const x = Math.round(this.x(t)) + 0.5;
      c.strokeStyle = COLOR.grid;
      c.beginPath();
      c.moveTo(x, AXIS_H);
      c.lineTo(x, h);
      c.stroke();
      c.fillStyle = COLOR.axis;
      const label = step >= 1000 ? fmtClock(t).slice(0, 8) : fmtClock(t);
      c.fillText(label, x + 3, AXIS_H / 2);
    }
  }

  drawEvent(c, e, t, dur, y) {
    const x0 = this.x(t);
    let x1 = this.x(t + dur);
    let y0;
    let y1;
    if (e.kind === 'http') {
      const server = e.side === 'server';
      y0 = y + (server ? 3 : 16);
      y1 = y0 + 11;
      x1 = Math.max(x1, x0 + 2);
      c.fillStyle = e.status >= 500 || e.status === 0 ? COLOR.error : server ? COLOR.server : COLOR.client;
      c.fillRect(x0, y0, x1 - x0, y1 - y0);
      if (this.trace.has(e.req_id)) {
        c.strokeStyle = '#000';
        c.lineWidth = 2;
        c.strokeRect(x0 - 1, y0 - 1, x1 - x0 + 2, y1 - y0 + 2);
        c.lineWidth = 1;
      }
    } else if (e.pid === 0) {
      // Host-level (lost; audit: a control command): a square in the host lane.
      y0 = y + 5;
      y1 = y + 15;
      c.fillStyle = e.kind === 'audit' ? COLOR.audit : COLOR.lost;
      c.fillRect(x0 - 4, y0, 8, 10);
      x1 = x0 + 4;
    } else {
      y0 = y + 28;
      y1 = y + 35;
      const color =
        e.kind === 'log'
          ? COLOR[e.stream]
          : e.kind === 'logpoint'
            ? COLOR.logpoint
            : e.kind === 'probe'
              ? COLOR.probe
              : e.kind === 'gc'
              ? COLOR.gc
              : e.kind === 'loop'
                ? COLOR.loop
                : e.kind === 'tcp_retransmit'
                  ? COLOR.retransmit
                  : e.kind === 'lost'
                    ? COLOR.lost
                    : e.kind === 'exec' || e.kind === 'exit'
                      ? COLOR.proc
                      : COLOR.tcp;
      c.fillStyle = color;
      if (dur > 0) {
        x1 = Math.max(x1, x0 + 3);
        c.fillRect(x0, y0, x1 - x0, y1 - y0);
      } else {
        x1 = x0 + 1;
        c.fillRect(x0 - 1, y0, 2, y1 - y0);
      }
    }
    const m = this.cursor?.match;
    if (m && m.host === e.host && m.pid === e.pid && m.ts_ns === e.ts_ns) {
      c.strokeStyle = COLOR.cursor;
      c.lineWidth = 2;
      c.strokeRect(x0 - 4, y0 - 3, Math.max(x1 - x0, 2) + 8, y1 - y0 + 6);
      c.lineWidth = 1;
    }
    this.items.push({ x0: Math.min(x0, x1), x1: Math.max(x0, x1), y0, y1, e });
  }

  drawLinks(c) {
    const { start, end } = this.view;
    for (const [cl, sv] of this.shownPairs || []) {
      const ct = evMs(cl);
      if (ct + cl.duration_ns / 1e6 < start || ct > end) continue;
      const yc = this.laneOf(cl);
      const ys = this.laneOf(sv);
      if (yc === undefined || ys === undefined) continue;
      const hi = this.trace.has(cl.req_id);
      const xa = this.x(ct);
      const ya = yc + 21;
      const xb = this.x(evMs(sv));
      const yb = ys + 8;
      c.strokeStyle = hi ? COLOR.linkHi : COLOR.link;
      c.lineWidth = hi ? 2 : 1;
      c.beginPath();
      c.moveTo(xa, ya);
      const my = (ya + yb) / 2;
      c.bezierCurveTo(xa, my, xb, my, xb, yb);
      c.stroke();
      c.lineWidth = 1;
    }
  }

  /** The drawn event under (x, y) in canvas pixels: marks before spans. */
  hit(x, y) {
    let best = null;
    for (const it of this.items) {
      if (y < it.y0 - 1 || y > it.y1 + 1 || x < it.x0 - 2 || x > it.x1 + 2) continue;
      if (!best || it.x1 - it.x0 < best.x1 - best.x0) best = it;
    }
    return best?.e ?? null;
  }

  /** Where the `nth` (modulo their number) drawn event matching `pred`
   * is, in page coordinates (the middle of its mark), with the event: for
   * the browser console and the browser tests. */
  positionOf(pred, nth = 0) {
    const all = this.items.filter((i) => pred(i.e) && i.x1 - i.x0 >= 2 && i.x0 >= 0 && i.x1 <= this.width);
    if (!all.length) return null;
    const it = all[nth % all.length];
    const r = this.canvas.getBoundingClientRect();
    return { x: r.left + (it.x0 + it.x1) / 2, y: r.top + (it.y0 + it.y1) / 2, event: it.e };
  }

  bindMouse() {
    let drag = null;
    const pos = (ev) => {
      const r = this.canvas.getBoundingClientRect();
      return { x: ev.clientX - r.left, y: ev.clientY - r.top };
    };
    this.canvas.addEventListener(
      'wheel',
      (ev) => {
        ev.preventDefault();
        const { x } = pos(ev);
        this.zoom(ev.deltaY > 0 ? 1.25 : 0.8, this.msAt(x));
      },
      { passive: false },
    );
    this.canvas.addEventListener('mousedown', (ev) => {
      drag = { x: ev.clientX, view: { ...this.view }, moved: false };
    });
    window.addEventListener('mousemove', (ev) => {
      if (drag) {
        const dx = ev.clientX - drag.x;
        if (Math.abs(dx) > 3) drag.moved = true;
        if (drag.moved) {
          const d = (dx / this.width) * (drag.view.end - drag.view.start);
          this.view = { start: drag.view.start - d, end: drag.view.end - d };
          this.redraw();
        }
        return;
      }
      if (ev.target !== this.canvas) {
        this.tip.hidden = true;
        return;
      }
      const { x, y } = pos(ev);
      const e = this.hit(x, y);
      this.canvas.style.cursor = e ? 'pointer' : 'grab';
      this.showTip(e, ev.clientX, ev.clientY);
    });
    window.addEventListener('mouseup', (ev) => {
      if (!drag) return;
      const d = drag;
      drag = null;
      if (d.moved) {
        this.setView(this.view.start, this.view.end);
        return;
      }
      if (ev.target !== this.canvas) return;
      const { x, y } = pos(ev);
      const e = this.hit(x, y);
      if (e) this.onSelect(e);
    });
    this.canvas.addEventListener('mouseleave', () => {
      this.tip.hidden = true;
    });
  }

  showTip(e, cx, cy) {
    if (!e) {
      this.tip.hidden = true;
      return;
    }
    this.tip.replaceChildren(
      el('div', { className: 'tip-head' }, `${fmtTime(evMs(e))}  ${e.host}  ${e.pid}/${e.tid} ${e.comm}`),
      el('div', { className: 'tip-body' }, describe(e)),
    );
    this.tip.hidden = false;
    const r = this.tip.getBoundingClientRect();
    const left = Math.min(cx + 12, window.innerWidth - r.width - 8);
    const top = cy + 16 + r.height > window.innerHeight ? cy - r.height - 8 : cy + 16;
    this.tip.style.left = `${Math.max(4, left)}px`;
    this.tip.style.top = `${Math.max(4, top)}px`;
  }
}

/** The kind filter groups the four TCP kinds into one. */
export function kindGroup(kind) {
  return kind.startsWith('tcp_') && kind !== 'tcp_retransmit' ? 'tcp' : kind;
}
