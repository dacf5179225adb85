// The value pane: opens a key as formatted JSON, checks an edit before
// saving it with `If-Match` (the version it was read at), and on 412 shows
// both versions and lets the user choose; it never overwrites silently.
// New keys are written with `If-None-Match: *` for the same reason.

import * as api from './api.js';
import { byId, bytes, confirmAction, el, fill, relative } from './dom.js';
import * as json from './json.js';

export class Editor {
  /** `keys` is the KeyBrowser to tell about writes; `status(text)` reports. */
  constructor(keys, status) {
    this.keys = keys;
    this.status = status;
    this.key = null;
    this.version = null;
    this.expiresAt = null;
    this.timer = null;
    this.conflictVersion = null;
    this.conflictAction = 'save';
    const form = byId('editor');
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.save();
    });
    form.addEventListener('keydown', (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === 's') {
        e.preventDefault();
        this.save();
      }
    });
    byId('edit-value').addEventListener('input', () => this.validate());
    byId('format').addEventListener('click', () => {
      if (this.validate()) byId('edit-value').value = json.pretty(byId('edit-value').value);
    });
    byId('reload').addEventListener('click', () => this.key !== null && this.open(this.key));
    byId('delete').addEventListener('click', () => this.remove());
    byId('overwrite').addEventListener('click', () => this.overwrite());
    byId('take-theirs').addEventListener('click', () => this.open(this.key));
    byId('keep-editing').addEventListener('click', () => this.hideConflict());
  }

  show() {
    byId('value-empty').hidden = true;
    byId('editor').hidden = false;
    this.hideConflict();
    byId('edit-error').textContent = '';
  }

  /** A blank form for a new key. */
  create() {
    this.stopTimer();
    this.key = null;
    this.version = null;
    this.expiresAt = null;
    this.show();
    byId('value-title').textContent = 'New key';
    byId('edit-key').readOnly = false;
    byId('edit-key').value = this.keys.prefix;
    byId('edit-ttl').value = '';
    byId('edit-value').value = '{}';
    fill(byId('meta'));
    byId('delete').hidden = true;
    byId('reload').hidden = true;
    byId('edit-key').focus();
  }

  /** Reads `key` and shows it. */
  async open(key) {
    this.stopTimer();
    this.show();
    this.keys.select(key);
    byId('value-title').textContent = 'Value';
    byId('edit-key').readOnly = true;
    byId('edit-key').value = key;
    // Cleared until the key is read, so nothing shows another key's figures.
    fill(byId('meta'));
    byId('delete').hidden = false;
    byId('reload').hidden = false;
    this.key = key;
    try {
      const [value, meta] = await Promise.all([
        api.call('GET', api.kvPath(key)),
        api.json('GET', api.kvPath(key, '/meta')),
      ]);
      const text = await value.text();
      if (this.key !== key) return;
      this.version = meta.version;
      this.expiresAt = meta.expires_at ? Date.parse(meta.expires_at) : null;
      byId('edit-value').value = json.pretty(text);
      byId('edit-ttl').value = this.expiresAt ? Math.max(1, Math.ceil((this.expiresAt - Date.now()) / 1000)) : '';
      this.renderMeta(meta);
      this.watchExpiry();
    } catch (e) {
      if (this.key !== key) return;
      if (e.status === 404) this.gone('This key does not exist (any more).');
      else byId('edit-error').textContent = `cannot read the key: ${e.message}`;
    }
  }

  renderMeta(meta) {
    const expiry = meta.expires_at
      ? [el('time', { datetime: meta.expires_at }, meta.expires_at), ' (', el('span', { id: 'expires-in' }, relative(Date.parse(meta.expires_at))), ')']
      : ['never'];
    fill(byId('meta'),
      el('dt', {}, 'version'), el('dd', { id: 'meta-version' }, String(meta.version)),
      el('dt', {}, 'size'), el('dd', { id: 'meta-size' }, bytes(meta.size)),
      el('dt', {}, 'expires'), el('dd', { id: 'meta-expires' }, ...expiry));
  }

  /** The key is not there: say so, and take it off the list. */
  gone(text) {
    this.stopTimer();
    this.version = null;
    fill(byId('meta'), el('dt', {}, 'state'), el('dd', { id: 'meta-state', class: 'error' }, text));
    this.keys.removed(this.key);
  }

  /** Counts down to the expiry, then checks that the key is gone. */
  watchExpiry() {
    if (!this.expiresAt) return;
    const key = this.key;
    this.timer = setInterval(async () => {
      const left = byId('expires-in');
      if (left) left.textContent = relative(this.expiresAt);
      if (Date.now() < this.expiresAt) return;
      try {
        await api.call('HEAD', api.kvPath(key));
      } catch (e) {
        if (e.status === 404 && this.key === key) this.gone('This key has expired.');
      }
    }, 1000);
  }

  stopTimer() {
    clearInterval(this.timer);
    this.timer = null;
  }

  /** Checks the JSON and the TTL; shows what is wrong. */
  validate() {
    const problem = json.check(byId('edit-value').value) || ttlProblem(byId('edit-ttl').value);
    byId('edit-error').textContent = problem || '';
    byId('edit-value').setAttribute('aria-invalid', problem ? 'true' : 'false');
    return !problem;
  }

  /** Writes the form: a new key, or this key at the version it was read. */
  async save() {
    if (!this.validate()) return;
    const key = byId('edit-key').value;
    if (key === '') {
      byId('edit-error').textContent = 'the key is empty';
      return;
    }
    if (this.key === null) {
      await this.write(key, { 'If-None-Match': '*' });
    } else if (this.version === null) {
      await this.write(key, { 'If-None-Match': '*' });
    } else {
      await this.write(key, { 'If-Match': `"${this.version}"` });
    }
  }

  async write(key, preconditions) {
    const body = byId('edit-value').value;
    const ttl = byId('edit-ttl').value;
    try {
      await api.call('PUT', api.kvPath(key) + api.query({ ttl }), { body, headers: preconditions });
    } catch (e) {
      if (e.status === 412 && this.key === null) {
        byId('edit-error').textContent = `the key ${JSON.stringify(key)} already exists; open it to change it`;
      } else if (e.status === 412) {
        await this.conflict();
      } else {
        byId('edit-error').textContent = `not saved: ${e.message}`;
      }
      return;
    }
    this.status(`saved ${key}`);
    this.keys.added(key);
    await this.open(key);
  }

  /**
   * Someone changed the key since it was read: show both versions.
   * `action` is what was refused: `save` or `delete`.
   */
  async conflict(action = 'save') {
    this.conflictAction = action;
    const mine = action === 'delete' ? '(delete the key)' : byId('edit-value').value;
    let theirs = null;
    let version = null;
    try {
      const [value, meta] = await Promise.all([
        api.call('GET', api.kvPath(this.key)),
        api.json('GET', api.kvPath(this.key, '/meta')),
      ]);
      theirs = json.pretty(await value.text());
      version = meta.version;
    } catch (e) {
      if (e.status !== 404) {
        byId('edit-error').textContent = `changed by someone else, and cannot read it now: ${e.message}`;
        return;
      }
    }
    this.conflictVersion = version;
    byId('conflict-text').textContent = version === null
      ? `Since you opened it (version ${this.version}), ${JSON.stringify(this.key)} was deleted. Nothing was saved.`
      : `Since you opened it (version ${this.version}), ${JSON.stringify(this.key)} was changed: it is at version ${version} now. Nothing was saved.`;
    byId('conflict-mine').textContent = mine;
    byId('conflict-theirs-title').textContent = version === null ? 'Theirs (deleted)' : `Theirs (version ${version})`;
    byId('conflict-theirs').textContent = theirs === null ? '(no value: deleted)' : theirs;
    byId('overwrite').textContent = action === 'delete' ? 'Delete theirs anyway' : 'Save mine over theirs';
    byId('overwrite').hidden = action === 'delete' && version === null;
    byId('conflict').hidden = false;
    byId('save').disabled = true;
    byId('overwrite').focus();
  }

  hideConflict() {
    byId('conflict').hidden = true;
    byId('save').disabled = false;
  }

  /** The user chose their edit over the stored version they have now seen. */
  async overwrite() {
    this.hideConflict();
    if (this.conflictAction === 'delete') {
      this.version = this.conflictVersion;
      await this.remove(false);
      return;
    }
    const preconditions = this.conflictVersion === null
      ? { 'If-None-Match': '*' }
      : { 'If-Match': `"${this.conflictVersion}"` };
    await this.write(this.key, preconditions);
  }

  /** Deletes the key at the version shown, after asking when `ask`. */
  async remove(ask = true) {
    const key = this.key;
    if (key === null) return;
    if (ask && !(await confirmAction(`Delete ${JSON.stringify(key)} (version ${this.version})? This cannot be undone.`))) {
      return;
    }
    try {
      const headers = this.version === null ? {} : { 'If-Match': `"${this.version}"` };
      await api.call('DELETE', api.kvPath(key), { headers });
    } catch (e) {
      if (e.status === 412) await this.conflict('delete');
      else byId('edit-error').textContent = `not deleted: ${e.message}`;
      return;
    }
    this.status(`deleted ${key}`);
    this.gone('Deleted.');
    byId('edit-value').value = '';
  }
}

function ttlProblem(ttl) {
  if (ttl === '') return null;
  return /^[1-9][0-9]*$/.test(ttl) ? null : 'the TTL is a whole number of seconds (empty: no expiry)';
}
