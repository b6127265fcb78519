// Bulk replay: replay every event of a source in a time range (optionally only those a jq filter accepts) to the
// current routes, or to chosen destinations, as a background job of the admin API (`/admin/v1/replay-jobs`); the
// jobs' progress is shown live (refreshed every second) and a queued or running job can be cancelled.

import { api, ApiError } from './api.js';
import { clearProblems, field, h, put, say, showProblem, table, time, writeButton, writeForm } from './ui.js';

const EVERY_MS = 1000;

/** `datetime-local` value (local time, minutes) of a date. */
function local(d) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export async function replay(main, ctx) {
  const [sources, dests] = await Promise.all([api('GET', '/sources'), api('GET', '/destinations')]);
  const slugs = new Map(sources.map((s) => [s.id, s.slug]));
  const list = h('div#replay-jobs');
  let shown = '';
  const refresh = async () => {
    const jobs = await api('GET', '/replay-jobs');
    // Re-rendered only when something changed, so that a control is never replaced under the pointer.
    const now = JSON.stringify(jobs);
    if (now === shown) return;
    shown = now;
    const rows = jobs.map((j) => {
      const active = j.status === 'queued' || j.status === 'running';
      const progress = `${j.events_scanned} scanned, ${j.events_matched} matched, ${j.deliveries_created} deliveries`;
      return h('tr', { dataset: { job: j.id, status: j.status } },
        h('td', {}, time(j.created_at)),
        h('td', {}, slugs.get(j.source_id) || j.source_id),
        h('td', {}, time(j.from), ' – ', time(j.to)),
        h('td', {}, j.filter || '—'),
        h('td', { dataset: { field: 'status' } }, j.cancel_requested && active ? `${j.status} (cancelling)` : j.status),
        h('td', { dataset: { field: 'progress' } }, progress, j.error ? h('span.bad', {}, ` · ${j.error}`) : null),
        h('td.actions', {}, active && !j.cancel_requested
          ? writeButton('Cancel', () => cancel(j), { 'aria-label': `Cancel replay job ${j.id}` })
          : '—'));
    });
    put(list, table('Replay jobs, newest first', ['Created', 'Source', 'Range', 'Filter (jq)', 'Status', 'Progress', 'Actions'], rows));
  };
  const cancel = async (j) => {
    try {
      await api('POST', `/replay-jobs/${j.id}/cancel`);
      say('Replay job cancelled (a running job stops after its current batch)');
    } catch (e) {
      say(`Cancel failed: ${e.message}`, 'error');
    }
    await refresh();
  };
  const now = new Date();
  const form = writeForm('Start a bulk replay', [
    field('replay-source', 'Source', { type: 'select', name: 'source',
      options: sources.map((s) => h('option', { value: s.slug }, s.slug)) }),
    h('div.row', {},
      field('replay-from', 'From (received at or after)', { name: 'from', type: 'datetime-local', required: true,
        value: local(new Date(now.getTime() - 3600 * 1000)) }),
      field('replay-to', 'To (received before)', { name: 'to', type: 'datetime-local', required: true,
        value: local(new Date(now.getTime() + 60 * 1000)) })),
    field('replay-filter', 'jq filter (optional)', { name: 'filter', autocomplete: 'off', placeholder: '.body.total > 100' },
      'Only the events for which it is neither false nor null are replayed.'),
    h('fieldset.destinations', {}, h('legend', {}, 'Destinations (none chosen: every route of the source)'),
      dests.map((d) => h('div.field', {},
        h('input', { id: `replay-dest-${d.slug}`, name: 'destinations', type: 'checkbox', value: d.slug }),
        h('label', { for: `replay-dest-${d.slug}` }, d.slug)))),
  ], async (f) => {
    const stamp = (v) => (v ? new Date(v).toISOString() : '');
    const body = { source: f.elements.source.value, from: stamp(f.elements.from.value), to: stamp(f.elements.to.value) };
    if (f.elements.filter.value.trim()) body.filter = f.elements.filter.value.trim();
    const chosen = [...f.querySelectorAll('input[name=destinations]:checked')].map((c) => c.value);
    if (chosen.length) body.destinations = chosen;
    try {
      await api('POST', '/replay-jobs', body);
      clearProblems(f);
      say('Replay job started');
      await refresh();
    } catch (e) {
      if (e instanceof ApiError) showProblem(f, e);
      else throw e;
    }
  }, 'Start replay');
  put(main, h('h1', {}, 'Bulk replay'),
    h('p', {}, 'New deliveries for past events; the original attempts are kept. Progress is refreshed every second.'),
    form, list);
  await refresh();
  ctx.timers.push(setInterval(() => { if (ctx.live) refresh().catch(() => {}); }, EVERY_MS));
}
