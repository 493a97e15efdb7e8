// Demo traffic: about 5 requests a second for DURATION_SECONDS (bounded, so a
// forgotten demo doesn't load the machine forever). Most requests reuse a
// keep-alive connection; every 10th opens a fresh one, so TCP connects and
// closes show up too.
'use strict';
const http = require('http');

const port = Number(process.env.PORT);
const durationMs = Number(process.env.DURATION_SECONDS || 600) * 1000;
const paths = ['/', '/users/42', '/orders?limit=5', '/slow', '/', '/error'];
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 2 });
const started = Date.now();
let sent = 0;

function request() {
  if (Date.now() - started > durationMs) {
    keepAlive.destroy();
    return;
  }
  const path = paths[sent % paths.length];
  const agent = sent % 10 === 9 ? false : keepAlive;
  sent += 1;
  http
    .get({ host: '127.0.0.1', port, path, agent }, (res) => res.resume())
    .on('error', (err) => console.error(`request ${path} failed: ${err.message}`));
  setTimeout(request, 200);
}

request();
