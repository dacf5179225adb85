// GET of one hot key (k0; HOT_KEY=name to change it). See common.js for settings.
import http from 'k6/http';
import { check } from 'k6';
import { BASE, BODY, PUT_PARAMS, options as makeOptions } from './common.js';

export const options = makeOptions();
const URL = `${BASE}/kv/${__ENV.HOT_KEY || 'k0'}`;

export function setup() {
  // Only the hot key is needed; a server like the ceiling answers this PUT too.
  http.put(URL, BODY, PUT_PARAMS);
}

export default function () {
  check(http.get(URL), { 'status 200': (r) => r.status === 200 });
}
