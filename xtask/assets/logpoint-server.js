// Benchmark target for `cargo xtask bench logpoint`: bench-server.js with a
// function that never runs (line 9: a logpoint there must cost nothing)
// and the request handler's `res.end` on line 18 (a logpoint there fires
// on every request).
'use strict';
const http = require('http');

function neverCalled(x) {
  return x + 1;
}

const port = Number(process.env.PORT);
let served = 0;

http
  .createServer((req, res) => {
    served += 1;
    res.end('hello world');
  })
  .listen(port, '127.0.0.1');
module.exports = { neverCalled };
