// Graphs per host and process over the timeline's window, from
// GET /v1/series (bucketed on the server), drawn with uPlot (vendored:
// /ui/vendor/). Dragging across a graph sets the window of the timeline
// and of every graph.

import { json } from './api.js';
import { el, nsParam } from './util.js';

const CHARTS = [
  { title: 'Requests/s (served)', series: [['requests_per_s', '']] },
  { title: 'Latency p50 and p99 (ms; p99 dashed)', series: [['latency_p50_ms', ' p50'], ['latency_p99_ms', ' p99', [6, 4]]], sparse: true },
  { title: 'Error rate (% of requests 5xx or cut)', series: [['error_rate', '', null, 100]], sparse: true },
  { title: 'Event-loop delay (ms, longest turn)', series: [['loop_delay_ms', '']], sparse: true },
  { title: 'GC pause (ms per bucket)', series: [['gc_pause_ms', '']] },
  { title: 'HTTP bytes in/s', series: [['bytes_in_per_s', '']] },
  { title: 'HTTP bytes out/s', series: [['bytes_out_per_s', '']] },
  { title: 'TCP retransmits/s', series: [['retransmits_per_s', '']] },
  { title: 'Log lines/s', series: [['log_lines_per_s', '']] },
  { title: 'Lost events/s', series: [['lost_per_s', '']] },
  { title: 'Probe hits/s', series: [['probe_hits_per_s', '']] },
];

const PALETTE = ['#2f6fdb', '#d43c3c', '#1a9a5a', '#e08a1e', '#8a5cd6', '#138a7e', '#c0398f', '#5b6470', '#9c7a00'];

const hasData = (v) => v.some((x) => x !== null && x !== 0);

export class Graphs {
  constructor(root, { onRange }) {
    this.onRange = onRange;
    this.status = el('div', { className: 'graphs-status', id: 'graphs-status' });
    this.grid = el('div', { className: 'graphs-grid', id: 'graphs-grid' });
    root.append(this.status, this.grid);
    this.plots = [];
    this.colors = new Map();
  }

  color(key) {
    if (!this.colors.has(key)) this.colors.set(key, PALETTE[this.colors.size % PALETTE.length]);
    return this.colors.get(key);
  }

  async load(start, end, hosts) {
    this.status.textContent = 'loading…';
    let s;
    try {
      s = await json('/v1/series', {
        since: nsParam(start),
        until: nsParam(end),
        host: hosts ? [...hosts].join(',') : undefined,
      });
    } catch (e) {
      this.status.textContent = e.message;
      return;
    }
    this.render(s);
  }

  render(s) {
    for (const p of this.plots) p.destroy();
    this.plots = [];
    this.grid.replaceChildren();
    const xs = s.times_ns.map((t) => t / 1e9);
    const stepS = s.step_ns / 1e9;
    this.status.textContent = `${s.procs.length} processes · ${xs.length} buckets of ${stepS < 1 ? `${Math.round(stepS * 1000)} ms` : `${+stepS.toFixed(2)} s`}`;
    const width = Math.max(280, Math.floor((this.grid.clientWidth - 24) / 2) - 16);
    for (const chart of CHARTS) {
      const series = [{}];
      const data = [xs];
      for (const p of s.procs) {
        for (const [field, suffix, dash, scale] of chart.series) {
          const v = p[field];
          if (!hasData(v)) continue;
          const who = p.pid === 0 ? `${p.host} agent` : `${p.host}/${p.pid}`;
          series.push({ label: `${who}${suffix}`, stroke: this.color(who), width: 1.5, dash: dash || undefined, points: chart.sparse ? { show: true, size: 4 } : {} });
          data.push(scale ? v.map((x) => (x === null ? null : x * scale)) : v);
        }
      }
      const card = el('div', { className: 'graph', dataset: { series: String(series.length - 1) } }, el('div', { className: 'graph-title' }, chart.title));
      this.grid.append(card);
      if (series.length === 1) {
        card.append(el('div', { className: 'graph-empty' }, 'none in this window'));
        continue;
      }
      const opts = {
        width,
        height: 170,
        series,
        scales: { x: { time: true } },
        axes: [{}, { size: 56 }],
        legend: { live: true },
        cursor: { sync: { key: 'tracer' }, drag: { x: true, y: false, setScale: false } },
        hooks: {
          setSelect: [
            (u) => {
              if (u.select.width < 5) return;
              const a = u.posToVal(u.select.left, 'x');
              const b = u.posToVal(u.select.left + u.select.width, 'x');
              u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
              this.onRange(a * 1000, b * 1000);
            },
          ],
        },
      };
      // uPlot is the vendored global (/ui/vendor/uPlot.iife.min.js).
      this.plots.push(new window.uPlot(opts, data, card));
    }
  }
}
