// PUT of the 100-byte JSON value to a uniformly random key among k0..k<KEYS-1>.
import http from 'k6/http';
import { check } from 'k6';
import { BASE, BODY, PUT_PARAMS, options as makeOptions, randomKey } from './common.js';

export const options = makeOptions();

export default function () {
  const r = http.put(`${BASE}/kv/${randomKey()}`, BODY, PUT_PARAMS);
  check(r, { 'status 200/201': (r) => r.status === 200 || r.status === 201 });
}
