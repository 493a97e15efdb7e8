// Benchmark target for `cargo xtask bench logpoint`: a hello-world http
// server with a function that never runs (line 9: a logpoint there must
// cost nothing) and the request handler's `res.end` (line 18; line 24
// with BENCH_ASYNC=1, where the handler awaits twice first, as async ones do).
'use strict';
const http = require('http');

function neverCalled(x) {
  return x + 1;
}

const port = Number(process.env.PORT);
let served = 0;

const plain = (req, res) => {
  served += 1;
  // A handler logpoint goes on the next line.
  res.end('hello world');
};
const next = async (n) => n + 1;
const awaiting = async (req, res) => {
  served = (await next(await next(served))) - 1;
  // With BENCH_ASYNC=1, a handler logpoint goes on the next line.
  res.end('hello world');
};

http
  .createServer(process.env.BENCH_ASYNC === '1' ? awaiting : plain)
  .listen(port, '127.0.0.1');
module.exports = { neverCalled };
