// Express 5 upstream of the HTTP compatibility suite: node server.js HOST PORT
// (NODE_PATH points at the suite's node_modules). The same routes as the FastAPI one, and the
// same record of what the canonical cases' routes acted on (GET /compat/seen).
'use strict';
const express = require('express');

const [host, port] = process.argv.slice(2);
const app = express();
// JSON and form bodies, inflated when gzip- or deflate-coded (body-parser's default); forms
// read by `qs` (`extended`), which reads `[_method]` and `_method[]` as `_method`.
app.use(express.json());
app.use(express.urlencoded({ extended: true }));
// A `_method` in a POST body overrides the method: the body getter of the method-override
// middleware's README, which Express applications use for HTML forms.
app.use((req, res, next) => {
  if (req.method === 'POST' && req.body && typeof req.body === 'object' && '_method' in req.body) {
    const method = String(req.body._method).toUpperCase();
    delete req.body._method;
    if (require('http').METHODS.includes(method)) req.method = method;
  }
  next();
});

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
  const name = (req.body && req.body.name) ?? null;
  res.json({ updated: req.params.name, method: req.method, name, server: 'express' });
});

app.delete('/v1/repos/:name', (req, res) => {
  saw(req, {});
  res.json({ deleted: req.params.name, server: 'express' });
});

// A GET route: Express runs it for HEAD too (and drops the body of its answer).
app.get('/v1/export/:kind', (req, res) => {
  saw(req, {});
  res.json({ exported: req.params.kind, server: 'express' });
});

app.get('/files/:name', (req, res) => {
  saw(req, {});
  res.json({ file: req.params.name, server: 'express' });
});

app.get('/compat/seen', (req, res) => {
  res.json(seen);
});

app.listen(Number(port), host);
