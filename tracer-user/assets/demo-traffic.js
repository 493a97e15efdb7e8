// Demo traffic: a request to the gateway every INTERVAL_MS, for SECONDS.
const http = require('http');
const target = process.env.TARGET;
const interval = Number(process.env.INTERVAL_MS || 200);
const stopAt = Date.now() + 1000 * Number(process.env.SECONDS || 3600);
let i = 0;
const timer = setInterval(() => {
  if (Date.now() > stopAt) return clearInterval(timer);
  i += 1;
  const path = i % 10 === 0 ? `/users/${i}` : `/orders/${i}`;
  http.get(target + path, { agent: false }, (res) => res.resume()).on('error', () => {});
}, interval);
