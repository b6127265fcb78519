// Live tail: the events every node stores from now on, over the admin API's Server-Sent Events stream
// (`GET /admin/v1/events/stream`, the session cookie authenticates it), filtered by source, type and a jq program.
// When the stream cannot be opened (a proxy that does not pass it on, a node serving as many tails as it may), the
// page polls the event list every two seconds instead, and says so.

import { api, ApiError, query } from './api.js';
import { clearProblems, field, h, put, say, showProblem, time } from './ui.js';

const EVERY_MS = 2000;
const KEEP = 200;

export async function tail(main, ctx) {
  const sources = await api('GET', '/sources');
  const slugs = new Map(sources.map((s) => [s.id, s.slug]));
  const seen = new Set();
  const tbody = h('tbody');
  const count = h('span#tail-count', { role: 'status' }, '');
  const mode = h('span#tail-mode', {}, 'connecting');
  const notice = h('p#tail-notice', { role: 'alert' });
  let paused = false;
  let arrived = 0;
  let stream = null;
  let poller = null;
  const toggle = h('button', { type: 'button', 'aria-pressed': 'false', onclick: () => {
    paused = !paused;
    toggle.setAttribute('aria-pressed', String(paused));
    toggle.textContent = paused ? 'Resume tail' : 'Pause tail';
  } }, 'Pause tail');

  const show = (e, fresh) => {
    if (seen.has(e.id) || paused) return;
    seen.add(e.id);
    tbody.prepend(h('tr', { class: fresh ? 'new' : '', dataset: { id: e.id } },
      h('td', {}, time(e.received_at)),
      h('td', {}, e.source),
      h('td', {}, e.type || '—'),
      h('td', {}, String(e.size)),
      h('td', {}, e.node || '—'),
      h('td', {}, h('a', { href: `#/events/${e.id}` }, e.id))));
    if (fresh) arrived += 1;
    while (tbody.rows.length > KEEP) tbody.deleteRow(-1);
    count.textContent = `${arrived} new since this page opened`;
  };

  const stop = () => {
    if (stream) stream.close();
    if (poller) clearInterval(poller);
    stream = null;
    poller = null;
  };
  ctx.stops.push(stop);

  // The fallback: the newest page of the event list, every two seconds (source and type apply; the jq filter cannot).
  const poll = (params, why) => {
    mode.textContent = 'polling';
    notice.textContent = `The live stream is not available (${why}): polling the event list every two seconds instead` +
      (params.filter ? ', without the jq filter.' : '.');
    const once = async (first) => {
      if (!ctx.live) return;
      const page = await api('GET', `/events${query({ source: params.source, type: params.type, limit: 50 })}`);
      for (const e of page.items.reverse()) {
        show({ id: e.id, received_at: e.received_at, source: slugs.get(e.source_id) || e.source_id,
          type: e.event_type, size: e.body_bytes }, !first);
      }
    };
    once(true).catch(() => {});
    poller = setInterval(() => once(false).catch(() => {}), EVERY_MS);
    ctx.timers.push(poller);
  };

  // Why a stream did not open: the API's problem (a bad filter, an unknown source) or a reason to fall back.
  const refused = async (url, params, form) => {
    const abort = new AbortController();
    try {
      const r = await fetch(url, { credentials: 'same-origin', signal: abort.signal, headers: { Accept: 'text/event-stream' } });
      if (r.status === 401) return location.assign('/console/login');
      if (r.status === 422 || r.status === 404 || r.status === 400) {
        mode.textContent = 'stopped';
        showProblem(form, new ApiError(r.status, await r.json().catch(() => null)));
        return null;
      }
      return poll(params, r.ok ? 'the stream was cut' : `HTTP ${r.status}`);
    } catch (e) {
      return poll(params, String(e.message || e));
    } finally {
      abort.abort();
    }
  };

  const connect = (params, form) => {
    stop();
    notice.textContent = '';
    mode.textContent = 'connecting';
    const url = `/admin/v1/events/stream${query(params)}`;
    let opened = false;
    const es = new EventSource(url, { withCredentials: true });
    stream = es;
    es.onopen = () => {
      opened = true;
      mode.textContent = 'live';
      if (notice.dataset.kind === 'reconnecting') notice.textContent = '';
    };
    es.addEventListener('event', (m) => show(JSON.parse(m.data), true));
    es.addEventListener('dropped', (m) => {
      const { count: n } = JSON.parse(m.data);
      notice.dataset.kind = 'dropped';
      notice.textContent = `This browser fell behind: ${n} event(s) were skipped. The tail goes on.`;
    });
    es.addEventListener('resumed', () => {
      notice.dataset.kind = 'resumed';
      notice.textContent = 'The stream is back; events stored while it was interrupted are not shown here.';
    });
    es.addEventListener('error', (m) => {
      if (stream !== es) return;
      if (m.data) {
        // The server's own `error` event: the cluster's events cannot be seen now (Redis is away).
        const p = JSON.parse(m.data);
        notice.dataset.kind = 'error';
        notice.textContent = `${p.title}: ${p.detail}`;
      } else if (es.readyState === EventSource.CLOSED || !opened) {
        // Never opened, or refused for good: ask why, and poll unless the request itself was wrong.
        es.close();
        stream = null;
        refused(url, params, form);
      } else {
        mode.textContent = 'reconnecting';
        notice.dataset.kind = 'reconnecting';
        notice.textContent = 'The stream was cut; reconnecting (events stored meanwhile are not shown).';
      }
    });
  };

  const form = h('form#tail-filters', { novalidate: true, onsubmit: (e) => {
    e.preventDefault();
    clearProblems(form);
    say('');
    connect(params(form), form);
  } }, h('fieldset', {}, h('legend', {}, 'Filter the tail'),
    field('tail-source', 'Source', { type: 'select', name: 'source',
      options: [h('option', { value: '' }, 'any'), ...sources.map((s) => h('option', { value: s.slug }, s.slug))] }),
    field('tail-type', 'Type', { name: 'type', autocomplete: 'off' }),
    field('tail-filter', 'jq filter', { name: 'filter', autocomplete: 'off', placeholder: '.body.total > 100' },
      'Over {body, headers, source, type}; an event shows when the result is neither false nor null.'),
    h('button', { type: 'submit' }, 'Apply filters')));
  const params = (f) => ({ source: f.elements.source.value, type: f.elements.type.value.trim(),
    filter: f.elements.filter.value.trim() });

  put(main, h('h1', {}, 'Live tail'),
    h('p', {}, 'Events as every node stores them (', mode, '). ', toggle, ' ', count),
    notice, form,
    h('div.scroll', {}, h('table#tail', {}, h('caption', {}, 'Incoming events, newest first'),
      h('thead', {}, h('tr', {}, ['Received', 'Source', 'Type', 'Bytes', 'Node', 'Event'].map((x) => h('th', { scope: 'col' }, x)))),
      tbody)));
  connect(params(form), form);
}
