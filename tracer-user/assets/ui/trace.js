// A request's whole trace: every hop (each host's server and client side
// of it), the log lines written while serving it, and their timings, as a
// waterfall. Data: GET /v1/events?trace=<any req_id of the request>.

import { ndjson } from './api.js';
import { describe, el, evMs, fmtDur, fmtTime } from './util.js';

export class TraceView {
  constructor(root, { onFocus, onLoaded }) {
    this.root = root;
    this.onFocus = onFocus;
    this.onLoaded = onLoaded;
    this.title = el('div', { className: 'trace-title' }, 'Click a request on the timeline to see its trace.');
    this.table = el('div', { className: 'trace-rows' });
    root.append(this.title, this.table);
  }

  async open(reqId) {
    this.title.textContent = `Loading trace of ${reqId}…`;
    this.title.dataset.trace = '';
    this.table.replaceChildren();
    let events;
    try {
      events = await ndjson('/v1/events', { trace: reqId });
    } catch (e) {
      this.title.textContent = `Trace ${reqId}: ${e.message}`;
      return;
    }
    this.show(reqId, events);
    this.onLoaded(events);
  }

  show(reqId, events) {
    this.title.dataset.trace = reqId;
    if (!events.length) {
      this.title.textContent = `No events for trace ${reqId}.`;
      return;
    }
    const t0 = Math.min(...events.map(evMs));
    const t1 = Math.max(...events.map((e) => evMs(e) + (e.duration_ns || 0) / 1e6));
    const total = Math.max(t1 - t0, 0.001);
    const hosts = [...new Set(events.filter((e) => e.kind === 'http').map((e) => e.host))];
    const root = events.find((e) => e.kind === 'http' && e.side === 'server') || events[0];
    this.title.replaceChildren(
      el('b', {}, `${root.method ?? ''} ${root.path ?? ''}`),
      ` · ${hosts.length} host${hosts.length === 1 ? '' : 's'} (${hosts.join(' → ')})`,
      ` · ${fmtDur(Math.round(total * 1e6))} · started ${fmtTime(t0)} · trace ${reqId}`,
    );
    const rows = events.map((e) => {
      const start = evMs(e) - t0;
      const dur = (e.duration_ns || 0) / 1e6;
      const bar = el('div', {
        className: `trace-bar ${e.kind === 'http' ? e.side : 'mark'}${e.kind === 'http' && (e.status >= 500 || e.status === 0) ? ' error' : ''}`,
      });
      bar.style.left = `${(start / total) * 100}%`;
      bar.style.width = e.kind === 'http' ? `max(2px, ${(dur / total) * 100}%)` : '2px';
      const what =
        e.kind === 'http'
          ? `${e.side === 'server' ? 'served' : 'called'} ${e.method} ${e.path} → ${e.status}`
          : describe(e);
      return el(
        'div',
        {
          className: `trace-row kind-${e.kind}`,
          dataset: { host: e.host, kind: e.kind, side: e.side || '' },
          title: 'show on the timeline',
          onclick: () => this.onFocus(e),
        },
        el('span', { className: 'trace-host' }, e.host),
        el('span', { className: 'trace-pid' }, String(e.pid)),
        el('span', { className: 'trace-what' }, what),
        el('span', { className: 'trace-time' }, `+${fmtDur(Math.round(start * 1e6))}`),
        el('span', { className: 'trace-dur' }, e.kind === 'http' ? fmtDur(e.duration_ns) : ''),
        el('span', { className: 'trace-track' }, bar),
      );
    });
    this.table.replaceChildren(
      el(
        'div',
        { className: 'trace-row trace-head' },
        ...['host', 'pid', 'what', 'start', 'duration', ''].map((h) => el('span', {}, h)),
      ),
      ...rows,
    );
  }
}
