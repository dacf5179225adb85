// The subscriptions pane: create and delete webhook subscriptions, and show
// each one's delivery state from `GET /pubsub/subscriptions/{id}` (status,
// cursor, pending, failed, lost events, last success and error) with its
// failed events, `recover` and `enable`. A server without that route still
// gets the list, create and delete, and a note that it reports no state.

import * as api from './api.js';
import { byId, confirmAction, el, fill, relative } from './dom.js';

/** How often the states are read again. */
const REFRESH_MS = 3000;

export class Subscriptions {
  constructor(status) {
    this.status = status;
    this.detail = true;
    this.open = new Set();
    this.timer = null;
    byId('sub-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.create();
    });
  }

  start() {
    this.refresh();
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      // Redrawing would take the focus from a keyboard user in the list.
      if (document.hidden || byId('sub-list').contains(document.activeElement)) return;
      this.refresh();
    }, REFRESH_MS);
  }

  async create() {
    const kind = byId('sub-kind').value;
    const body = { [kind]: byId('sub-target').value, callback_url: byId('sub-url').value };
    const secret = byId('sub-secret').value;
    if (secret) body.secret = secret;
    byId('sub-error').textContent = '';
    try {
      const sub = await api.json('POST', 'pubsub/subscribe', { body });
      this.status(`subscribed ${sub.id}`);
      byId('sub-secret').value = '';
    } catch (e) {
      byId('sub-error').textContent = `not subscribed: ${e.message}`;
    }
    await this.refresh();
  }

  async refresh() {
    let list;
    try {
      list = (await api.json('GET', 'pubsub/subscriptions')).subscriptions;
    } catch (e) {
      byId('sub-error').textContent = `cannot list subscriptions: ${e.message}`;
      return;
    }
    const states = await Promise.all(list.map((sub) => this.state(sub)));
    const items = list.map((sub, i) => this.card(sub, states[i]));
    if (items.length === 0) items.push(el('li', { class: 'muted' }, 'no subscriptions'));
    fill(byId('sub-list'), items);
  }

  /** The delivery state of `sub`, or null when the server reports none. */
  async state(sub) {
    if (sub.status !== undefined) return sub;
    if (!this.detail) return null;
    try {
      return await api.json('GET', `pubsub/subscriptions/${encodeURIComponent(sub.id)}`);
    } catch (e) {
      if ((e.status === 404 && /route/.test(e.message)) || e.status === 405) this.detail = false;
      return null;
    }
  }

  card(sub, state) {
    const target = sub.prefix !== undefined ? ['prefix ', el('code', {}, sub.prefix === '' ? '(all keys)' : sub.prefix)] : ['key ', el('code', {}, sub.key)];
    const rows = [
      el('dt', {}, 'target'), el('dd', {}, ...target),
      el('dt', {}, 'callback'), el('dd', { class: 'url' }, sub.callback_url),
      el('dt', {}, 'created'), el('dd', {}, sub.created_at, sub.signed ? ' · signed' : ''),
    ];
    const actions = [];
    let badge;
    if (state) {
      badge = el('span', { class: `badge status-${state.status}`, 'data-status': state.status }, state.status);
      rows.push(
        el('dt', {}, 'delivered to'), el('dd', {}, `revision ${state.cursor ?? '—'}`),
        el('dt', {}, 'pending'), el('dd', { class: 'sub-pending' }, String(state.pending ?? 0)),
        el('dt', {}, 'failed'), el('dd', { class: 'sub-failed' }, String(state.failed ?? 0)),
        el('dt', {}, 'lost'), el('dd', { class: 'sub-lost' }, String(state.lost_events ?? 0)),
        el('dt', {}, 'last success'), el('dd', {}, state.last_success_at ? `${state.last_success_at} (${relative(Date.parse(state.last_success_at))})` : 'never'),
      );
      if (state.last_error) rows.push(el('dt', {}, 'last error'), el('dd', { class: 'error sub-error' }, state.last_error));
      if (state.failed > 0) {
        actions.push(el('button', { type: 'button', onclick: () => this.toggleFailed(sub.id) }, this.open.has(sub.id) ? 'Hide failed' : 'Show failed'));
        actions.push(el('button', { type: 'button', class: 'recover', onclick: () => this.recover(sub.id) }, 'Recover failed'));
      }
      if (state.status === 'disabled') {
        actions.push(el('button', { type: 'button', class: 'enable', onclick: () => this.enable(sub.id) }, 'Enable'));
      }
    } else {
      badge = el('span', { class: 'badge', 'data-status': 'unknown' }, 'state not reported');
      rows.push(el('dt', {}, 'delivery'), el('dd', { class: 'muted' }, 'this server does not report delivery state'));
    }
    actions.push(el('button', { type: 'button', class: 'danger', onclick: () => this.remove(sub) }, 'Delete…'));
    const failed = el('div', { class: 'failed', id: `failed-${sub.id}` });
    if (this.open.has(sub.id)) this.loadFailed(sub.id, failed);
    return el('li', { class: 'sub', 'data-id': sub.id },
      el('div', { class: 'row' }, el('strong', {}, sub.id), badge),
      el('dl', { class: 'meta' }, rows),
      el('div', { class: 'row' }, actions),
      failed);
  }

  toggleFailed(id) {
    if (this.open.has(id)) this.open.delete(id);
    else this.open.add(id);
    this.refresh();
  }

  async loadFailed(id, box) {
    try {
      const page = await api.json('GET', `pubsub/subscriptions/${encodeURIComponent(id)}/failed`);
      fill(box, el('table', {},
        el('thead', {}, el('tr', {}, el('th', {}, 'revision'), el('th', {}, 'key'), el('th', {}, 'attempts'), el('th', {}, 'last error'))),
        el('tbody', {}, page.events.map((ev) => el('tr', {},
          el('td', {}, String(ev.revision)), el('td', {}, ev.key), el('td', {}, String(ev.attempts)), el('td', {}, ev.last_error ?? ''))))));
    } catch (e) {
      fill(box, el('p', { class: 'error' }, `cannot list failed events: ${e.message}`));
    }
  }

  async recover(id) {
    try {
      const answer = await api.json('POST', `pubsub/subscriptions/${encodeURIComponent(id)}/recover`, { body: { since: 0 } });
      this.status(`${answer.queued} failed event(s) queued again for ${id}`);
    } catch (e) {
      this.status(`recover failed: ${e.message}`, true);
    }
    await this.refresh();
  }

  async enable(id) {
    try {
      await api.call('POST', `pubsub/subscriptions/${encodeURIComponent(id)}/enable`);
      this.status(`enabled ${id}`);
    } catch (e) {
      this.status(`enable failed: ${e.message}`, true);
    }
    await this.refresh();
  }

  async remove(sub) {
    if (!(await confirmAction(`Delete subscription ${sub.id} (${sub.callback_url})?`))) return;
    try {
      await api.json('POST', 'pubsub/unsubscribe', { body: { id: sub.id } });
      this.status(`deleted subscription ${sub.id}`);
    } catch (e) {
      this.status(`not deleted: ${e.message}`, true);
    }
    await this.refresh();
  }
}
