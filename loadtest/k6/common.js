// Shared by the k6 scenario scripts. Settings from the environment (k6 -e NAME=value
// or the shell): DODODB_URL (default http://127.0.0.1:8888), VUS (32), DURATION (10s),
// KEYS (100000), PRELOAD (auto: PUT k0..k<KEYS-1> in setup() unless k<KEYS-1> exists;
// "0" never, "1" always).
import http from 'k6/http';

export const BASE = (__ENV.DODODB_URL || 'http://127.0.0.1:8888').replace(/\/$/, '');
export const KEYS = parseInt(__ENV.KEYS || '100000', 10);
// The same 100-byte JSON value as loadtest/wrk/common.lua and loadtest/lib/dodo.py.
export const BODY =
  '{"id":1234,"name":"dodo bird","tags":["extinct","flightless"],"weight_kg":10.6,"island":"Mauritius"}';
export const PUT_PARAMS = { headers: { 'Content-Type': 'application/json' } };

// One constant-VUs scenario plus the pass/fail thresholds every script shares.
export function options(extraThresholds) {
  return {
    scenarios: {
      load: {
        executor: 'constant-vus',
        vus: parseInt(__ENV.VUS || '32', 10),
        duration: __ENV.DURATION || '10s',
      },
    },
    // On the scenario's requests only: setup()'s preload is not part of the load.
    // The rate>0 threshold is there to print the load's own req/s in the summary.
    thresholds: Object.assign(
      {
        'http_req_failed{scenario:load}': ['rate<0.01'],   // under 1% of requests may fail
        'http_req_duration{scenario:load}': ['p(99)<50'],  // p99 under 50 ms
        'http_reqs{scenario:load}': ['rate>0'],
      },
      extraThresholds || {},
    ),
    setupTimeout: '600s',
    summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  };
}

export function randomKey() {
  return `k${Math.floor(Math.random() * KEYS)}`;
}

// Load the keys the GET scenarios read, 200 PUTs per http.batch round trip.
export function preload() {
  const mode = __ENV.PRELOAD || 'auto';
  if (mode === '0') return;
  const probe = http.get(`${BASE}/kv/k${KEYS - 1}`, {
    responseCallback: http.expectedStatuses(200, 404), // a 404 here is expected, not a failure
  });
  if (mode === 'auto' && probe.status === 200) return;
  const started = Date.now();
  for (let lo = 0; lo < KEYS; lo += 200) {
    const batch = [];
    for (let i = lo; i < Math.min(lo + 200, KEYS); i++) {
      batch.push(['PUT', `${BASE}/kv/k${i}`, BODY, PUT_PARAMS]);
    }
    for (const r of http.batch(batch)) {
      if (r.status !== 200 && r.status !== 201) throw new Error(`preload: PUT got ${r.status}`);
    }
  }
  console.log(`preloaded ${KEYS} keys in ${(Date.now() - started) / 1000} s`);
}
