// Regex search over every host's logs, logpoint lines and probe hits
// (GET /v1/grep, the regex crate's syntax). Results in time order with
// host, pid and stream (or, marked apart, the kind: logpoint, probe);
// clicking one moves the timeline there.

import { json, ndjson } from './api.js';
import { el, evMs, fmtTime, nsParam, searchText } from './util.js';

const LIMIT = 2000;

export class Search {
  constructor(root, { onJump, getWindow }) {
    this.onJump = onJump;
    this.getWindow = getWindow;
    this.input = el('input', {
      type: 'search',
      id: 'search-re',
      placeholder: 'regex, e.g. store #\\d+ GET /users/',
      spellcheck: false,
    });
    this.icase = el('input', { type: 'checkbox', id: 'search-i' });
    this.inWindow = el('input', { type: 'checkbox', id: 'search-window' });
    this.status = el('span', { className: 'search-status', id: 'search-status' });
    this.results = el('div', { className: 'search-results', id: 'search-results' });
    const form = el(
      'form',
      {
        className: 'search-form',
        onsubmit: (ev) => {
          ev.preventDefault();
          this.run();
        },
      },
      this.input,
      el('label', {}, this.icase, ' ignore case'),
      el('label', {}, this.inWindow, " only the timeline's window"),
      el('button', { type: 'submit' }, 'Search'),
      this.status,
    );
    root.append(form, this.results);
  }

  async run() {
    const re = this.input.value;
    if (!re) return;
    const params = { re, i: this.icase.checked ? 1 : undefined };
    if (this.inWindow.checked) {
      const w = this.getWindow();
      params.since = nsParam(w.start);
      params.until = nsParam(w.end);
    }
    this.status.textContent = 'searching…';
    this.results.replaceChildren();
    let rows;
    let total;
    try {
      [rows, total] = await Promise.all([
        ndjson('/v1/grep', { ...params, limit: LIMIT }),
        json('/v1/grep', { ...params, count: 1 }).then((c) => c.count),
      ]);
    } catch (e) {
      this.status.textContent = e.message;
      return;
    }
    this.status.textContent =
      total > rows.length ? `${total} matches, the first ${rows.length} shown` : `${rows.length} matches`;
    this.status.dataset.count = String(rows.length);
    let pattern = null;
    try {
      pattern = new RegExp(re, this.icase.checked ? 'gi' : 'g');
    } catch (_) {
      /* Rust syntax JS does not know: no highlighting */
    }
    const frag = document.createDocumentFragment();
    for (const e of rows) {
      frag.append(
        el(
          'div',
          {
            className: `result kind-${e.kind}`,
            dataset: { host: e.host, pid: String(e.pid), kind: e.kind },
            title: 'show on the timeline',
            onclick: () => this.onJump(e),
          },
          el('span', { className: 'r-time' }, fmtTime(evMs(e))),
          el('span', { className: 'r-host' }, e.host),
          el('span', { className: 'r-pid' }, String(e.pid)),
          e.kind === 'log'
            ? el('span', { className: `r-stream s-${e.stream}` }, e.stream)
            : el('span', { className: 'r-stream r-kind' }, e.kind),
          el('span', { className: 'r-text' }, ...highlight(searchText(e), pattern)),
        ),
      );
    }
    this.results.append(frag);
  }
}

/** The text split into plain and <mark> pieces, all as text nodes. */
function highlight(text, re) {
  if (!re) return [text];
  const out = [];
  let last = 0;
  re.lastIndex = 0;
  let m;
  while ((m = re.exec(text)) && out.length < 200) {
    if (m[0] === '') {
      re.lastIndex += 1;
      continue;
    }
    out.push(text.slice(last, m.index), el('mark', {}, m[0]));
    last = m.index + m[0].length;
  }
  out.push(text.slice(last));
  return out;
}
