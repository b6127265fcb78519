// Dead letters: a destination's dead deliveries, each retried alone or all at once; pending ones cancelled.

import { api, ApiError, query } from './api.js';
import { field, h, put, say, table, time, writeButton } from './ui.js';

export async function dead(main, ctx, destId) {
  const dests = await api('GET', '/destinations');
  const pick = h('form#dead-pick', { 'aria-label': 'Choose a destination',
    onsubmit: (e) => { e.preventDefault(); location.hash = `#/dead/${e.target.elements.destination.value}`; } },
  h('div.row', {}, field('dead-destination', 'Destination', { type: 'select', name: 'destination',
    options: dests.map((d) => h('option', { value: d.id, selected: d.id === destId }, d.slug)) })),
  h('button', { type: 'submit' }, 'Show dead letters'));
  put(main, h('h1', {}, 'Dead letters'), pick);
  const dest = dests.find((d) => d.id === destId);
  if (!dest) {
    main.append(h('p', {}, dests.length ? 'Choose a destination.' : 'No destination yet.'));
    return;
  }
  const body = h('div#dead-list');
  const run = async (what, f) => {
    try {
      const r = await f();
      say(r && typeof r.count === 'number' ? `${what}: ${r.count}` : what);
    } catch (e) {
      say(`Failed: ${e instanceof ApiError ? e.message : e}`, 'error');
    }
    await refresh();
  };
  const refresh = async () => {
    const [page, health] = await Promise.all([
      api('GET', `/destinations/${dest.id}/deliveries${query({ state: 'dead', limit: 100 })}`),
      api('GET', `/destinations/${dest.id}/health`),
    ]);
    const rows = page.items.map((d) => h('tr', { dataset: { delivery: d.id } },
      h('td', {}, h('a', { href: `#/events/${d.event_id}` }, d.event_id)),
      h('td', {}, String(d.attempts)),
      h('td', {}, d.last_error || '—'),
      h('td', {}, time(d.updated_at)),
      h('td', {}, writeButton('Retry', () => run('Retried 1 delivery', () => api('POST', `/deliveries/${d.id}/retry`)),
        { 'aria-label': `Retry the delivery of event ${d.event_id}` }))));
    put(body,
      h('p#dead-summary', {}, `${dest.slug}: ${health.dead} dead, ${health.backlog} pending.`),
      h('div.actions', {},
        h('button', { type: 'button', onclick: () => refresh() }, 'Refresh'),
        writeButton('Retry all dead', () => run('Deliveries retried', () => api('POST', `/destinations/${dest.id}/retry-dead`, {}))),
        writeButton('Cancel all pending', () => run('Deliveries cancelled', () => api('POST', `/destinations/${dest.id}/cancel-pending`, {})))),
      rows.length
        ? table(`Dead deliveries to ${dest.slug}`, ['Event', 'Attempts', 'Last error', 'Died', 'Action'], rows)
        : h('p', {}, 'No dead delivery.'),
      page.next_cursor ? h('p', {}, 'Only the newest 100 are listed; "Retry all dead" retries every one.') : '');
  };
  main.append(body);
  await refresh();
}
