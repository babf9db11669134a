// Express 5 upstream of the HTTP compatibility suite: node server.js HOST PORT
// (NODE_PATH points at the suite's node_modules). The same routes as the FastAPI one, and the
// same record of what the canonical cases' routes acted on (GET /compat/seen).
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

const seen = []; // what the routes below acted on
const saw = (req, what) => seen.push({ method: req.method, path: req.path, ...what });

app.post('/v1/deploy', (req, res) => {
  const dryRun = req.get('x-dry-run') ?? null;
  saw(req, { x_dry_run: dryRun });
  res.json({ real_deploy: dryRun !== 'true', server: 'express' });
});

app.post('/v1/repos/:name', (req, res) => {
  saw(req, {});
  res.json({ updated: req.params.name, method: req.method, server: 'express' });
});

app.get('/files/:name', (req, res) => {
  saw(req, {});
  res.json({ file: req.params.name, server: 'express' });
});

app.get('/compat/seen', (req, res) => {
  res.json(seen);
});

app.listen(Number(port), host);
