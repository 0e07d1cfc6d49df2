// The DFE console's script: sign-in, the views, the actions and the live updates.
//
// Plain JavaScript, served as it is by dfe-api: nothing builds it. The views are HTML that
// dfe-api renders for the signed-in token (/console/fragments/…); every action is a request
// of the REST API (/api/v1/…) that the token could send itself. The token is kept in
// sessionStorage (this tab's session only) and sent as an Authorization header, never in a
// URL or a cookie. Live updates are read from GET /api/v1/events/stream with fetch(), since
// EventSource cannot send an Authorization header.
'use strict';

(() => {
  const TOKEN_KEY = 'dfe.console.token';
  const TAIL_MAX = 500;
  const $ = (selector, root = document) => root.querySelector(selector);
  const enc = encodeURIComponent;

  let token = sessionStorage.getItem(TOKEN_KEY);
  let me = null;
  let current = null;
  let stream = null;
  let loads = 0;
  let refreshTimer = null;
  let lastRefresh = 0;
  let refreshWhenIdle = false;
  let paused = false;
  const tail = [];

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- talking to the API -------------------------------------------------------------

  function headers(extra) {
    return Object.assign({ Authorization: 'Bearer ' + token }, extra || {});
  }

  async function problemDetail(res) {
    const type = res.headers.get('content-type') || '';
    if (type.includes('json')) {
      try {
        const p = await res.json();
        if (p.detail) return p.detail;
        if (p.title) return p.title;
      } catch (_) { /* not JSON after all */ }
    }
    return `${res.status} ${res.statusText}`.trim();
  }

  function unauthorizedMessage(detail) {
    if (/expired/i.test(detail || '')) {
      return `Your token has expired (${detail}). Sign in with a new one.`;
    }
    return `The API does not accept this token (${detail || 'not accepted'}). ` +
      'Check that it was pasted whole, or ask for a new one (dfe token mints one).';
  }

  // A request of the REST API with the token; errors become ApiError with the problem's words.
  async function call(method, path, body) {
    const init = { method, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, `the API did not answer (${e.message}); is dfe-api running?`);
    }
    if (!res.ok) {
      const detail = await problemDetail(res);
      if (res.status === 401) signOut(unauthorizedMessage(detail));
      throw new ApiError(res.status, detail);
    }
    return res;
  }

  // ---- sign-in and sign-out -----------------------------------------------------------

  function showSignIn(message) {
    $('#nav').hidden = true;
    $('#session').hidden = true;
    $('#view').replaceChildren();
    $('#signin').hidden = false;
    $('#signin-error').textContent = message || '';
    document.title = 'Sign in · DFE console';
    $('#token').focus();
  }

  async function signIn(candidate) {
    const error = $('#signin-error');
    error.textContent = '';
    let res;
    try {
      res = await fetch('/api/v1/whoami', { headers: { Authorization: 'Bearer ' + candidate } });
    } catch (e) {
      error.textContent = `Sign-in failed: the API did not answer (${e.message}).`;
      return;
    }
    if (!res.ok) {
      const detail = await problemDetail(res);
      if (res.status === 401) error.textContent = 'Sign-in failed: ' + unauthorizedMessage(detail);
      else if (res.status === 403) error.textContent = `Sign-in failed: this token may not read (${detail}); the console needs the read scope.`;
      else error.textContent = `Sign-in failed: ${detail}.`;
      return;
    }
    token = candidate;
    me = await res.json();
    sessionStorage.setItem(TOKEN_KEY, token);
    $('#token').value = '';
    startSession();
  }

  function signOut(message) {
    token = null;
    me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (stream) stream.abort();
    stream = null;
    tail.length = 0;
    showSignIn(message);
  }

  function describe(who) {
    const parts = [who['client-id'], 'scopes: ' + who.scopes.join(', ')];
    if (who.owners) parts.push('owners: ' + who.owners.join(', '));
    if (who['expires-at']) parts.push('expires ' + formatTime(new Date(who['expires-at'])));
    return parts.join(' · ');
  }

  function startSession() {
    $('#signin').hidden = true;
    $('#nav').hidden = false;
    $('#session').hidden = false;
    $('#who').textContent = describe(me);
    render(true);
    openStream();
  }

  async function resume() {
    // A reload keeps the tab's session: ask again what the token may do.
    try {
      const res = await call('GET', '/api/v1/whoami');
      me = await res.json();
      startSession();
    } catch (e) {
      if (e.status !== 401) showSignIn(`Could not reach the API: ${e.message}`);
    }
  }

  // ---- views --------------------------------------------------------------------------

  function route() {
    const hash = location.hash;
    if (hash && !hash.startsWith('#/')) return null; // an in-page anchor (the skip link)
    const [path, qs] = hash.slice(1).split('?');
    const parts = (path || '/').split('/').filter(Boolean);
    const query = qs ? '?' + qs : '';
    if (parts.length === 0) return { view: 'overview', fragment: '/console/fragments/overview' };
    if (parts[0] === 'instances' && parts.length === 1) {
      return { view: 'instances', fragment: '/console/fragments/instances' + query };
    }
    if (parts[0] === 'instances' && parts.length === 2) {
      return { view: 'instances', fragment: '/console/fragments/instances/' + enc(decodeURIComponent(parts[1])) };
    }
    if (parts[0] === 'jobs' && parts.length === 1) return { view: 'jobs', fragment: '/console/fragments/jobs' + query };
    if (parts[0] === 'hosts' && parts.length === 1) return { view: 'hosts', fragment: '/console/fragments/hosts' };
    if (parts[0] === 'events' && parts.length === 1) return { view: 'events' };
    return { view: 'missing' };
  }

  function render(moveFocus) {
    if (!token || !me) return;
    const r = route();
    if (!r) return;
    current = r;
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.dataset.nav === r.view) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    if (r.view === 'events') renderEvents();
    else if (r.view === 'missing') renderMissing();
    else load(r, false);
    if (moveFocus) $('#main').focus({ preventScroll: true });
  }

  function renderMissing() {
    const view = $('#view');
    view.replaceChildren();
    const h = el('h1', 'No such page');
    const p = el('p', 'The console has no page at this address. ');
    const a = el('a', 'Go to the overview');
    a.href = '#/';
    p.append(a);
    view.append(h, p);
    document.title = 'No such page · DFE console';
  }

  // A selector that finds the focused control again after its view is rendered anew.
  function focusKey() {
    const a = document.activeElement;
    if (!a || !$('#view').contains(a)) return null;
    if (a.id) return '#' + CSS.escape(a.id);
    const attrs = ['data-action', 'data-instance', 'data-job', 'data-host', 'data-snapshot', 'href'];
    const sel = attrs.filter((n) => a.hasAttribute(n)).map((n) => `[${n}="${CSS.escape(a.getAttribute(n))}"]`).join('');
    return sel ? a.tagName.toLowerCase() + sel : null;
  }

  async function load(r, quiet) {
    const view = $('#view');
    if (quiet) {
      const a = document.activeElement;
      // Never swap a form from under someone typing in it: refresh once they leave it.
      if (a && view.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)) {
        refreshWhenIdle = true;
        return;
      }
    }
    const seq = ++loads;
    if (!quiet) {
      view.setAttribute('aria-busy', 'true');
      view.replaceChildren(el('p', 'Loading…', 'loading'));
      view.firstChild.setAttribute('role', 'status');
    }
    try {
      const res = await call('GET', r.fragment);
      const html = await res.text();
      if (seq !== loads || r !== current) return; // a later load, or another view, took over
      const key = quiet ? focusKey() : null;
      const scroll = window.scrollY;
      view.innerHTML = html; // rendered by dfe-api with every value escaped
      enhance(view);
      const fragment = $('.fragment', view);
      document.title = (fragment && fragment.dataset.title ? fragment.dataset.title + ' · ' : '') + 'DFE console';
      if (quiet) {
        window.scrollTo(0, scroll);
        const again = key && $(key, view);
        if (again) again.focus({ preventScroll: true });
      }
    } catch (e) {
      if (seq !== loads || e.status === 401) return;
      if (quiet) {
        toast(`Could not refresh this page: ${e.message}`, 'error');
        return;
      }
      const box = el('div', '', 'problem');
      box.setAttribute('role', 'alert');
      box.append(el('h1', e.status === 404 ? 'Not found' : 'Could not load this page'), el('p', capitalize(e.message) + '.'));
      const retry = el('button', 'Try again');
      retry.type = 'button';
      retry.addEventListener('click', () => load(r, false));
      box.append(retry);
      view.replaceChildren(box);
    } finally {
      if (seq === loads) view.removeAttribute('aria-busy');
    }
  }

  function scheduleRefresh() {
    if (refreshTimer || !current || !current.fragment) return;
    // At most one refresh a second however many events arrive, and always one after the last.
    const wait = Math.max(0, lastRefresh + 1000 - Date.now());
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      lastRefresh = Date.now();
      if (current && current.fragment) load(current, true);
    }, wait);
  }

  // ---- presentation helpers -----------------------------------------------------------

  function el(tag, text, className) {
    const e = document.createElement(tag);
    if (text) e.textContent = text;
    if (className) e.className = className;
    return e;
  }

  function capitalize(s) {
    return s ? s[0].toUpperCase() + s.slice(1) : s;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  const clockFormat = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });
  const exactFormat = new Intl.DateTimeFormat(undefined, {
    year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
    fractionalSecondDigits: 3, timeZoneName: 'short',
  });

  function formatTime(d) {
    return timeFormat.format(d);
  }

  function ago(d) {
    const s = Math.max(0, Math.round((Date.now() - d.getTime()) / 1000));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }

  function timeElement(iso, style) {
    const t = document.createElement('time');
    t.dateTime = iso;
    if (style) t.dataset[style] = '';
    showTime(t);
    return t;
  }

  // A time in the browser's zone; on hover the exact value, local and as the API gave it.
  function showTime(t) {
    const d = new Date(t.dateTime);
    if (Number.isNaN(d.getTime())) return;
    if ('age' in t.dataset) t.textContent = ago(d);
    else if ('clock' in t.dataset) t.textContent = clockFormat.format(d);
    else t.textContent = formatTime(d);
    t.title = `${exactFormat.format(d)} (${t.dateTime})`;
  }

  function localInputValue(d) {
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function enhance(root) {
    for (const t of root.querySelectorAll('time[datetime]')) showTime(t);
    for (const f of root.querySelectorAll('form[data-expiry]')) {
      if (f.dataset.current) f.elements['expires-at'].value = localInputValue(new Date(f.dataset.current));
    }
  }

  function toast(message, kind) {
    const t = el('div', '', 'toast' + (kind === 'error' ? ' error' : ''));
    t.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    const text = el('span', message);
    const close = el('button', '×', 'close');
    close.type = 'button';
    close.setAttribute('aria-label', 'Dismiss');
    close.addEventListener('click', () => t.remove());
    t.append(text, close);
    $('#toasts').append(t);
    setTimeout(() => t.remove(), kind === 'error' ? 20000 : 8000);
  }

  // ---- actions: each a request of the REST API ----------------------------------------

  const ACTIONS = {
    export: (d) => ({
      verb: `export ${d.instance}`, method: 'POST', path: '/api/v1/ops/export', body: { 'instance-id': d.instance },
      done: (j) => `Export of ${d.instance} queued (job ${j['job-id']}).`,
    }),
    suspend: (d) => ({
      verb: `suspend ${d.instance}`, method: 'POST', path: '/api/v1/ops/suspend', body: { 'instance-id': d.instance },
      done: (j) => `Suspension of ${d.instance} queued (job ${j['job-id']}).`,
    }),
    resume: (d) => ({
      verb: `resume ${d.instance}`, method: 'POST', path: '/api/v1/ops/resume', body: { 'instance-id': d.instance },
      done: (j) => `Resumption of ${d.instance} queued (job ${j['job-id']}).`,
    }),
    deprovision: (d) => ({
      verb: `deprovision ${d.instance}`, method: 'POST', path: '/api/v1/ops/deprovision',
      body: { 'instance-id': d.instance },
      done: (j) => `Deprovision of ${d.instance} queued (job ${j['job-id']}).`,
    }),
    cancel: (d) => ({
      verb: `cancel job ${d.job}`, method: 'POST', path: `/api/v1/ops/jobs/${enc(d.job)}/cancel`,
      done: () => `Job ${d.job} cancelled.`,
    }),
    cordon: (d) => ({
      verb: `cordon ${d.host}`, method: 'POST', path: `/api/v1/hosts/${enc(d.host)}/cordon`,
      done: () => `Host ${d.host} cordoned: it takes no new instances.`,
    }),
    uncordon: (d) => ({
      verb: `uncordon ${d.host}`, method: 'POST', path: `/api/v1/hosts/${enc(d.host)}/uncordon`,
      done: () => `Host ${d.host} uncordoned: it takes new instances again.`,
    }),
    'clear-expiry': (d) => ({
      verb: `clear the expiry of ${d.instance}`, method: 'PATCH', path: `/api/v1/instances/${enc(d.instance)}`,
      body: { 'expires-at': null }, done: () => `${d.instance} no longer expires.`,
    }),
  };

  async function act(button, req) {
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    try {
      const res = await call(req.method, req.path, req.body);
      const answer = await res.json().catch(() => ({}));
      toast(req.done(answer));
      if (current && current.fragment) load(current, true);
    } catch (e) {
      if (e.status !== 401) toast(`Could not ${req.verb}: ${e.message}.`, 'error');
    } finally {
      button.disabled = false;
      button.removeAttribute('aria-busy');
    }
  }

  function confirmDeprovision(button) {
    const id = button.dataset.instance;
    const dialog = $('#confirm');
    const input = $('#confirm-input');
    const ok = $('#confirm-ok');
    $('#confirm-title').textContent = `Deprovision ${id}?`;
    $('#confirm-text').textContent =
      `This removes the container, the storage volume and the database of ${id}, for good. ` +
      'Export it first to keep its data.';
    $('#confirm-label').textContent = `Type ${id} to confirm`;
    input.value = '';
    ok.textContent = `Deprovision ${id}`;
    ok.disabled = true;
    input.oninput = () => { ok.disabled = input.value.trim() !== id; };
    $('#confirm-form').onsubmit = (e) => {
      e.preventDefault();
      if (input.value.trim() !== id) return;
      dialog.close();
      act(button, ACTIONS.deprovision(button.dataset));
    };
    $('#confirm-cancel').onclick = () => dialog.close();
    dialog.showModal();
    input.focus();
  }

  async function download(button) {
    const file = button.dataset.file;
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    try {
      // A link cannot carry the Authorization header: fetch the archive, then hand it over.
      const res = await call('GET', `/api/v1/snapshots/${enc(button.dataset.snapshot)}/download`);
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = file;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      toast(`Downloaded ${file}.`);
    } catch (e) {
      if (e.status !== 401) toast(`Could not download ${file}: ${e.message}.`, 'error');
    } finally {
      button.disabled = false;
      button.removeAttribute('aria-busy');
    }
  }

  function setExpiry(form) {
    const value = form.elements['expires-at'].value;
    const at = new Date(value);
    if (!value || Number.isNaN(at.getTime())) {
      toast('Give the date and time the instance expires at.', 'error');
      return;
    }
    const id = form.dataset.expiry;
    const iso = at.toISOString().replace(/\.\d{3}Z$/, 'Z');
    act(form.querySelector('button[type="submit"]'), {
      verb: `set the expiry of ${id}`, method: 'PATCH', path: `/api/v1/instances/${enc(id)}`,
      body: { 'expires-at': iso }, done: () => `${id} expires ${formatTime(at)}.`,
    });
  }

  // ---- the live event tail ------------------------------------------------------------

  function summary(ev) {
    if (ev.error) return `${ev.error.code}: ${ev.error.message}`;
    const r = ev.result || {};
    const said = [];
    for (const k of ['resource-uri', 'snapshot-id', 'host-id', 'container', 'database']) {
      if (typeof r[k] === 'string') said.push(`${k} ${r[k]}`);
    }
    if (ev['host-id']) said.push(`host ${ev['host-id']}`);
    return said.join(', ');
  }

  function eventRow(ev) {
    const tr = document.createElement('tr');
    const name = ev.event || '';
    tr.className = /\.failed$|rejected|unreachable/.test(name) ? 'ev-fail' : '';
    const when = el('td');
    if (ev['occurred-at']) when.append(timeElement(ev['occurred-at'], 'clock'));
    const what = el('td');
    what.append(el('code', name));
    const inst = el('td');
    if (ev['instance-id']) {
      const a = el('a', ev['instance-id'], 'iid');
      a.href = '#/instances/' + enc(ev['instance-id']);
      inst.append(a);
    }
    const owner = el('td', ev['owner-id'] === undefined || ev['owner-id'] === null ? '' : String(ev['owner-id']));
    const job = el('td');
    if (ev['job-id']) {
      const c = el('code', String(ev['job-id']).slice(0, 8));
      c.title = ev['job-id'];
      job.append(c);
    }
    tr.append(when, what, inst, owner, job, el('td', summary(ev)));
    return tr;
  }

  function visibleRows() {
    const filter = ($('#ev-filter') ? $('#ev-filter').value : '').trim().toLowerCase();
    return tail.filter((ev) => !filter || JSON.stringify([ev.event, ev['instance-id'], ev['owner-id'], ev['job-id']])
      .toLowerCase().includes(filter));
  }

  function fillTail() {
    const rows = $('#ev-rows');
    if (!rows) return;
    const shown = visibleRows();
    rows.replaceChildren(...shown.slice(0, 200).map(eventRow));
    $('#ev-empty').hidden = shown.length > 0;
    $('#ev-table').hidden = shown.length === 0;
  }

  function renderEvents() {
    const view = $('#view');
    const frag = el('div', '', 'fragment');
    frag.dataset.title = 'Events';
    const h = el('h1', 'Live events');
    const hint = el('p', 'Events of dfe.events that this token may see, newest first, as the workers publish them ' +
      '(kept while this tab stays signed in).', 'hint');
    const controls = el('div', '', 'filters');
    const label = el('label', 'Filter ');
    const input = el('input');
    input.id = 'ev-filter';
    input.type = 'search';
    input.placeholder = 'event, instance, owner or job';
    input.addEventListener('input', fillTail);
    label.append(input);
    const pause = el('button', paused ? 'Resume' : 'Pause');
    pause.type = 'button';
    pause.id = 'ev-pause';
    pause.setAttribute('aria-pressed', String(paused));
    pause.addEventListener('click', () => {
      paused = !paused;
      pause.textContent = paused ? 'Resume' : 'Pause';
      pause.setAttribute('aria-pressed', String(paused));
      if (!paused) fillTail();
    });
    const clear = el('button', 'Clear', 'secondary');
    clear.type = 'button';
    clear.addEventListener('click', () => { tail.length = 0; fillTail(); });
    controls.append(label, pause, clear);
    const empty = el('p', 'Waiting for events… they appear here as they happen.', 'empty');
    empty.id = 'ev-empty';
    const wrap = el('div', '', 'table-wrap');
    const table = el('table');
    table.id = 'ev-table';
    const head = el('thead');
    const tr = el('tr');
    for (const c of ['Time', 'Event', 'Instance', 'Owner', 'Job', 'Details']) {
      const th = el('th', c);
      th.scope = 'col';
      tr.append(th);
    }
    head.append(tr);
    const body = el('tbody');
    body.id = 'ev-rows';
    table.append(head, body);
    wrap.append(table);
    frag.append(h, hint, controls, empty, wrap);
    view.replaceChildren(frag);
    document.title = 'Events · DFE console';
    fillTail();
  }

  function onEvent(ev) {
    tail.unshift(ev);
    if (tail.length > TAIL_MAX) tail.pop();
    if (!current) return;
    if (current.view === 'events') {
      if (!paused) fillTail();
      return;
    }
    const fragment = $('#view .fragment');
    const live = fragment ? fragment.dataset.live : null;
    if (!live) return;
    if (live.startsWith('instance:') && live !== 'instance:' + ev['instance-id']) return;
    scheduleRefresh();
  }

  function setLive(state) {
    const live = $('#live');
    live.dataset.state = state;
    live.textContent = { live: '● Live', connecting: 'Connecting…', reconnecting: 'Live updates paused, reconnecting…' }[state];
  }

  // Reads the event stream for as long as the session lasts, reconnecting with a backoff.
  async function openStream() {
    if (stream) stream.abort();
    const ctl = new AbortController();
    stream = ctl;
    let delay = 1000;
    let first = true;
    const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
    while (!ctl.signal.aborted && token) {
      setLive(first ? 'connecting' : 'reconnecting');
      try {
        const res = await fetch('/api/v1/events/stream?pattern=' + enc('dfe.#'), {
          headers: headers({ Accept: 'text/event-stream' }), signal: ctl.signal, cache: 'no-store',
        });
        if (res.status === 401) {
          signOut(unauthorizedMessage(await problemDetail(res)));
          return;
        }
        if (!res.ok) throw new Error(await problemDetail(res));
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r/g, '');
          let cut;
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let name = 'message';
            const data = [];
            for (const line of block.split('\n')) {
              if (line.startsWith('event:')) name = line.slice(6).trim();
              else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
            }
            if (name === 'ready') {
              setLive('live');
              delay = 1000;
              // Back after a break: what happened meanwhile is not replayed, so look again.
              if (!first) scheduleRefresh();
              first = false;
            } else if (name === 'expired') {
              signOut('Your token has expired. Sign in with a new one.');
              return;
            } else if (data.length) {
              try { onEvent(JSON.parse(data.join('\n'))); } catch (_) { /* not an event */ }
            }
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      if (ctl.signal.aborted || !token) return;
      first = false;
      setLive('reconnecting');
      await sleep(delay);
      delay = Math.min(delay * 2, 30000);
    }
  }

  // ---- wiring -------------------------------------------------------------------------

  document.addEventListener('click', (e) => {
    const skip = e.target.closest('a[data-skip]');
    if (skip) {
      e.preventDefault();
      $('#main').focus();
      return;
    }
    const button = e.target.closest('button[data-action]');
    if (!button || button.disabled) return;
    const action = button.dataset.action;
    if (action === 'deprovision') confirmDeprovision(button);
    else if (action === 'download') download(button);
    else if (ACTIONS[action]) act(button, ACTIONS[action](button.dataset));
  });

  document.addEventListener('submit', (e) => {
    const form = e.target;
    if (form.id === 'signin-form') {
      e.preventDefault();
      const candidate = $('#token').value.trim();
      if (candidate) signIn(candidate);
    } else if (form.matches('form[data-filter]')) {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (String(v).trim()) q.set(k, String(v).trim());
      const hash = '#/' + form.dataset.filter + (q.toString() ? '?' + q : '');
      if (location.hash === hash) render(false);
      else location.hash = hash;
    } else if (form.matches('form[data-expiry]')) {
      e.preventDefault();
      setExpiry(form);
    }
  });

  document.addEventListener('focusout', () => {
    // Refresh a view held back while someone typed, once they have left its controls.
    setTimeout(() => {
      const a = document.activeElement;
      if (refreshWhenIdle && !(a && $('#view').contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName))) {
        refreshWhenIdle = false;
        scheduleRefresh();
      }
    }, 0);
  });

  window.addEventListener('hashchange', () => render(true));

  // Ages go on counting between refreshes (in this page only: nothing is asked of the API).
  setInterval(() => {
    for (const t of document.querySelectorAll('#view time[data-age]')) showTime(t);
  }, 30000);

  document.addEventListener('DOMContentLoaded', () => {
    $('#sign-out').addEventListener('click', () => signOut('Signed out.'));
    if (token) resume();
    else showSignIn('');
  });
})();
