// Destinations, sources and routes: lists, creation forms (errors beside the field), pause/resume, secret rotation.

import { api, ApiError } from './api.js';
import { clearProblems, field, h, put, say, secretBox, showProblem, table, writeButton, writeForm } from './ui.js';

const num = (v) => (v === '' ? undefined : Number(v));

/** Runs a write, says what it did, and refreshes; a refusal is shown in the status line. */
async function act(what, f, refresh) {
  try {
    const r = await f();
    say(what);
    await refresh();
    return r;
  } catch (e) {
    say(`${what} failed: ${e instanceof ApiError ? e.message : e}`, 'error');
    return null;
  }
}

export async function destinations(main) {
  const list = h('div#destination-list');
  const shown = h('div#destination-secret');
  const refresh = async () => {
    const rows = (await api('GET', '/destinations')).map((d) => {
      const paused = d.state === 'paused';
      return h('tr', { dataset: { slug: d.slug } },
        h('th', { scope: 'row' }, d.slug),
        h('td', {}, d.url),
        h('td', { dataset: { field: 'state' } }, d.state),
        h('td', {}, d.declared ? 'configuration' : 'admin API'),
        h('td.actions', {},
          writeButton(paused ? 'Resume' : 'Pause', () => act(`${paused ? 'Resumed' : 'Paused'} ${d.slug}`,
            () => api('POST', `/destinations/${d.id}/${paused ? 'resume' : 'pause'}`), refresh),
          { 'aria-label': `${paused ? 'Resume' : 'Pause'} ${d.slug}` }),
          writeButton('Rotate secret', async () => {
            const r = await act(`Rotated the signing secret of ${d.slug}`,
              () => api('POST', `/destinations/${d.id}/rotate-secret`, {}), refresh);
            if (r) put(shown, secretBox(`New signing secret of ${d.slug}`, r.secret));
          }, { 'aria-label': `Rotate the signing secret of ${d.slug}` }),
          h('a', { href: `#/dead/${d.id}` }, 'Dead letters', h('span.visually-hidden', {}, ` of ${d.slug}`))));
    });
    put(list, table('Destinations', ['Slug', 'URL', 'State', 'Declared in', 'Actions'], rows));
  };
  const form = writeForm('Create destination', [
    field('slug', 'Slug', { required: true, autocomplete: 'off' }, 'Lower-case letters, digits, - and _.'),
    field('url', 'URL', { type: 'url', required: true, autocomplete: 'off' }),
    field('timeout_ms', 'Timeout (ms)', { type: 'number', min: 1, placeholder: '10000' }),
    field('max_in_flight', 'Max in flight', { type: 'number', min: 1, placeholder: '16' }),
    field('max_attempts', 'Max attempts', { type: 'number', min: 1, placeholder: 'default' }, 'Then the delivery is dead.'),
    h('div.field', {}, h('input', { id: 'fifo', name: 'fifo', type: 'checkbox' }), h('label', { for: 'fifo' }, 'FIFO (one at a time, in order)')),
  ], async (f) => {
    const body = {
      slug: f.slug.value.trim(),
      url: f.url.value.trim(),
      timeout_ms: num(f.timeout_ms.value),
      max_in_flight: num(f.max_in_flight.value),
      fifo: f.fifo.checked,
    };
    if (f.max_attempts.value) body.retry = { max_attempts: Number(f.max_attempts.value) };
    try {
      const r = await api('POST', '/destinations', body);
      clearProblems(f);
      say(`Created destination ${r.destination.slug}`);
      put(shown, secretBox(`Signing secret of ${r.destination.slug}`, r.secret || '(none)'));
      f.reset();
      await refresh();
    } catch (e) {
      if (e instanceof ApiError) showProblem(f, e);
      else throw e;
    }
  });
  put(main, h('h1', {}, 'Destinations'), list, shown, form);
  await refresh();
}

export async function sources(main) {
  const list = h('div#source-list');
  const shown = h('div#source-secret');
  const refresh = async () => {
    const rows = (await api('GET', '/sources')).map((s) => [
      s.slug, (s.verification && s.verification.kind) || 'none', s.require_json ? 'yes' : 'no',
      String(s.max_body_bytes), s.enabled ? 'yes' : 'no', s.declared ? 'configuration' : 'admin API',
      h('a', { href: `#/events?source=${encodeURIComponent(s.slug)}` }, 'Events', h('span.visually-hidden', {}, ` of ${s.slug}`)),
    ]);
    put(list, table('Sources', ['Slug', 'Verification', 'JSON only', 'Max body (bytes)', 'Enabled', 'Declared in', 'Events'], rows));
  };
  const kinds = ['none', 'github', 'stripe', 'shopify', 'standard_webhooks'];
  const form = writeForm('Create source', [
    field('slug', 'Slug', { required: true, autocomplete: 'off' }, `Events arrive at /ingest/<slug>.`),
    field('verification', 'Verification', { type: 'select', options: kinds.map((k) => h('option', { value: k }, k)) },
      'Kinds with a shared secret get a generated one, shown once.'),
    field('max_body_bytes', 'Max body (bytes)', { type: 'number', min: 1, placeholder: '1048576' }),
    h('div.field', {}, h('input', { id: 'require_json', name: 'require_json', type: 'checkbox' }), h('label', { for: 'require_json' }, 'JSON bodies only')),
  ], async (f) => {
    const body = { slug: f.slug.value.trim(), require_json: f.require_json.checked, verification: { kind: f.verification.value } };
    if (f.max_body_bytes.value) body.max_body_bytes = Number(f.max_body_bytes.value);
    try {
      const r = await api('POST', '/sources', body);
      clearProblems(f);
      say(`Created source ${r.source.slug}`);
      put(shown, r.secret ? secretBox(`Verification secret of ${r.source.slug}`, r.secret) : '');
      f.reset();
      await refresh();
    } catch (e) {
      if (e instanceof ApiError) showProblem(f, e);
      else throw e;
    }
  });
  put(main, h('h1', {}, 'Sources'), list, shown, form);
  await refresh();
}

export async function routes(main) {
  const list = h('div#route-list');
  const [srcs, dests] = await Promise.all([api('GET', '/sources'), api('GET', '/destinations')]);
  const refresh = async () => {
    const rows = (await api('GET', '/routes')).map((r) => [r.slug, r.source, r.destination, r.filter || '—',
      r.transform || '—', r.enabled ? 'yes' : 'no', r.declared ? 'configuration' : 'admin API']);
    put(list, table('Routes', ['Slug', 'Source', 'Destination', 'Filter (jq)', 'Transform (jq)', 'Enabled', 'Declared in'], rows));
  };
  const opts = (xs) => xs.map((x) => h('option', { value: x.slug }, x.slug));
  const form = writeForm('Create route', [
    field('slug', 'Slug', { required: true, autocomplete: 'off' }),
    field('source', 'Source', { type: 'select', options: opts(srcs) }),
    field('destination', 'Destination', { type: 'select', options: opts(dests) }),
    field('filter', 'Filter (jq, optional)', { autocomplete: 'off', placeholder: '.type == "order.created"' }),
    field('transform', 'Transform (jq, optional)', { autocomplete: 'off' }),
  ], async (f) => {
    const body = { slug: f.slug.value.trim(), source: f.source.value, destination: f.destination.value, enabled: true };
    if (f.filter.value.trim()) body.filter = f.filter.value.trim();
    if (f.transform.value.trim()) body.transform = f.transform.value.trim();
    try {
      const r = await api('POST', '/routes', body);
      clearProblems(f);
      say(`Created route ${r.slug}`);
      f.reset();
      await refresh();
    } catch (e) {
      if (e instanceof ApiError) showProblem(f, e);
      else throw e;
    }
  });
  put(main, h('h1', {}, 'Routes'), list, form);
  await refresh();
}
