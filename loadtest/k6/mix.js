// 90% GET / 10% PUT on uniformly random keys among k0..k<KEYS-1> (preloaded in setup()).
// The two kinds are tagged (op:get / op:put), with a p99 threshold each.
import http from 'k6/http';
import { check } from 'k6';
import { BASE, BODY, PUT_PARAMS, options as makeOptions, preload, randomKey } from './common.js';

export const options = makeOptions({
  'http_req_duration{scenario:load,op:get}': ['p(99)<50'],
  'http_req_duration{scenario:load,op:put}': ['p(99)<50'],
});

export function setup() {
  preload();
}

export default function () {
  const url = `${BASE}/kv/${randomKey()}`;
  if (Math.random() < 0.1) {
    const r = http.put(url, BODY, Object.assign({ tags: { op: 'put' } }, PUT_PARAMS));
    check(r, { 'put 200/201': (r) => r.status === 200 || r.status === 201 });
  } else {
    check(http.get(url, { tags: { op: 'get' } }), { 'get 200': (r) => r.status === 200 });
  }
}
