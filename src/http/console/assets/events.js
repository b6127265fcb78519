// Events: search by source, type, delivery status, time and a jq filter, newest first, paginated; one event's detail with its
// headers, body (pretty JSON, text, or hex) and every delivery with every attempt; replay, retry, cancel.

import { api, ApiError, query } from './api.js';
import { field, h, put, say, table, time, writeButton } from './ui.js';

const STATES = ['', 'pending', 'delivered', 'dead', 'failed', 'cancelled'];

async function slugs(path) {
  const m = new Map();
  for (const x of await api('GET', path)) m.set(x.id, x.slug);
  return m;
}

/** `datetime-local` value (local time) to RFC 3339, or undefined. */
function rfc3339(v) {
  return v ? new Date(v).toISOString() : undefined;
}

export async function events(main, ctx, qs) {
  const preset = new URLSearchParams(qs || '');
  const sourceNames = await slugs('/sources');
  const results = h('div#event-results');
  const pager = h('div.pager');
  let cursors = [];
  let filters = {};
  const form = h('form#event-search', { role: 'search', 'aria-label': 'Search events' },
    h('div.row', {},
      field('q-source', 'Source', { type: 'select', name: 'source',
        options: [h('option', { value: '' }, 'any'), ...[...sourceNames.values()].sort().map((s) => h('option', { value: s }, s))] }),
      field('q-type', 'Type', { name: 'type', autocomplete: 'off' }),
      field('q-status', 'Delivery status', { type: 'select', name: 'status',
        options: STATES.map((s) => h('option', { value: s }, s || 'any')) }),
      field('q-from', 'Received from', { type: 'datetime-local', name: 'from', step: 1 }),
      field('q-to', 'Received before', { type: 'datetime-local', name: 'to', step: 1 }),
      field('q-filter', 'jq filter', { name: 'filter', autocomplete: 'off', spellcheck: 'false',
        placeholder: '.body.amount > 100' })),
    h('button', { type: 'submit' }, 'Search'));
  if (preset.get('source')) form.elements.source.value = preset.get('source');

  const load = async () => {
    const cursor = cursors[cursors.length - 1];
    let page;
    try {
      page = await api('GET', `/events${query({ ...filters, cursor, limit: 25 })}`);
    } catch (e) {
      say(`Search failed: ${e.message}`, 'error');
      return;
    }
    const rows = page.items.map((e) => [
      h('a', { href: `#/events/${e.id}` }, e.id),
      time(e.received_at),
      sourceNames.get(e.source_id) || e.source_id,
      e.type || '—',
      e.content_type || '—',
      String(e.body_bytes),
    ]);
    put(results, rows.length
      ? table(`Events, page ${cursors.length + 1}`, ['Event', 'Received', 'Source', 'Type', 'Content type', 'Bytes'], rows)
      : h('p', {}, page.next_cursor
        ? 'No match among the events read so far (a jq search reads 1,000 events a page): Older reads on.'
        : 'No event matches.'));
    put(pager,
      h('button', { type: 'button', disabled: cursors.length === 0, onclick: () => { cursors = []; load(); } }, 'Newest'),
      h('button', { type: 'button', disabled: !page.next_cursor, onclick: () => { cursors.push(page.next_cursor); load(); } }, 'Older'));
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = form.elements;
    filters = { source: f.source.value, type: f.type.value.trim(), status: f.status.value,
      from: rfc3339(f.from.value), to: rfc3339(f.to.value), filter: f.filter.value.trim() };
    cursors = [];
    load();
  });
  put(main, h('h1', {}, 'Events'), form, results, pager);
  filters = { source: form.elements.source.value };
  await load();
}

function hexdump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length && i < 4096; i += 16) {
    const chunk = [...bytes.slice(i, i + 16)];
    const hex = chunk.map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const text = chunk.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${i.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${text}`);
  }
  if (bytes.length > 4096) lines.push(`… ${bytes.length - 4096} more bytes`);
  return lines.join('\n');
}

/** A body as the API gives it (`text` or `base64`): JSON pretty-printed, other text as is, binary as hex. */
export function bodyText(body) {
  if (!body) return '';
  if (body.encoding === 'base64') {
    return hexdump(Uint8Array.from(atob(body.data), (c) => c.charCodeAt(0)));
  }
  try {
    return JSON.stringify(JSON.parse(body.data), null, 2);
  } catch {
    return body.data;
  }
}

/** Stored headers: an object of name → value(s), or a list of [name, value] pairs. */
function headerRows(headers) {
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers || {});
  return pairs.map(([k, v]) => [k, Array.isArray(v) ? v.join(', ') : String(v)]);
}

function excerpt(body) {
  const t = bodyText(body);
  return t.length > 300 ? `${t.slice(0, 300)}…` : t || '—';
}

export async function eventDetail(main, ctx, id) {
  const destNames = await slugs('/destinations');
  const render = async () => {
    const e = await api('GET', `/events/${id}`);
    const deliveries = e.deliveries.map((d) => {
      const dest = destNames.get(d.destination_id) || d.destination_id;
      const actions = [];
      if (d.state === 'dead') {
        actions.push(writeButton('Retry', () => run(`Retried the delivery to ${dest}`, () => api('POST', `/deliveries/${d.id}/retry`)),
          { 'aria-label': `Retry the delivery to ${dest}` }));
      }
      if (d.state === 'pending') {
        actions.push(writeButton('Cancel', () => run(`Cancelled the delivery to ${dest}`, () => api('POST', `/deliveries/${d.id}/cancel`)),
          { 'aria-label': `Cancel the delivery to ${dest}` }));
      }
      const attempts = (d.attempt_log || []).map((a) => [String(a.attempt), time(a.started_at), a.node_id,
        a.status === null ? '—' : String(a.status), `${a.latency_ms} ms`, a.error_kind || '—', a.error || '—',
        h('pre.excerpt', {}, excerpt(a.response_excerpt))]);
      return h('section.delivery', { 'aria-labelledby': `d-${d.id}`, dataset: { state: d.state, destination: dest } },
        h('h3', { id: `d-${d.id}` }, `To ${dest}: `, h('span.state', {}, d.state)),
        h('p', {}, `${d.attempts} attempt(s); next attempt at `, time(d.next_attempt_at),
          d.last_error ? ` · last error: ${d.last_error}` : ''),
        h('div.actions', {}, actions),
        attempts.length
          ? table(`Attempts to ${dest}`, ['#', 'Started', 'Node', 'Status', 'Latency', 'Error kind', 'Error', 'Response'], attempts, { class: 'attempts' })
          : h('p', {}, 'No attempt yet.'));
    });
    put(main,
      h('p', {}, h('a', { href: '#/events' }, '← Events')),
      h('h1', {}, `Event ${e.id}`),
      h('dl.meta', {},
        h('dt', {}, 'Source'), h('dd', {}, e.source),
        h('dt', {}, 'Received'), h('dd', {}, time(e.received_at)),
        h('dt', {}, 'Idempotency key'), h('dd', {}, e.idempotency_key),
        h('dt', {}, 'Content type'), h('dd', {}, e.content_type || '—')),
      h('div.actions', {}, h('button', { type: 'button', onclick: () => render().then(() => say('Refreshed')) }, 'Refresh'),
        writeButton('Replay to every route', () => run('Replayed the event', () => api('POST', `/events/${id}/replay`, {})))),
      h('h2', {}, 'Headers'),
      table('Headers', ['Name', 'Value'], headerRows(e.headers)),
      h('h2', {}, `Body (${e.body.encoding === 'base64' ? 'binary, hex' : 'text'})`),
      h('pre.body', { tabindex: 0, 'aria-label': 'Body' }, bodyText(e.body)),
      h('h2', {}, 'Deliveries'),
      deliveries.length ? deliveries : h('p', {}, 'No delivery: no route matched.'));
  };
  const run = async (what, f) => {
    try {
      await f();
      say(what);
    } catch (err) {
      say(`Failed: ${err instanceof ApiError ? err.message : err}`, 'error');
    }
    await render();
  };
  await render();
}
