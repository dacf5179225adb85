// GET of a uniformly random key among k0..k<KEYS-1>, preloaded in setup() if missing.
import http from 'k6/http';
import { check } from 'k6';
import { BASE, options as makeOptions, preload, randomKey } from './common.js';

export const options = makeOptions();

export function setup() {
  preload();
}

export default function () {
  check(http.get(`${BASE}/kv/${randomKey()}`), { 'status 200': (r) => r.status === 200 });
}
