// Benchmark target for TLS: the overhead benchmark's server behind node's
// own OpenSSL (https), so SSL_write/SSL_read run once or twice per request.
// The key and certificate are generated per run (TLS_KEY, TLS_CERT).
'use strict';
const fs = require('fs');
const https = require('https');

const port = Number(process.env.PORT);
const options = {
  key: fs.readFileSync(process.env.TLS_KEY),
  cert: fs.readFileSync(process.env.TLS_CERT),
};
let served = 0;

https
  .createServer(options, (req, res) => {
    served += 1;
    if (served % 100 === 0) console.log(`served ${served}`);
    res.end('hello world');
  })
  .listen(port, '127.0.0.1');
