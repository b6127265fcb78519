// Destinations, sources and routes: lists, creation and edit forms (errors beside the field), pause/resume, secret
// rotation. Objects declared in the configuration file are shown read-only, with the reason.

import { api, ApiError, query } from './api.js';
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

/** Why a declared object cannot be edited here (the API answers 409 `declared-in-config`). */
const DECLARED = 'Read-only: declared in the configuration file, which wins at every start; edit it there.';

/** The Edit control of a row: a button, or for a declared object the reason it is read-only. */
function editControl(obj, kind, open) {
  if (obj.declared) return h('span.read-only', { dataset: { field: 'read-only' } }, DECLARED);
  return writeButton('Edit', open, { 'aria-label': `Edit ${kind} ${obj.slug}` });
}

/**
 * Shows the edit form of one object in `slot`: its fields prefilled, saved with PUT by `save(form)`; the API's
 * refusal (422, 409) is shown beside the field it names. `done` runs after a save.
 */
function openEditor(slot, title, fields, save, done) {
  const form = writeForm(title, [...fields,
    h('button', { type: 'button', onclick: () => put(slot) }, 'Cancel')], async (f) => {
    try {
      const what = await save(f);
      clearProblems(f);
      put(slot);
      say(what);
      await done();
    } catch (e) {
      if (e instanceof ApiError) showProblem(f, e);
      else throw e;
    }
  }, 'Save changes');
  form.classList.add('editor');
  put(slot, form);
  const first = form.querySelector('input, select');
  if (first) first.focus();
}

const checkbox = (id, name, label, checked) =>
  h('div.field', {}, h('input', { id, name, type: 'checkbox', checked }), h('label', { for: id }, label));

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
          h('a', { href: `#/dead/${d.id}` }, 'Dead letters', h('span.visually-hidden', {}, ` of ${d.slug}`)),
          editControl(d, 'destination', () => editDestination(d))));
    });
    put(list, table('Destinations', ['Slug', 'URL', 'State', 'Declared in', 'Actions'], rows));
  };
  const editor = h('div#destination-editor');
  // PUT replaces the whole destination: what the form does not show (headers, rate limit, retry delays, TLS and
  // signing keys, which an omitted key keeps) is sent back as it is.
  const editDestination = (d) => openEditor(editor, `Edit destination ${d.slug}`, [
    field('edit-slug', 'Slug', { name: 'slug', value: d.slug, required: true, autocomplete: 'off' }),
    field('edit-url', 'URL', { name: 'url', type: 'url', value: d.url, required: true, autocomplete: 'off' }),
    field('edit-timeout_ms', 'Timeout (ms)', { name: 'timeout_ms', type: 'number', min: 1, value: d.timeout_ms }),
    field('edit-max_in_flight', 'Max in flight', { name: 'max_in_flight', type: 'number', min: 1, value: d.max_in_flight }),
    field('edit-max_attempts', 'Max attempts', { name: 'max_attempts', type: 'number', min: 1, value: d.retry && d.retry.max_attempts }),
    checkbox('edit-fifo', 'fifo', 'FIFO (one at a time, in order)', d.fifo),
  ], async (f) => {
    const body = {
      slug: f.elements.slug.value.trim(),
      url: f.elements.url.value.trim(),
      timeout_ms: num(f.elements.timeout_ms.value),
      max_in_flight: num(f.elements.max_in_flight.value),
      rate_limit: d.rate_limit,
      retry: { ...d.retry, max_attempts: num(f.elements.max_attempts.value) },
      fifo: f.elements.fifo.checked,
      headers: d.headers,
    };
    const r = await api('PUT', `/destinations/${d.id}`, body);
    return `Saved destination ${r.slug}`;
  }, refresh);
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
  put(main, h('h1', {}, 'Destinations'), list, shown, editor, form);
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
      editControl(s, 'source', () => editSource(s)),
    ]);
    put(list, table('Sources', ['Slug', 'Verification', 'JSON only', 'Max body (bytes)', 'Enabled', 'Declared in', 'Events', 'Edit'], rows));
  };
  const editor = h('div#source-editor');
  // PUT takes the whole source, as a [[sources]] table: the settings the form does not show are sent back as they
  // are; the verification keeps its kind, so its secrets are kept.
  const editSource = (s) => openEditor(editor, `Edit source ${s.slug}`, [
    field('edit-slug', 'Slug', { name: 'slug', value: s.slug, required: true, autocomplete: 'off' }),
    field('edit-max_body_bytes', 'Max body (bytes)', { name: 'max_body_bytes', type: 'number', min: 1, value: s.max_body_bytes }),
    checkbox('edit-require_json', 'require_json', 'JSON bodies only', s.require_json),
    checkbox('edit-enabled', 'enabled', 'Enabled (accepts events)', s.enabled),
  ], async (f) => {
    const { previous_secret_valid_until: _, ...verification } = s.verification || { kind: 'none' };
    const body = {
      slug: f.elements.slug.value.trim(),
      max_body_bytes: num(f.elements.max_body_bytes.value),
      require_json: f.elements.require_json.checked,
      idempotency: s.idempotency,
      event_type: s.event_type || undefined,
      dedupe_window_secs: s.dedupe_window_secs,
      cloudevents: s.cloudevents,
      allowed_origins: s.allowed_origins,
      allowed_rate: s.allowed_rate,
      verification,
      enabled: f.elements.enabled.checked,
    };
    const r = await api('PUT', `/sources/${s.id}`, body);
    if (r.secret) put(shown, secretBox(`Verification secret of ${r.source.slug}`, r.secret));
    return `Saved source ${r.source.slug}`;
  }, refresh);
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
  put(main, h('h1', {}, 'Sources'), list, shown, editor, form);
  await refresh();
}

/**
 * The part of a route form that tests its filter and transform against a stored event before saving
 * (`POST /admin/v1/routes/test`): the event's id (the newest event of the chosen source to begin with), a button, and
 * what a route would make of the event. A program that does not compile is shown beside its field.
 */
function routeTester(prefix) {
  const id = `${prefix}test-event`;
  const result = h('output', { id: `${prefix}test-result`, role: 'status', 'aria-live': 'polite' });
  const newest = async (form) => {
    const input = form.elements.test_event;
    if (input.dataset.typed) return;
    const page = await api('GET', `/events${query({ source: form.elements.source.value, limit: 1 })}`);
    input.value = page.items.length ? page.items[0].id : '';
  };
  const run = async (form) => {
    clearProblems(form);
    put(result, 'Testing…');
    const body = { event_id: form.elements.test_event.value.trim() };
    if (form.elements.filter.value.trim()) body.filter = form.elements.filter.value.trim();
    if (form.elements.transform.value.trim()) body.transform = form.elements.transform.value.trim();
    try {
      const r = await api('POST', '/routes/test', body);
      if (r.error) put(result, h('span.bad', {}, `Fails on this event: ${r.error}`));
      else if (!r.matched) put(result, 'Does not match this event: the route would skip it.');
      else if (r.output === null) put(result, 'Matches: the route would deliver the body as it came.');
      else put(result, 'Matches; the route would deliver:', h('pre.body', {}, JSON.stringify(r.output, null, 2)));
    } catch (e) {
      put(result);
      if (e instanceof ApiError) showProblem(form, e);
      else throw e;
    }
  };
  const section = h('div.tester', {},
    field(id, 'Stored event to test against (id)', { name: 'test_event', autocomplete: 'off',
      oninput: (e) => { e.target.dataset.typed = '1'; } }, 'The newest event of the chosen source, or any event id.'),
    h('button', { type: 'button', onclick: (e) => run(e.target.form) }, 'Test filter and transform'),
    result);
  // Filled once the form is in the page (the source select is then known), and again when the source changes.
  queueMicrotask(() => {
    const form = section.closest('form');
    if (!form) return;
    form.elements.source.addEventListener('change', () => newest(form).catch(() => {}));
    newest(form).catch(() => {});
  });
  return section;
}

export async function routes(main) {
  const list = h('div#route-list');
  const [srcs, dests] = await Promise.all([api('GET', '/sources'), api('GET', '/destinations')]);
  const refresh = async () => {
    const rows = (await api('GET', '/routes')).map((r) => h('tr', { dataset: { slug: r.slug } },
      [r.slug, r.source, r.destination, r.filter || '—', r.transform || '—', r.enabled ? 'yes' : 'no',
        r.declared ? 'configuration' : 'admin API', editControl(r, 'route', () => editRoute(r))].map((c) => h('td', {}, c))));
    put(list, table('Routes', ['Slug', 'Source', 'Destination', 'Filter (jq)', 'Transform (jq)', 'Enabled', 'Declared in', 'Edit'], rows));
  };
  const opts = (xs, chosen) => xs.map((x) => h('option', { value: x.slug, selected: x.slug === chosen }, x.slug));
  const editor = h('div#route-editor');
  const editRoute = (r) => openEditor(editor, `Edit route ${r.slug}`, [
    field('edit-slug', 'Slug', { name: 'slug', value: r.slug, required: true, autocomplete: 'off' }),
    field('edit-source', 'Source', { name: 'source', type: 'select', options: opts(srcs, r.source) }),
    field('edit-destination', 'Destination', { name: 'destination', type: 'select', options: opts(dests, r.destination) }),
    field('edit-filter', 'Filter (jq, optional)', { name: 'filter', value: r.filter || '', autocomplete: 'off' }),
    field('edit-transform', 'Transform (jq, optional)', { name: 'transform', value: r.transform || '', autocomplete: 'off' }),
    checkbox('edit-enabled', 'enabled', 'Enabled', r.enabled),
    routeTester('edit-'),
  ], async (f) => {
    const body = { slug: f.elements.slug.value.trim(), source: f.elements.source.value,
      destination: f.elements.destination.value, enabled: f.elements.enabled.checked };
    if (f.elements.filter.value.trim()) body.filter = f.elements.filter.value.trim();
    if (f.elements.transform.value.trim()) body.transform = f.elements.transform.value.trim();
    const saved = await api('PUT', `/routes/${r.id}`, body);
    return `Saved route ${saved.slug}`;
  }, refresh);
  const form = writeForm('Create route', [
    field('slug', 'Slug', { required: true, autocomplete: 'off' }),
    field('source', 'Source', { type: 'select', options: opts(srcs) }),
    field('destination', 'Destination', { type: 'select', options: opts(dests) }),
    field('filter', 'Filter (jq, optional)', { autocomplete: 'off', placeholder: '.type == "order.created"' }),
    field('transform', 'Transform (jq, optional)', { autocomplete: 'off' }),
    routeTester(''),
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
  put(main, h('h1', {}, 'Routes'), list, editor, form);
  await refresh();
}
