// The keys pane: lists keys under a prefix a page at a time (the server's
// cursor), groups them into folders at `/` and `:` where a folder holds
// more than one key, and filters by a search text. Keys are shown as text.

import * as api from './api.js';
import { byId, el, fill } from './dom.js';

/** Keys asked for per page. */
const PAGE = 100;

/** While searching, at most this many pages are read per click. */
const SEARCH_PAGES = 20;

/** `prefix` cut into crumbs after each separator: "a/b:" → ["a/", "b:"]. */
export function crumbs(prefix) {
  return prefix.match(/[^/:]*[/:]|[^/:]+$/g) || [];
}

/**
 * The entries to show for `keys` under `prefix`: folders (the text up to
 * and with the first separator after the prefix, when more than one key
 * shares it) and single keys, in key order.
 */
export function group(keys, prefix) {
  const folders = new Map();
  for (const key of keys) {
    const rest = key.slice(prefix.length);
    const at = rest.search(/[/:]/);
    if (at >= 0 && at < rest.length - 1) {
      const name = rest.slice(0, at + 1);
      folders.set(name, (folders.get(name) || 0) + 1);
    }
  }
  const entries = [];
  const seen = new Set();
  for (const key of keys) {
    const rest = key.slice(prefix.length);
    const at = rest.search(/[/:]/);
    const name = at >= 0 && at < rest.length - 1 ? rest.slice(0, at + 1) : null;
    if (name && folders.get(name) > 1) {
      if (!seen.has(name)) {
        seen.add(name);
        entries.push({ folder: prefix + name, label: name, count: folders.get(name) });
      }
    } else {
      entries.push({ key, label: rest || key });
    }
  }
  return entries;
}

export class KeyBrowser {
  /** `onOpen(key)` runs when a key is picked; `status(text)` reports. */
  constructor(onOpen, status) {
    this.onOpen = onOpen;
    this.status = status;
    this.prefix = '';
    this.keys = [];
    this.cursor = null;
    this.selected = null;
    this.generation = 0;
    byId('keys-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.prefix = byId('prefix').value;
      this.list();
    });
    byId('search').addEventListener('input', () => this.render());
    byId('group').addEventListener('change', () => this.render());
    byId('more').addEventListener('click', () => this.more());
    byId('key-list').addEventListener('keydown', (e) => moveFocus(e, byId('key-list')));
  }

  /** Lists from the start of the current prefix. */
  async list() {
    byId('prefix').value = this.prefix;
    this.keys = [];
    this.cursor = null;
    await this.more(true);
  }

  /** Reads the next page (or, while searching, pages until matches fill one). */
  async more(first = false) {
    const generation = first ? ++this.generation : this.generation;
    const search = byId('search').value;
    let pages = search ? SEARCH_PAGES : 1;
    try {
      do {
        const page = await api.json('GET', 'kv' + api.query({ prefix: this.prefix, limit: PAGE, cursor: this.cursor }));
        if (generation !== this.generation) return;
        this.keys.push(...page.keys);
        this.cursor = page.next_cursor;
        pages--;
      } while (pages > 0 && this.cursor && this.matching().length < PAGE);
    } catch (e) {
      this.status(`listing failed: ${e.message}`, true);
    }
    this.render();
  }

  matching() {
    const search = byId('search').value.toLowerCase();
    return search ? this.keys.filter((k) => k.toLowerCase().includes(search)) : this.keys;
  }

  render() {
    const search = byId('search').value;
    const keys = this.matching();
    const grouped = byId('group').checked && !search;
    const entries = grouped ? group(keys, this.prefix) : keys.map((key) => ({ key, label: key }));
    fill(byId('key-list'), entries.map((entry) => this.entry(entry)));
    if (entries.length === 0) {
      byId('key-list').append(el('li', { class: 'muted' }, search ? 'no key matches' : 'no keys'));
    }
    const loaded = `${this.keys.length} key${this.keys.length === 1 ? '' : 's'} loaded`;
    byId('key-count').textContent = search ? `${keys.length} of ${loaded} match` : loaded;
    byId('more').hidden = !this.cursor;
    this.renderCrumbs();
  }

  entry(entry) {
    if (entry.folder) {
      return el('li', {},
        el('button', {
          type: 'button', class: 'folder', 'data-prefix': entry.folder,
          onclick: () => { this.prefix = entry.folder; this.list(); },
        }, entry.label, el('span', { class: 'muted' }, ` ${entry.count}${this.cursor ? '+' : ''}`)));
    }
    return el('li', {},
      el('button', {
        type: 'button', class: 'key', 'data-key': entry.key, title: entry.key,
        'aria-current': entry.key === this.selected ? 'true' : null,
        onclick: () => this.onOpen(entry.key),
      }, entry.label));
  }

  renderCrumbs() {
    const parts = crumbs(this.prefix);
    const items = [el('button', { type: 'button', class: 'crumb', onclick: () => { this.prefix = ''; this.list(); } }, 'all')];
    let at = '';
    for (const part of parts) {
      at += part;
      const target = at;
      items.push(el('button', { type: 'button', class: 'crumb', onclick: () => { this.prefix = target; this.list(); } }, part));
    }
    fill(byId('crumbs'), items);
  }

  /** Marks `key` as the one open in the editor. */
  select(key) {
    this.selected = key;
    for (const b of byId('key-list').querySelectorAll('button.key')) {
      if (b.dataset.key === key) b.setAttribute('aria-current', 'true');
      else b.removeAttribute('aria-current');
    }
  }

  /** A key was written: show it if it belongs under the prefix. */
  added(key) {
    if (key.startsWith(this.prefix) && !this.keys.includes(key)) {
      // Only within the range already listed, or the cursor would skip it.
      if (!this.cursor || key < this.keys[this.keys.length - 1]) {
        this.keys.push(key);
        this.keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        this.render();
      }
    }
  }

  /** A key is gone (deleted or expired). */
  removed(key) {
    const at = this.keys.indexOf(key);
    if (at >= 0) {
      this.keys.splice(at, 1);
      this.render();
    }
  }
}

/** Up and down arrows move between the buttons of a list. */
export function moveFocus(event, list) {
  if (event.key !== 'ArrowDown' && event.key !== 'ArrowUp') return;
  const buttons = [...list.querySelectorAll('button')];
  const at = buttons.indexOf(document.activeElement);
  if (at < 0) return;
  const next = buttons[at + (event.key === 'ArrowDown' ? 1 : -1)];
  if (next) {
    next.focus();
    event.preventDefault();
  }
}
