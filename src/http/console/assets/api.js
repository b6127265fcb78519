// The admin API, as the console uses it: same origin, the session cookie, the CSRF token on every write.

let csrfToken = '';
export const session = { role: 'read', expiresAt: '' };

/** An answer other than 2xx: `problem` is the RFC 7807 body when there is one. */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** Reads the session (role, expiry, CSRF token); sends the browser to the login page without one. */
export async function loadSession() {
  const r = await fetch('/console/session', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (r.status === 401) {
    location.assign('/console/login');
    throw new ApiError(401, null);
  }
  const s = await r.json();
  csrfToken = s.csrf_token;
  session.role = s.role;
  session.expiresAt = s.expires_at;
  return session;
}

export const canWrite = () => session.role === 'write';

/** Calls `/admin/v1{path}`; resolves to the parsed JSON (or null), rejects with an ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = csrfToken;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(`/admin/v1${path}`, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) {
    location.assign('/console/login');
    throw new ApiError(401, null);
  }
  const text = await r.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

/** Ends the session and goes to the login page. */
export async function logout() {
  await fetch('/console/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': csrfToken } });
  location.assign('/console/login');
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
