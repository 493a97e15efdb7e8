// The page: login, the window and filters shared by every view, and the
// wiring between the timeline, the trace panel, search, live tail and
// graphs. docs/ui.md describes it.

import * as api from './api.js';
import { ControlPanel } from './control.js';
import { Graphs } from './graphs.js';
import { Search } from './search.js';
import { LiveTail } from './tail.js';
import { Timeline } from './timeline.js';
import { TraceView } from './trace.js';
import { debounce, describe, el, evMs, fmtTime, nsParam } from './util.js';

const WINDOWS = [
  ['1 min', 60e3],
  ['5 min', 300e3],
  ['15 min', 900e3],
  ['1 h', 3600e3],
  ['6 h', 6 * 3600e3],
  ['24 h', 24 * 3600e3],
];
// Timeline kinds; `tcp` stands for connect, accept and close.
const KINDS = ['http', 'log', 'logpoint', 'audit', 'probe', 'gc', 'loop', 'tcp_retransmit', 'tcp', 'exec', 'exit', 'lost'];
const DEFAULT_OFF = new Set(['tcp']);
const EVENT_LIMIT = 20000;

const $ = (id) => document.getElementById(id);

function showLogin(message) {
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('token').focus();
}

async function boot() {
  api.tokenFromFragment();
  api.setUnauthorizedHandler(() => showLogin('The aggregator rejected the token.'));
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    api.setToken($('token').value.trim());
    $('token').value = '';
    await enter();
  });
  // A `#token=` link opened in a tab already showing the page.
  window.addEventListener('hashchange', () => {
    if (api.tokenFromFragment()) enter();
  });
  await enter();
}

let started = false;

async function enter() {
  if (!api.getToken()) return showLogin('');
  let ok;
  try {
    ok = await api.checkToken();
  } catch (e) {
    return showLogin(`Cannot reach the aggregator: ${e.message}`);
  }
  if (!ok) return showLogin('The aggregator rejected the token.');
  $('login').hidden = true;
  $('app').hidden = false;
  if (!started) {
    started = true;
    start();
  }
}

function start() {
  const hostsSeen = new Set();
  const filter = { hosts: new Set(), kinds: new Set(KINDS.filter((k) => !DEFAULT_OFF.has(k))), text: null };
  let hostsAll = true;
  let tab = 'trace';

  const timeline = new Timeline($('timeline'), {
    onSelect: (e) => select(e),
    onView: debounce(() => reload(), 250),
  });
  const trace = new TraceView($('tab-trace'), {
    onFocus: (e) => timeline.focus(evMs(e), e),
    onLoaded: (events) => {
      timeline.highlight(events.filter((e) => e.kind === 'http').map((e) => e.req_id));
      const t0 = Math.min(...events.map(evMs));
      const t1 = Math.max(...events.map((e) => evMs(e) + (e.duration_ns || 0) / 1e6));
      // Zoom onto the request: it takes the middle third of the width.
      if (events.length) {
        const w = Math.max((t1 - t0) * 3, 1);
        timeline.setView((t0 + t1) / 2 - w / 2, (t0 + t1) / 2 + w / 2);
      }
    },
  });
  const search = new Search($('tab-search'), {
    onJump: (e) => {
      timeline.focus(evMs(e), e);
      $('timeline').scrollIntoView({ block: 'nearest' });
    },
    getWindow: () => timeline.view,
  });
  const tail = new LiveTail($('tab-tail'));
  const graphs = new Graphs($('tab-graphs'), { onRange: (a, b) => timeline.setView(a, b) });
  const control = new ControlPanel($('tab-control'));
  // A handle for the browser console and the browser tests.
  window.tracerUI = { timeline, trace, search, tail, graphs, control };

  async function select(e) {
    showTab('trace');
    if (e.kind === 'http' || e.req_id) {
      await trace.open(e.req_id);
    } else {
      trace.title.textContent = `${fmtTime(evMs(e))} ${e.host} ${e.pid}/${e.tid} ${e.comm}`;
      trace.table.replaceChildren(el('div', { className: 'event-detail' }, describe(e)));
    }
  }

  // Window.
  const windowSel = $('window');
  for (const [label, ms] of WINDOWS) windowSel.append(el('option', { value: String(ms) }, `last ${label}`));
  windowSel.value = String(300e3);
  const toNow = () => {
    const w = Number(windowSel.value);
    const now = Date.now();
    timeline.setView(now - w, now);
  };
  windowSel.addEventListener('change', toNow);
  $('refresh').addEventListener('click', toNow);
  let followTimer = null;
  $('follow').addEventListener('change', (ev) => {
    clearInterval(followTimer);
    if (ev.target.checked) {
      toNow();
      followTimer = setInterval(toNow, 5000);
    }
  });

  // Filters.
  const kindBox = $('f-kinds');
  for (const k of KINDS) {
    const box = el('input', { type: 'checkbox', checked: filter.kinds.has(k), value: k });
    box.addEventListener('change', () => {
      if (box.checked) filter.kinds.add(k);
      else filter.kinds.delete(k);
      reload();
    });
    kindBox.append(el('label', { className: `kind-chip k-${k}` }, box, k));
  }
  const hostBox = $('f-hosts');
  const addHosts = (hosts) => {
    for (const h of [...hosts].sort()) {
      if (hostsSeen.has(h)) continue;
      hostsSeen.add(h);
      filter.hosts.add(h);
      const box = el('input', { type: 'checkbox', checked: true, value: h });
      box.addEventListener('change', () => {
        if (box.checked) filter.hosts.add(h);
        else filter.hosts.delete(h);
        hostsAll = filter.hosts.size === hostsSeen.size;
        applyFilter();
        if (tab === 'graphs') loadGraphs();
      });
      hostBox.append(el('label', { className: 'host-chip' }, box, h));
    }
    tail.setHosts(hostsSeen);
  };
  const textBox = $('f-text');
  textBox.addEventListener(
    'input',
    debounce(() => {
      try {
        filter.text = textBox.value ? new RegExp(textBox.value, 'i') : null;
        textBox.classList.remove('invalid');
      } catch (_) {
        textBox.classList.add('invalid');
        return;
      }
      applyFilter();
    }, 200),
  );
  function applyFilter() {
    timeline.setFilter({
      hosts: hostsAll ? null : filter.hosts,
      kinds: filter.kinds,
      text: filter.text,
    });
  }

  // Data.
  let loading = 0;
  async function reload() {
    const n = ++loading;
    const { start: s, end: e } = timeline.view;
    const kinds = [...filter.kinds].flatMap((k) => (k === 'tcp' ? ['tcp_connect', 'tcp_accept', 'tcp_close'] : [k]));
    $('status').textContent = 'loading…';
    try {
      const events = kinds.length
        ? await api.ndjson('/v1/events', { since: nsParam(s), until: nsParam(e), kind: kinds.join(','), limit: EVENT_LIMIT })
        : [];
      if (n !== loading) return;
      addHosts(new Set(events.map((x) => x.host)));
      const full = events.length >= EVENT_LIMIT;
      timeline.setData(
        events,
        full ? `Showing the first ${EVENT_LIMIT} events of this window: zoom in to see the rest.` : '',
      );
      applyFilter();
      $('status').textContent = `${events.length} events · ${hostsSeen.size} hosts`;
    } catch (err) {
      if (n === loading) $('status').textContent = err.message;
    }
    if (tab === 'graphs') loadGraphs();
  }
  function loadGraphs() {
    graphs.load(timeline.view.start, timeline.view.end, hostsAll ? null : filter.hosts);
  }

  // Tabs.
  function showTab(name) {
    tab = name;
    for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b.dataset.tab === name);
    for (const p of document.querySelectorAll('.tab')) p.hidden = p.id !== `tab-${name}`;
    if (name === 'tail') tail.start();
    if (name === 'graphs') loadGraphs();
  }
  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => showTab(b.dataset.tab));
  $('logout').addEventListener('click', () => {
    api.setToken('');
    tail.stop();
    location.reload();
  });

  showTab('trace');
  toNow();
}

boot();
