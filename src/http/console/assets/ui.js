// DOM helpers: elements are built from text nodes only (never parsed from markup), so no stored value can inject HTML.

import { canWrite } from './api.js';

/** h('tag.class#id', {attr: v, onclick: f}, ...children) */
export function h(spec, attrs, ...children) {
  const [, tag, rest] = spec.match(/^([a-z0-9]+)(.*)$/);
  const el = document.createElement(tag);
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === '.') el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A button that writes: disabled (with the reason) in a read-only session. */
export function writeButton(label, onclick, attrs = {}) {
  const b = h('button', { type: 'button', ...attrs, onclick }, label);
  if (!canWrite()) {
    b.disabled = true;
    b.title = 'This session may only read';
  }
  return b;
}

/** A table (in a box that scrolls sideways on narrow screens): headers, then rows of cells. */
export function table(caption, headers, rows, attrs = {}) {
  return h('div.scroll', {}, h(
    'table',
    attrs,
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows.map((r) => (r instanceof Node ? r : h('tr', {}, r.map((c) => h('td', {}, c)))))),
  ));
}

export function time(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return h('time', { datetime: iso }, d.toLocaleString());
}

export function age(iso) {
  if (!iso) return '—';
  const secs = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (secs < 60) return `${Math.round(secs)} s`;
  if (secs < 3600) return `${Math.round(secs / 60)} min`;
  if (secs < 86400) return `${(secs / 3600).toFixed(1)} h`;
  return `${(secs / 86400).toFixed(1)} d`;
}

export function percent(ratio) {
  return ratio === null || ratio === undefined ? '—' : `${(ratio * 100).toFixed(1)} %`;
}

/** The page-wide status line (a polite live region): what an action did, or why it failed. */
export function say(text, kind = 'ok') {
  const el = document.getElementById('status');
  el.className = kind;
  el.textContent = text;
}

/** Shows the API's refusal: beside the field it names when one is named in the problem, else in the status line. */
export function showProblem(form, err) {
  clearProblems(form);
  const detail = (err.problem && err.problem.detail) || err.message;
  const fields = [...form.querySelectorAll('input[name], select[name], textarea[name]')];
  const named = fields.find((f) => new RegExp(`(^|[^a-z_])${f.name}([^a-z_]|$)`).test(detail));
  const target = named || (err.problem && /slug/.test(err.problem.type || '') ? form.elements.slug : null);
  if (target) {
    const slot = document.getElementById(`${target.id}-error`);
    slot.textContent = detail;
    target.setAttribute('aria-invalid', 'true');
    target.focus();
  }
  say(`${(err.problem && err.problem.title) || 'Error'}: ${detail}`, 'error');
}

/** Removes the errors shown beside a form's fields. */
export function clearProblems(form) {
  for (const old of form.querySelectorAll('.field-error')) old.textContent = '';
  for (const old of form.querySelectorAll('[aria-invalid]')) old.removeAttribute('aria-invalid');
}

/** A labelled input with an error slot; `attrs` go to the input. */
export function field(id, label, attrs = {}, hint) {
  const input =
    attrs.type === 'select'
      ? h('select', { id, name: attrs.name || id, 'aria-describedby': `${id}-error` }, attrs.options || [])
      : h('input', { id, name: id, 'aria-describedby': `${id}-error`, ...attrs });
  return h(
    'div.field',
    {},
    h('label', { for: id }, label),
    input,
    hint ? h('small', {}, hint) : null,
    h('span.field-error', { id: `${id}-error`, 'aria-live': 'polite' }),
  );
}

/** A form whose controls are disabled in a read-only session; its submit button reads `submitLabel`. */
export function writeForm(legend, children, onsubmit, submitLabel = legend) {
  const fs = h('fieldset', {}, h('legend', {}, legend), children, h('button', { type: 'submit' }, submitLabel));
  if (!canWrite()) {
    fs.disabled = true;
    fs.title = 'This session may only read';
  }
  return h(
    'form',
    {
      novalidate: true,
      onsubmit: (e) => {
        e.preventDefault();
        onsubmit(e.target);
      },
    },
    fs,
  );
}

/** A secret shown once, with its warning. */
export function secretBox(title, secret) {
  return h(
    'section.secret',
    { 'aria-label': title },
    h('h3', {}, title),
    h('p', {}, 'Shown this once: copy it now. hookgate keeps no way to show it again.'),
    h('output', { 'aria-label': title }, secret),
  );
}

/** A horizontal bar (CSS width, set through the CSSOM: no inline style attribute). */
export function bar(value, max, label) {
  const inner = h('span.bar-fill');
  inner.style.width = `${max > 0 ? Math.min(100, (value / max) * 100) : 0}%`;
  return h('span.bar', { role: 'img', 'aria-label': label }, inner);
}
