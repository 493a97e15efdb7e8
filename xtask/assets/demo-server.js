// Demo service: logs one line per request (errors to stderr), and runs a
// 50 ms timer doing some work, so the tracer has logs, TCP connections,
// busy event-loop turns and GC pauses to show.
'use strict';
const http = require('http');
const crypto = require('crypto');

const port = Number(process.env.PORT);
let served = 0;
let ticks = 0;
let cache = [];

function respond(req, res, started) {
  let status = 200;
  let body;
  if (req.url === '/error') {
    status = 500;
    body = JSON.stringify({ error: 'something broke' });
    console.error(`ERROR ${req.method} ${req.url}: simulated failure`);
  } else {
    body = JSON.stringify({ hello: 'world', path: req.url, served });
  }
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(body);
  const ms = (Number(process.hrtime.bigint() - started) / 1e6).toFixed(2);
  console.log(`${req.method} ${req.url} ${status} ${ms}ms`);
}

http
  .createServer((req, res) => {
    served += 1;
    const started = process.hrtime.bigint();
    if (req.url === '/slow') setTimeout(() => respond(req, res, started), 30);
    else respond(req, res, started);
  })
  .listen(port, '127.0.0.1', () => console.log(`demo service listening on 127.0.0.1:${port}`));

// Background work every 50 ms: usually a fraction of a millisecond, which
// stays under the tracer's default 1 ms loop threshold; once a second a heavy
// tick (sorting, garbage for V8 to collect) that shows up as a busy loop turn
// and the occasional GC pause.
setInterval(() => {
  ticks += 1;
  const hash = crypto.createHash('sha256');
  for (let i = 0; i < 50; i++) hash.update(String(i * ticks));
  if (ticks % 20 === 0) {
    const numbers = Array.from({ length: 50000 }, () => Math.random()).sort((a, b) => a - b);
    cache.push(numbers);
    if (cache.length > 10) cache = [];
  }
  if (ticks % 100 === 0) console.log(`stats: ${served} requests served, digest ${hash.digest('hex').slice(0, 8)}`);
}, 50);
