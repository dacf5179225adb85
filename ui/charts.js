// The charts pane: polls `GET /system/stats` and draws the last minutes of
// request rate, keys, WAL fsync latency and webhook lag as SVG lines.
// Rates and latencies come from the change of the server's counters
// between two polls, so nothing but the counters is kept on the server.

import * as api from './api.js';
import { byId, el, svg } from './dom.js';

/** Poll interval. */
const POLL_MS = 2000;

/** How much history the charts show. */
const WINDOW_MS = 5 * 60 * 1000;

/** The narrowest time span of the x axis. */
const MIN_SPAN_MS = 30 * 1000;

const WIDTH = 300;
const HEIGHT = 80;

/**
 * The series: a title, a unit and how to read a point from two
 * consecutive polls (`null`: no value for that interval).
 */
const SERIES = [
  {
    id: 'requests', title: 'Requests per second', unit: 'req/s',
    point: (prev, cur, secs) => (prev && cur.http ? Math.max(0, cur.http.requests - prev.http.requests) / secs : null),
  },
  { id: 'keys', title: 'Keys', unit: 'keys', point: (_prev, cur) => cur.keys },
  {
    id: 'fsync', title: 'WAL fsync latency (mean)', unit: 'ms',
    point: (prev, cur) => {
      if (!prev || !cur.wal || cur.wal.fsync_micros === undefined) return null;
      const n = cur.wal.fsyncs - prev.wal.fsyncs;
      return n > 0 ? (cur.wal.fsync_micros - prev.wal.fsync_micros) / n / 1000 : null;
    },
  },
  {
    id: 'webhook-lag', title: 'Webhook lag', unit: 'events pending',
    point: (_prev, cur) => (cur.webhooks ? cur.webhooks.queue_depth + cur.webhooks.in_flight : null),
  },
];

/** A number for a label: 3 significant digits at most. */
export function short(v) {
  if (v === null || v === undefined) return '—';
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  if (Number.isInteger(v)) return String(v);
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export class Charts {
  constructor() {
    this.prev = null;
    this.samples = SERIES.map(() => []);
    this.timer = null;
    this.figures = SERIES.map((s) => {
      const figure = el('figure', { class: 'chart', id: `chart-${s.id}` });
      byId('charts').append(figure);
      return figure;
    });
  }

  start() {
    this.poll();
    clearInterval(this.timer);
    this.timer = setInterval(() => document.hidden || this.poll(), POLL_MS);
  }

  async poll() {
    let cur;
    try {
      cur = await api.json('GET', 'system/stats');
    } catch (_) {
      return;
    }
    const now = Date.now();
    const secs = this.prev ? (now - this.prev.at) / 1000 : 0;
    SERIES.forEach((s, i) => {
      const value = s.point(this.prev && this.prev.stats, cur, secs);
      const list = this.samples[i];
      list.push({ at: now, value });
      while (list.length && list[0].at < now - WINDOW_MS) list.shift();
      this.draw(i, now);
    });
    this.prev = { at: now, stats: cur };
  }

  draw(i, now) {
    const s = SERIES[i];
    const points = this.samples[i].filter((p) => p.value !== null);
    const max = Math.max(1e-9, ...points.map((p) => p.value));
    const top = max * 1.1;
    // The x axis spans the history there is (at least MIN_SPAN_MS), up to
    // the whole window, so a fresh page does not squeeze into a corner.
    const first = this.samples[i].length ? this.samples[i][0].at : now;
    const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - first));
    const x = (at) => (WIDTH * (at - (now - span))) / span;
    const y = (v) => HEIGHT - (HEIGHT * v) / top;
    const last = points.length ? points[points.length - 1].value : null;
    const line = points.map((p) => `${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
    const over = span >= 120000 ? `${Math.round(span / 60000)} minutes` : `${Math.round(span / 1000)} seconds`;
    const label = `${s.title}: now ${short(last)} ${s.unit}, at most ${short(points.length ? max : null)} over the last ${over}`;
    const chart = svg('svg', {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img', 'aria-label': label, preserveAspectRatio: 'none',
      'data-points': String(this.samples[i].length),
    },
      svg('title', {}, label),
      svg('line', { x1: 0, y1: HEIGHT - 0.5, x2: WIDTH, y2: HEIGHT - 0.5, class: 'axis' }),
      svg('line', { x1: 0, y1: y(max), x2: WIDTH, y2: y(max), class: 'grid' }),
      points.length > 1 ? svg('polyline', { points: line, class: 'line' }) : null,
      points.length === 1 ? svg('circle', { cx: x(points[0].at), cy: y(points[0].value), r: 2, class: 'dot' }) : null);
    this.figures[i].replaceChildren(
      el('figcaption', {}, s.title, ' ', el('strong', { class: 'now', 'data-value': last === null ? '' : String(last) }, `${short(last)} ${s.unit}`),
        el('span', { class: 'muted' }, ` · max ${short(points.length ? max : null)}`)),
      chart);
  }
}
