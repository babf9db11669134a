// Express 5 upstream of the HTTP compatibility suite: node server.js HOST PORT
// (NODE_PATH points at the suite's node_modules). The same routes as the FastAPI one.
'use strict';
const express = require('express');

const [host, port] = process.argv.slice(2);
const app = express();
app.use(express.json());

app.post('/v1/refunds', (req, res) => {
  const amount = req.body && req.body.amount;
  if (!Number.isInteger(amount)) {
    res.status(422).json({ error: 'amount must be an integer' });
    return;
  }
  res.json({ refunded: amount, server: 'express' });
});

app.get('/v1/quota', (req, res) => {
  res.json({ quota: 'ok', server: 'express' });
});

app.get('/v1/events', async (req, res) => {
  const n = Number(req.query.n || 5);
  const gap = Number(req.query.gap_ms || 20);
  res.set({ 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.flushHeaders();
  for (let i = 1; i <= n; i++) {
    res.write(`data: ${i}\n\n`);
    if (i < n) await new Promise((r) => setTimeout(r, gap));
  }
  res.end();
});

app.listen(Number(port), host);
