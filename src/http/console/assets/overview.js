// Overview: ingest rate, delivery success ratio and latency, backlog and oldest pending per destination, dead
// counts; refreshed every few seconds from /admin/v1/stats and each destination's health.

import { api } from './api.js';
import { age, bar, h, percent, put, table } from './ui.js';

const EVERY_MS = 3000;
const SAMPLES = 40;
const NS = 'http://www.w3.org/2000/svg';

/** A line chart of the last samples (inline SVG, scaled to its largest value). */
function sparkline(samples, label) {
  const w = 300;
  const hgt = 60;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${hgt}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  svg.classList.add('spark');
  svg.dataset.samples = String(samples.length);
  const max = Math.max(1e-9, ...samples);
  const y = (v) => hgt - 4 - (v / max) * (hgt - 8);
  // The samples span the width (oldest left, newest right); a single sample is a flat line.
  const step = w / Math.max(1, samples.length - 1);
  const pts = samples.length === 1 ? [`0,${y(samples[0])}`, `${w},${y(samples[0])}`]
    : samples.map((v, i) => `${i * step},${y(v)}`);
  const axis = document.createElementNS(NS, 'line');
  for (const [k, v] of [['x1', 0], ['y1', hgt - 4], ['x2', w], ['y2', hgt - 4]]) axis.setAttribute(k, v);
  const line = document.createElementNS(NS, 'polyline');
  line.setAttribute('points', pts.join(' '));
  svg.append(axis, line);
  return svg;
}

function card(title, value, id, ...extra) {
  return h('section.card', { 'aria-labelledby': `${id}-title` }, h('h2', { id: `${id}-title` }, title),
    h('p.big', { id }, value), ...extra);
}

/** Appends a sample to a series, keeping the last SAMPLES. */
function record(series, value) {
  series.push(value);
  while (series.length > SAMPLES) series.shift();
}

export async function overview(main, ctx) {
  // Series since the page opened, one sample per refresh: ingest rate, success ratio, slowest p50, backlog.
  const rates = [];
  const ratios = [];
  const slowest = [];
  const backlogs = [];
  put(main, h('h1', {}, 'Overview'), h('div#overview-body', {}, h('p', {}, 'Loading…')));
  const refresh = async () => {
    const [stats, dests] = await Promise.all([api('GET', '/stats?window_secs=60'), api('GET', '/destinations')]);
    const healths = await Promise.all(dests.slice(0, 100).map((d) => api('GET', `/destinations/${d.id}/health`)));
    if (!ctx.live) return;
    const events = stats.sources.reduce((n, s) => n + s.events, 0);
    const rate = events / stats.window_secs;
    record(rates, rate);
    let attempts = 0;
    let ok = 0;
    let backlog = 0;
    let deadCount = 0;
    for (const hl of healths) {
      const w = hl.windows[0];
      attempts += w.attempts;
      ok += (w.success_ratio || 0) * w.attempts;
      backlog += hl.backlog;
      deadCount += hl.dead;
    }
    const p50s = healths.map((x) => x.windows[0]).filter((w) => w.attempts && w.latency_p50_ms !== null)
      .map((w) => w.latency_p50_ms);
    const slowestP50 = p50s.length ? Math.max(...p50s) : null;
    record(ratios, attempts ? ok / attempts : 0);
    record(slowest, slowestP50 ?? 0);
    record(backlogs, backlog);
    const maxBacklog = Math.max(0, ...healths.map((x) => x.backlog));
    const rows = dests.slice(0, 100).map((d, i) => {
      const hl = healths[i];
      const w = hl.windows[0];
      return h('tr', { dataset: { destination: d.slug } },
        h('th', { scope: 'row' }, h('a', { href: `#/dead/${d.id}` }, d.slug)),
        h('td', {}, hl.state),
        h('td', {}, hl.circuit),
        h('td.num', { dataset: { field: 'backlog' } }, String(hl.backlog), ' ', bar(hl.backlog, maxBacklog, `backlog ${hl.backlog}`)),
        h('td', {}, age(hl.oldest_pending_at)),
        h('td.num', {}, percent(w.success_ratio)),
        h('td.num', {}, w.latency_p50_ms === null ? '—' : `${Math.round(w.latency_p50_ms)} ms`),
        h('td.num', { dataset: { field: 'dead' } }, String(hl.dead)));
    });
    put(document.getElementById('overview-body'),
      h('div.cards', {},
        card('Ingest rate (last minute)', `${rate.toFixed(2)} events/s`, 'ingest-rate',
          sparkline(rates, 'Ingest rate over the last refreshes')),
        card('Events received (last minute)', String(events), 'ingest-count'),
        card('Delivery success (last 5 min)', attempts ? percent(ok / attempts) : '—', 'success-ratio',
          h('small', {}, `${attempts} attempts`), sparkline(ratios, 'Delivery success over the last refreshes')),
        card('Slowest destination, latency p50 (5 min)', slowestP50 === null ? '—' : `${Math.round(slowestP50)} ms`,
          'latency-p50', sparkline(slowest, 'Slowest destination latency over the last refreshes')),
        card('Backlog', String(backlog), 'backlog-total', sparkline(backlogs, 'Backlog over the last refreshes')),
        card('Dead deliveries', String(deadCount), 'dead-total')),
      table('Destinations', ['Destination', 'State', 'Circuit', 'Backlog', 'Oldest pending', 'Success (5 min)',
        'Latency p50 (5 min)', 'Dead'], rows, { id: 'destination-health' }),
      h('p', {}, h('small', {}, `Updated ${new Date().toLocaleTimeString()}; every ${EVERY_MS / 1000} s.`)));
  };
  await refresh();
  ctx.timers.push(setInterval(() => refresh().catch(() => {}), EVERY_MS));
}
