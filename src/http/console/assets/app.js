// The console's entry point: reads the session, then shows the page the URL's fragment names (#/overview, …).

import { loadSession, logout, session } from './api.js';
import { h, put, say } from './ui.js';
import { overview } from './overview.js';
import { destinations, sources, routes } from './catalog.js';
import { events, eventDetail } from './events.js';
import { dead } from './dead.js';
import { tail } from './tail.js';
import { replay } from './replay.js';

const pages = [
  [/^#\/overview$/, overview, 'Overview'],
  [/^#\/destinations$/, destinations, 'Destinations'],
  [/^#\/sources$/, sources, 'Sources'],
  [/^#\/routes$/, routes, 'Routes'],
  [/^#\/events(?:\?(.*))?$/, events, 'Events'],
  [/^#\/events\/([0-9a-f-]{36})$/, eventDetail, 'Event'],
  [/^#\/dead(?:\/([0-9a-f-]{36}))?$/, dead, 'Dead letters'],
  [/^#\/tail$/, tail, 'Live tail'],
  [/^#\/replay$/, replay, 'Bulk replay'],
];

let stop = null;

async function show() {
  if (stop) stop();
  stop = null;
  const hash = location.hash || '#/overview';
  const main = document.getElementById('main');
  const found = pages.find(([re]) => re.test(hash));
  for (const a of document.querySelectorAll('nav a')) {
    if (hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!found) {
    put(main, h('h1', {}, 'Not found'), h('p', {}, 'No console page has this address.'));
    return;
  }
  const [re, render, title] = found;
  document.title = `${title} · hookgate console`;
  say('');
  // What a page leaves running (timers, streams) ends when another page is shown.
  const ctx = { timers: [], stops: [], live: true };
  stop = () => {
    ctx.live = false;
    ctx.timers.forEach(clearInterval);
    ctx.stops.forEach((f) => f());
  };
  put(main);
  try {
    await render(main, ctx, ...hash.match(re).slice(1));
  } catch (e) {
    say(`Could not load this page: ${e.message}`, 'error');
  }
}

async function start() {
  await loadSession();
  document.body.dataset.role = session.role;
  document.getElementById('role').textContent =
    session.role === 'write' ? 'Signed in (read and write)' : 'Signed in (read only)';
  document.getElementById('logout').addEventListener('click', () => logout());
  window.addEventListener('hashchange', show);
  await show();
}

start();
