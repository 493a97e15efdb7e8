// One hop of the demo chain (gateway -> api -> store). Started by
// `tracer demo` inside its host's network namespace; knows nothing about
// tracing. NAME, PORT, NEXT (URL of the next hop, or empty) come from the
// environment.
const http = require('http');
const name = process.env.NAME;
const port = Number(process.env.PORT);
const next = process.env.NEXT || '';
let served = 0;

http.createServer((req, res) => {
  served += 1;
  const n = served;
  console.log(`${name} #${n} ${req.method} ${req.url}`);
  if (!next) {
    // The store: a little work, now and then a slow one.
    const work = n % 20 === 0 ? 120 : 2;
    const until = Date.now() + work;
    while (Date.now() < until);
    res.end(JSON.stringify({ store: 'ok', n }));
    return;
  }
  http.get(next + req.url, (up) => {
    let body = '';
    up.on('data', (c) => (body += c));
    up.on('end', () => {
      if (up.statusCode !== 200) console.error(`${name} #${n} upstream answered ${up.statusCode}`);
      res.statusCode = up.statusCode;
      res.end(body);
    });
  }).on('error', (e) => {
    console.error(`${name} #${n} upstream failed: ${e.message}`);
    res.statusCode = 502;
    res.end();
  });
}).listen(port, process.env.ADDR || '0.0.0.0', () => console.log(`${name} listening on ${port}`));
