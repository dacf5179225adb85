// The live feed pane: `GET /events` read with fetch (so the bearer token
// goes in a header, never in the URL), parsed as Server-Sent Events. Pause
// closes the stream and remembers the last revision seen; resume asks for
// `since` that revision, so the server replays what happened meanwhile: no
// gap, no duplicate. A first connection starts at the current revision.

import * as api from './api.js';
import { byId, el, fill } from './dom.js';

/** Rows kept in the pane; older ones are dropped from the page. */
const MAX_ROWS = 500;

/** Wait before reconnecting a stream that broke. */
const RETRY_MS = 2000;

/**
 * Splits SSE text into frames. Returns the complete frames and the rest
 * (an unfinished frame) to prepend to the next chunk.
 */
export function parseFrames(text) {
  const frames = [];
  const blocks = text.replace(/\r\n?/g, '\n').split('\n\n');
  const rest = blocks.pop();
  for (const block of blocks) {
    const frame = { id: null, event: 'message', data: [] };
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') frame.id = value;
      else if (field === 'event') frame.event = value;
      else if (field === 'data') frame.data.push(value);
    }
    if (frame.data.length || frame.id !== null) frames.push({ ...frame, data: frame.data.join('\n') });
  }
  return { frames, rest };
}

export class Feed {
  /** `onOpen(key)` opens a key in the editor. */
  constructor(onOpen) {
    this.onOpen = onOpen;
    this.prefix = '';
    this.since = null;
    this.paused = false;
    this.controller = null;
    this.retry = null;
    byId('feed-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.prefix = byId('feed-prefix').value;
      fill(byId('feed-list'));
      this.start();
    });
    byId('feed-pause').addEventListener('click', () => (this.paused ? this.resume() : this.pause()));
    byId('feed-clear').addEventListener('click', () => fill(byId('feed-list')));
  }

  /** Goes live from the current revision. */
  async start() {
    this.stop();
    this.paused = false;
    byId('feed-pause').textContent = 'Pause';
    try {
      const stats = await api.json('GET', 'system/stats');
      this.since = stats.revision;
    } catch (e) {
      this.state(`cannot start: ${e.message}`);
      this.later();
      return;
    }
    this.connect();
  }

  pause() {
    this.paused = true;
    this.stop();
    byId('feed-pause').textContent = 'Resume';
    this.state(`paused after revision ${this.since}; resuming replays what happens meanwhile`);
  }

  resume() {
    this.paused = false;
    byId('feed-pause').textContent = 'Pause';
    this.connect();
  }

  stop() {
    clearTimeout(this.retry);
    this.retry = null;
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  state(text) {
    byId('feed-state').textContent = text;
  }

  later() {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => (this.since === null ? this.start() : this.connect()), RETRY_MS);
  }

  async connect() {
    this.stop();
    const controller = new AbortController();
    this.controller = controller;
    const path = 'events' + api.query({ prefix: this.prefix, since: this.since });
    let response;
    try {
      response = await api.call('GET', path, { signal: controller.signal, headers: { Accept: 'text/event-stream' } });
    } catch (e) {
      if (controller.signal.aborted) return;
      this.state(`disconnected (${e.message}); retrying`);
      this.later();
      return;
    }
    const filter = this.prefix ? ` for keys under ${JSON.stringify(this.prefix)}` : '';
    this.state(`live${filter}, after revision ${this.since}`);
    byId('feed-state').dataset.live = 'true';
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let rest = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const parsed = parseFrames(rest + decoder.decode(value, { stream: true }));
        rest = parsed.rest;
        for (const frame of parsed.frames) this.frame(frame);
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    } finally {
      delete byId('feed-state').dataset.live;
    }
    if (controller.signal.aborted || this.paused) return;
    this.state('the stream ended; reconnecting');
    this.later();
  }

  frame(frame) {
    if (frame.event === 'reset') {
      this.row(el('li', { class: 'reset' }, 'Some events were lost: they were older than what the server retains (reset).'));
      if (frame.id !== null) this.since = Number(frame.id);
      return;
    }
    let event;
    try {
      event = JSON.parse(frame.data);
    } catch (_) {
      return;
    }
    if (frame.id !== null) this.since = Number(frame.id);
    const time = event.timestamp ? event.timestamp.replace(/^.*T/, '').replace(/Z$/, '') : '';
    this.row(el('li', { class: `event ev-${event.event}`, 'data-version': String(event.version) },
      el('span', { class: 'ev-time muted' }, time),
      el('span', { class: 'ev-type' }, event.event),
      el('button', { type: 'button', class: 'ev-key', 'data-key': event.key, onclick: () => this.onOpen(event.key) }, event.key),
      el('span', { class: 'ev-version muted' }, `v${event.version}`)));
  }

  row(item) {
    const list = byId('feed-list');
    list.prepend(item);
    while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
  }
}
