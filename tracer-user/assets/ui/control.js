// The Logpoints panel: add, list and remove logpoints on the selected
// hosts and processes through the control API (docs/logpoints.md, "Across
// the cluster"). It needs an admin token, a different secret from the
// token the page logged in with; the panel keeps it in this module's
// memory only (never in storage: a reload forgets it) and sends it only to
// /v1/control/*.

import { el } from './util.js';

let adminToken = '';

async function control(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${adminToken}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    cache: 'no-store',
  });
  let v = null;
  try {
    v = await r.json();
  } catch (_) {
    /* not JSON */
  }
  if (!r.ok) throw new Error((v && v.error) || `${r.status} ${r.statusText}`);
  return v;
}

/** "30m", "90s", "2h", "1h30m" → ms (null when it does not parse). */
export function parseDuration(s) {
  const re = /(\d+)\s*(ms|s|m|h)/g;
  let total = 0;
  let rest = s.trim();
  let m;
  while ((m = re.exec(s))) {
    total += Number(m[1]) * { ms: 1, s: 1e3, m: 60e3, h: 3600e3 }[m[2]];
    rest = rest.replace(m[0], '').trim();
  }
  return total > 0 && rest === '' ? total : null;
}

export class ControlPanel {
  constructor(root) {
    this.token = el('input', { type: 'password', id: 'ctl-token', autocomplete: 'off', placeholder: 'admin token' });
    this.tokenStatus = el('span', { id: 'ctl-token-status', className: 'ctl-status' });
    const tokenForm = el(
      'form',
      {
        className: 'ctl-row',
        onsubmit: (ev) => {
          ev.preventDefault();
          adminToken = this.token.value.trim();
          this.token.value = '';
          this.loadHosts();
        },
      },
      el('label', {}, 'Admin token (--admin-token-file; kept in memory only): '),
      this.token,
      el('button', { type: 'submit', id: 'ctl-use' }, 'Use'),
      el('button', { type: 'button', onclick: () => this.forget() }, 'Forget'),
      this.tokenStatus,
    );
    this.hosts = el('div', { id: 'ctl-hosts', className: 'ctl-row chips' });
    this.match = el('input', { type: 'text', id: 'ctl-match', placeholder: 'processes: regex over the command line (empty: all)', spellcheck: false });
    this.location = el('input', { type: 'text', id: 'ctl-location', placeholder: 'FILE:LINE[:COL], e.g. routes/orders.js:57', spellcheck: false });
    this.template = el('input', { type: 'text', id: 'ctl-template', placeholder: 'template, e.g. order ${order.id} total=${total}', spellcheck: false });
    this.condition = el('input', { type: 'text', id: 'ctl-condition', placeholder: 'condition (optional)', spellcheck: false });
    this.ttl = el('input', { type: 'text', id: 'ctl-ttl', value: '30m', size: 5, title: 'removed by itself after (e.g. 10m, 2h)' });
    const addForm = el(
      'form',
      {
        className: 'ctl-row',
        onsubmit: (ev) => {
          ev.preventDefault();
          this.add();
        },
      },
      this.location,
      this.template,
      this.condition,
      el('label', {}, 'ttl ', this.ttl),
      el('button', { type: 'submit', id: 'ctl-add' }, 'Add logpoint'),
    );
    this.status = el('div', { id: 'ctl-status', className: 'ctl-status' });
    this.results = el('div', { id: 'ctl-results', className: 'ctl-results' });
    this.procs = el('div', { id: 'ctl-procs', className: 'ctl-results' });
    this.list = el('div', { id: 'ctl-list', className: 'ctl-list' });
    root.append(
      tokenForm,
      el('div', { className: 'ctl-row' }, el('span', {}, 'Hosts: '), this.hosts),
      el(
        'div',
        { className: 'ctl-row' },
        this.match,
        el('button', { type: 'button', id: 'ctl-show-procs', onclick: () => this.showProcesses() }, 'Show processes'),
      ),
      this.procs,
      addForm,
      el(
        'div',
        { className: 'ctl-row' },
        el('button', { type: 'button', id: 'ctl-refresh', onclick: () => this.refresh() }, 'List logpoints'),
        el('button', { type: 'button', id: 'ctl-rm-all', onclick: () => this.rm(null) }, 'Remove all on the selected'),
      ),
      this.status,
      this.results,
      this.list,
    );
    this.hosts.append(el('span', { className: 'ctl-hint' }, 'give the admin token to see them'));
  }

  forget() {
    adminToken = '';
    this.hosts.replaceChildren(el('span', { className: 'ctl-hint' }, 'give the admin token to see them'));
    this.list.replaceChildren();
    this.results.replaceChildren();
    this.procs.replaceChildren();
    this.tokenStatus.textContent = 'forgotten';
  }

  async loadHosts() {
    this.tokenStatus.textContent = 'checking…';
    let v;
    try {
      v = await control('GET', '/v1/control/hosts');
    } catch (e) {
      this.tokenStatus.textContent = e.message;
      return;
    }
    this.tokenStatus.textContent = 'accepted';
    this.hosts.replaceChildren();
    for (const h of v.hosts) {
      const box = el('input', { type: 'checkbox', checked: h.control, disabled: !h.control, value: h.host });
      this.hosts.append(el('label', { className: 'host-chip', title: h.refusal || 'takes commands' }, box, h.host, h.control ? '' : ' (no control)'));
    }
    if (!v.hosts.length) this.hosts.append(el('span', { className: 'ctl-hint' }, 'no host has reported yet'));
    await this.showProcesses();
  }

  /** The processes the hosts and `match` select (read from /proc by the
   * agents; nothing is sent to the processes). */
  async showProcesses() {
    let answer;
    try {
      answer = await this.send('processes', {});
    } catch (e) {
      this.procs.replaceChildren(el('span', { className: 'ctl-hint' }, e.message));
      return;
    }
    const rows = [];
    for (const h of answer.hosts) {
      if (h.error) rows.push(el('div', { className: 'ctl-result error' }, `${h.host}: ${h.error}`));
      for (const p of h.processes || []) {
        rows.push(el('div', { className: 'ctl-proc', dataset: { host: h.host, pid: String(p.pid) } }, `${h.host} PID ${p.pid}: ${p.result ? p.result.cmdline : ''}`));
      }
    }
    this.procs.replaceChildren(el('div', { className: 'ctl-hint' }, 'Selected processes:'), ...rows);
  }

  selectedHosts() {
    return [...this.hosts.querySelectorAll('input:checked')].map((b) => b.value);
  }

  async send(op, args) {
    if (!adminToken) throw new Error('give the admin token first');
    const hosts = this.selectedHosts();
    if (!hosts.length) throw new Error('select at least one host that takes commands');
    return control('POST', '/v1/control/commands', {
      op,
      hosts,
      match: this.match.value.trim() || undefined,
      args,
    });
  }

  /** One line per process (or host error) of a command's answer. */
  showAnswer(answer) {
    const rows = [];
    let failed = 0;
    for (const h of answer.hosts) {
      if (h.error) {
        failed++;
        rows.push(el('div', { className: 'ctl-result error' }, `${h.host}: ${h.error}`));
        continue;
      }
      for (const p of h.processes) {
        if (!p.ok) failed++;
        rows.push(
          el('div', { className: `ctl-result${p.ok ? '' : ' error'}` }, `${h.host} PID ${p.pid}: ${p.ok ? (p.text || 'ok').trim() : p.error}`),
        );
      }
    }
    this.results.replaceChildren(...rows);
    this.status.textContent = `${answer.id} by ${answer.who}: ${rows.length - failed} ok, ${failed} failed`;
  }

  async add() {
    const ttl = parseDuration(this.ttl.value);
    if (!ttl) {
      this.status.textContent = 'ttl: give a duration such as 10m or 2h';
      return;
    }
    if (!this.location.value.trim() || !this.template.value) {
      this.status.textContent = 'give a location and a template';
      return;
    }
    const id = `lp-${[...crypto.getRandomValues(new Uint8Array(4))].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
    this.status.textContent = 'adding…';
    try {
      this.showAnswer(
        await this.send('logpoint.add', {
          id,
          location: this.location.value.trim(),
          template: this.template.value,
          condition: this.condition.value.trim() || undefined,
          ttl_ms: ttl,
        }),
      );
      await this.refresh(false);
    } catch (e) {
      this.status.textContent = e.message;
    }
  }

  async rm(ids) {
    this.status.textContent = 'removing…';
    try {
      this.showAnswer(await this.send('logpoint.rm', ids ? { ids } : { all: true }));
      await this.refresh(false);
    } catch (e) {
      this.status.textContent = e.message;
    }
  }

  /** Lists the logpoints of the selected hosts' processes. */
  async refresh(report = true) {
    let answer;
    try {
      answer = await this.send('logpoint.list', {});
    } catch (e) {
      if (report) this.status.textContent = e.message;
      return;
    }
    const rows = [];
    for (const h of answer.hosts) {
      for (const p of h.processes || []) {
        for (const lp of (p.ok && Array.isArray(p.result) && p.result) || []) {
          rows.push(
            el(
              'div',
              { className: 'ctl-lp', dataset: { id: lp.id, host: h.host, pid: String(p.pid) } },
              el('code', {}, lp.id),
              ` ${h.host} PID ${p.pid} ${lp.url}:${lp.line}:${lp.column} hits=${lp.hits} logged=${lp.emitted} dropped=${lp.dropped}${lp.unwatched_ms ? ` unwatched=${lp.unwatched_ms}ms` : ''} `,
              el('code', {}, lp.template),
              ' ',
              el('button', { type: 'button', className: 'ctl-rm', onclick: () => this.rm([lp.id]) }, 'remove'),
            ),
          );
        }
      }
    }
    this.list.replaceChildren(...(rows.length ? rows : [el('span', { className: 'ctl-hint' }, 'no logpoints on the selected processes')]));
    if (report) this.status.textContent = `${rows.length} logpoint(s) listed (${answer.id})`;
  }
}
