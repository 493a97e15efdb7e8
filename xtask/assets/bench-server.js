// Benchmark target: as little work per request as possible, so what changes
// between configurations is the cost of tracing. One short log line per 100
// requests gives the log probes something to capture.
'use strict';
const http = require('http');

const port = Number(process.env.PORT);
let served = 0;

http
  .createServer((req, res) => {
    served += 1;
    if (served % 100 === 0) console.log(`served ${served}`);
    res.end('hello world');
  })
  .listen(port, '127.0.0.1');
