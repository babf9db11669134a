// Node's own HTTP client (fetch, undici), run inside an agent cgroup by the compatibility
// suite, the way client.py runs the Python ones:
//   node client.js request METHOD URL [JSON_BODY]
//   node client.js stream URL
// COMPAT_RESOLVE="name=ip,..." stands in for DNS (as curl's --resolve does).
'use strict';
const dns = require('node:dns');

const names = new Map(
  (process.env.COMPAT_RESOLVE || '').split(',').filter(Boolean).map((p) => p.split('=')),
);
const lookup = dns.lookup;
dns.lookup = (host, options, callback) => lookup(names.get(host) || host, options, callback);

function seen(res, body) {
  return {
    status: res.status,
    version: 'HTTP/1.1',
    headers: Object.fromEntries(res.headers),
    body,
  };
}

function eventsOf(text) {
  const events = [];
  for (const block of text.replace(/\r\n?/g, '\n').split('\n\n')) {
    const data = block.split('\n').filter((l) => l.startsWith('data:'));
    if (data.length) events.push(data.map((l) => l.slice(5).replace(/^ /, '')).join('\n'));
  }
  return events;
}

async function main() {
  const [op, ...args] = process.argv.slice(2);
  const signal = AbortSignal.timeout(60_000);
  if (op === 'request') {
    const [method, url, body] = args;
    const headers = body ? { 'content-type': 'application/json' } : {};
    const res = await fetch(url, { method, body, headers, signal });
    return seen(res, await res.text());
  }
  const res = await fetch(args[0], { signal });
  const decoder = new TextDecoder();
  let text = '';
  let error = null;
  try {
    for await (const chunk of res.body) text += decoder.decode(chunk, { stream: true });
  } catch (e) {
    error = String(e);
  }
  return { ...seen(res, null), events: eventsOf(text), error };
}

main().then(
  (out) => console.log(JSON.stringify(out)),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
