// The console's only way to the server: each REST call with the bearer
// token (kept in sessionStorage, so only for this tab), and the SPEC's
// error envelope turned into an `ApiError`. Paths are relative to the
// page, so the console also works when the API is mounted under a prefix.

const TOKEN_KEY = 'dododb.token';

/** A failed call: HTTP status, SPEC code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};

/** What to do when the server answers 401 (ask for the token). */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The request headers every call carries, plus `extra`. */
export function headers(extra = {}) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

/** `/kv/{key}` with the key as one percent-encoded path segment. */
export function kvPath(key, suffix = '') {
  return `kv/${encodeURIComponent(key)}${suffix}`;
}

/** A query string from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * One call. Resolves to the `Response` when it is 2xx; rejects with an
 * `ApiError` otherwise (a 401 also calls the unauthorized handler).
 * `body` is sent as it is when it is a string, as JSON otherwise.
 */
export async function call(method, path, { body, headers: extra, signal } = {}) {
  const init = { method, headers: headers(extra), signal, cache: 'no-store' };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', `the server did not answer (${e.message})`);
  }
  if (response.ok) return response;
  let code = 'http_' + response.status;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const envelope = await response.json();
    if (envelope && envelope.error) {
      code = envelope.error.code;
      message = envelope.error.message;
    }
  } catch (_) {
    // Not the envelope (a proxy's page): keep the status line.
  }
  const error = new ApiError(response.status, code, message);
  if (response.status === 401) onUnauthorized(error);
  throw error;
}

/** `call` and parse the JSON answer. */
export async function json(method, path, options) {
  const response = await call(method, path, options);
  return response.json();
}
