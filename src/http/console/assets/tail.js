// Live tail: the newest events as they arrive, by polling the events list (newest first) every two seconds.

import { api } from './api.js';
import { h, put, time } from './ui.js';

const EVERY_MS = 2000;
const KEEP = 200;

export async function tail(main, ctx) {
  const sources = new Map((await api('GET', '/sources')).map((s) => [s.id, s.slug]));
  const seen = new Set();
  const tbody = h('tbody');
  const count = h('span#tail-count', { role: 'status' }, '');
  let paused = false;
  const toggle = h('button', { type: 'button', 'aria-pressed': 'false', onclick: () => {
    paused = !paused;
    toggle.setAttribute('aria-pressed', String(paused));
    toggle.textContent = paused ? 'Resume tail' : 'Pause tail';
  } }, 'Pause tail');
  let arrived = 0;
  const poll = async (first) => {
    if (paused || !ctx.live) return;
    const page = await api('GET', '/events?limit=50');
    const fresh = page.items.filter((e) => !seen.has(e.id));
    for (const e of fresh.reverse()) {
      seen.add(e.id);
      tbody.prepend(h('tr', { class: first ? '' : 'new' },
        h('td', {}, time(e.received_at)),
        h('td', {}, sources.get(e.source_id) || e.source_id),
        h('td', {}, e.type || '—'),
        h('td', {}, String(e.body_bytes)),
        h('td', {}, h('a', { href: `#/events/${e.id}` }, e.id))));
      if (!first) arrived += 1;
    }
    while (tbody.rows.length > KEEP) tbody.deleteRow(-1);
    count.textContent = `${arrived} new since this page opened`;
  };
  put(main, h('h1', {}, 'Live tail'),
    h('p', {}, 'The newest events, checked every two seconds. ', toggle, ' ', count),
    h('table#tail', {}, h('caption', {}, 'Incoming events, newest first'),
      h('thead', {}, h('tr', {}, ['Received', 'Source', 'Type', 'Bytes', 'Event'].map((x) => h('th', { scope: 'col' }, x)))),
      tbody));
  await poll(true);
  ctx.timers.push(setInterval(() => poll(false).catch(() => {}), EVERY_MS));
}
