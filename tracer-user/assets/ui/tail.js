// Live tail: GET /v1/tail?follow=1 streamed into a list. Events arriving
// between two frames are added in one DOM update per animation frame, the
// list keeps the newest MAX_ROWS, and while paused arrivals are queued (at
// most MAX_QUEUED; older ones are counted as skipped), so a busy cluster
// cannot freeze the page. Host, kind and grep (a regex over the text) are
// the server's filters.

import { tail } from './api.js';
import { describe, el, evMs, fmtClock } from './util.js';

const MAX_ROWS = 500;
const MAX_QUEUED = 5000;
const KINDS = ['log', 'http', 'tcp_connect', 'tcp_accept', 'tcp_close', 'tcp_retransmit', 'loop', 'gc', 'exec', 'exit', 'lost', 'logpoint', 'inspector', 'probe', 'audit'];

export class LiveTail {
  constructor(root) {
    this.queue = [];
    this.skipped = 0;
    this.received = 0;
    this.paused = false;
    this.stream = null;
    this.pauseBtn = el('button', { type: 'button', id: 'tail-pause', onclick: () => this.togglePause() }, 'Pause');
    this.host = el('select', { id: 'tail-host', onchange: () => this.restart() }, el('option', { value: '' }, 'all hosts'));
    this.kind = el(
      'select',
      { id: 'tail-kind', onchange: () => this.restart() },
      el('option', { value: '' }, 'all kinds'),
      ...KINDS.map((k) => el('option', { value: k }, k)),
    );
    // A live grep: applied when Enter is pressed or the box is left.
    this.grep = el('input', {
      type: 'search',
      id: 'tail-grep',
      placeholder: 'grep: a regex, e.g. (?i)error|panic',
      onchange: () => this.restart(),
    });
    this.status = el('span', { className: 'tail-status', id: 'tail-status' });
    this.list = el('div', { className: 'tail-list', id: 'tail-list' });
    root.append(el('div', { className: 'tail-bar' }, this.pauseBtn, this.host, this.kind, this.grep, this.status), this.list);
  }

  setHosts(hosts) {
    const cur = this.host.value;
    const have = new Set([...this.host.options].map((o) => o.value));
    for (const h of hosts) if (!have.has(h)) this.host.append(el('option', { value: h }, h));
    this.host.value = cur;
  }

  start() {
    if (this.stream) return;
    this.status.textContent = 'connecting…';
    const params = { n: 50, host: this.host.value, kind: this.kind.value, re: this.grep.value };
    this.stream = tail(
      params,
      (events) => this.push(events),
      (state) => {
        if (state === 'open') this.setStatus('following');
        else if (state.status === 400) {
          // A bad regex (or filter): trying again would fail the same way.
          this.stream = null;
          this.setStatus(`error: ${state.message}`);
        } else {
          this.stream = null;
          this.setStatus(state === 'closed' ? 'stream ended; reconnecting' : `error: ${state.message}; reconnecting`);
          clearTimeout(this.retry);
          this.retry = setTimeout(() => this.start(), 2000);
        }
      },
    );
  }

  stop() {
    clearTimeout(this.retry);
    this.stream?.close();
    this.stream = null;
  }

  restart() {
    this.stop();
    this.queue = [];
    this.list.replaceChildren();
    this.start();
  }

  setStatus(s) {
    this.state = s;
    this.status.textContent = `${s} · ${this.received} received${this.skipped ? ` · ${this.skipped} skipped while paused` : ''}`;
  }

  push(events) {
    this.received += events.length;
    this.queue.push(...events);
    if (this.queue.length > MAX_QUEUED) {
      this.skipped += this.queue.length - MAX_QUEUED;
      this.queue.splice(0, this.queue.length - MAX_QUEUED);
    }
    if (!this.paused && !this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = null;
    if (this.paused) return;
    const take = this.queue.splice(0, this.queue.length).slice(-MAX_ROWS);
    const frag = document.createDocumentFragment();
    for (const e of take) {
      frag.append(
        el(
          'div',
          { className: `tail-row kind-${e.kind}`, dataset: { host: e.host, kind: e.kind } },
          el('span', { className: 't-time' }, fmtClock(evMs(e))),
          el('span', { className: 't-host' }, e.host),
          el('span', { className: 't-pid' }, String(e.pid)),
          el('span', { className: 't-kind' }, e.kind),
          el('span', { className: 't-text' }, describe(e)),
        ),
      );
    }
    const stick = this.list.scrollTop + this.list.clientHeight >= this.list.scrollHeight - 30;
    this.list.append(frag);
    let extra = this.list.childElementCount - MAX_ROWS;
    while (extra-- > 0) this.list.firstElementChild.remove();
    if (stick) this.list.scrollTop = this.list.scrollHeight;
    this.setStatus(this.state || 'following');
  }

  togglePause() {
    this.paused = !this.paused;
    this.pauseBtn.textContent = this.paused ? 'Resume' : 'Pause';
    this.list.classList.toggle('paused', this.paused);
    if (!this.paused) this.flush();
  }
}
