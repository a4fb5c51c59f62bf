// drive.mjs runs the official GHL Node SDK (@gohighlevel/api-client, pinned in
// package.json) against ghlproxy, the way an application does: the SDK has no base-URL
// option, so the application overrides the base URL of the SDK's axios client. It is run
// by e2e/sdk_test.go, which starts the GHL stand-in and a sidecar in front of it and then
// checks what the SDK got against what the stand-in holds.
//
// Environment:
//   SIDECAR_URL   base URL of the sidecar (required)
//   TOKEN         the credential, used as the SDK's private integration token (required)
//   LOCATION_ID   the location the contacts live in (required)
//   MODE          "contacts" (default) or "retry"
//   RUN           a word that makes names unique to this run
//   contacts mode:
//     SEED_CONTACT_ID  a contact the test created directly at the stand-in
//   retry mode:
//     BURN_URL    base URL where the budget is spent first (the stand-in, directly)
//     BURN        how many requests to spend there
//
// Output: one JSON line on stdout: {"sdkVersion", "baseURL", "calls": [...], "results": {...}}.
// Everything the SDK logs goes to stderr. Any failure exits 1 with one line on stderr
// naming the step and the status.

import { createRequire } from 'node:module';

// The SDK logs INFO and DEBUG with console.log; keep stdout for the one result line.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const require = createRequire(import.meta.url);
const { HighLevel, LogLevel } = require('@gohighlevel/api-client');
const sdkVersion = require('@gohighlevel/api-client/package.json').version;

function need(name) {
  const v = process.env[name];
  if (!v) fail('env', `${name} is not set`);
  return v;
}

function fail(step, msg) {
  process.stderr.write(`drive.mjs: ${step}: ${msg}\n`);
  process.exit(1);
}

const sidecarURL = need('SIDECAR_URL');
const token = need('TOKEN');
const locationId = need('LOCATION_ID');
const mode = process.env.MODE || 'contacts';
const run = process.env.RUN || String(Date.now());

const ghl = new HighLevel({
  privateIntegrationToken: token,
  logLevel: LogLevel.WARN,
  // The production setting the sidecar must be safe under: the SDK resends a request,
  // writes included, when it gets a 429. Short waits keep the test quick; the SDK waits
  // X-RateLimit-Interval-Milliseconds when the answer carries it.
  rateLimitRetry: { maxRetries: 3, maxDelayMs: 5000, baseDelayMs: 200 },
});

// DESIGN.md: the SDK has no base-URL option; its axios client's base URL is overridden.
const http = ghl.getHttpClient();
http.defaults.baseURL = sidecarURL;

// Every request the SDK sends (its own 429 retries go through the interceptors again)
// and every answer it finally resolves with, with the headers the sidecar adds.
const calls = [];
ghl.addRequestInterceptor({
  onFulfilled: (config) => {
    calls.push({ method: String(config.method).toUpperCase(), url: config.url, baseURL: config.baseURL });
    return config;
  },
});
ghl.addResponseInterceptor({
  onFulfilled: (res) => {
    const h = res.headers || {};
    const last = [...calls].reverse().find((c) => c.url === res.config.url && c.status === undefined);
    if (last) {
      last.status = res.status;
      for (const name of ['cache-status', 'x-ghlproxy-dedupe', 'x-ghlproxy-batch', 'x-ratelimit-remaining']) {
        if (h[name] !== undefined) last[name] = h[name];
      }
    }
    return res;
  },
});

async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    const status = err?.statusCode ?? err?.response?.status ?? 'no status';
    const body = err?.response ? JSON.stringify(err.response.data ?? err.response) : '';
    fail(name, `${err?.name || 'Error'} (${status}): ${err?.message} ${body}`.trim());
  }
}

// contacts: get, create, update, get, search through the sidecar; every answer is
// returned as the SDK resolved it, for the test to compare with the stand-in.
async function contacts() {
  const seedId = need('SEED_CONTACT_ID');
  const results = {};
  results.seed = await step('getContact(seed)', () => ghl.contacts.getContact({ contactId: seedId }));
  results.created = await step('createContact', () =>
    ghl.contacts.createContact({
      locationId,
      firstName: 'Ada',
      lastName: `Lovelace ${run}`,
      email: `ada.${run}@example.com`,
      phone: `+1555${run.replace(/\D/g, '').slice(-7).padStart(7, '0')}`,
      tags: ['e2e', 'sdk'],
      source: 'ghlproxy e2e',
    }));
  const id = results.created?.contact?.id;
  if (!id) fail('createContact', `no contact.id in ${JSON.stringify(results.created)}`);
  results.updated = await step('updateContact', () =>
    ghl.contacts.updateContact({ contactId: id }, { lastName: `Byron ${run}`, tags: ['e2e', 'sdk', 'updated'] }));
  results.after = await step('getContact(created)', () => ghl.contacts.getContact({ contactId: id }));
  results.search = await step('searchContactsAdvanced', () =>
    ghl.contacts.searchContactsAdvanced({ locationId, pageLimit: 50, query: run }));
  return results;
}

// retry: the app's budget is spent elsewhere (BURN requests straight to the stand-in, as
// another process of the same app would), so the SDK's create gets a 429 and the SDK
// resends it by itself; then the application retries the same create once more, as an
// app does when it never saw the first answer. The body has no email or phone, so GHL
// would accept a second copy: only the sidecar's fold keeps it to one contact.
async function retry() {
  const burnURL = need('BURN_URL');
  const burn = Number(need('BURN'));
  for (let i = 0; i < burn; i++) {
    const res = await fetch(`${burnURL}/contacts/?locationId=${encodeURIComponent(locationId)}&limit=1`, {
      headers: { Authorization: `Bearer ${token}`, Version: '2021-07-28' },
    });
    await res.arrayBuffer();
    if (res.status !== 200) fail('burn', `request ${i + 1} of ${burn} answered ${res.status}`);
  }
  const body = { locationId, firstName: 'Grace', lastName: `Hopper ${run}`, tags: ['e2e', 'retry'] };
  const results = {};
  results.first = await step('createContact (SDK retries the 429)', () => ghl.contacts.createContact(body));
  results.again = await step('createContact (the app retries)', () => ghl.contacts.createContact(body));
  return results;
}

const modes = { contacts, retry };
if (!modes[mode]) fail('env', `MODE ${JSON.stringify(mode)}: want contacts or retry`);
const results = await modes[mode]();
process.stdout.write(JSON.stringify({ sdkVersion, baseURL: http.defaults.baseURL, calls, results }) + '\n');
