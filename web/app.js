/*
 * app.js - the hogrec dashboard: plain JS, SVG charts, no library.
 *
 * Overview polls GET /v1/stats/history?since=<last sample> once a second and
 * keeps the samples in memory (at most the server's ring); the charts draw
 * the selected range. Schedule reads and writes /v1/admin/schedule with the
 * admin token typed once and kept in sessionStorage (this tab only).
 * Explorer reads /v1/recommend, /v1/user, /v1/similar and /v1/predict;
 * Cluster reads /v1/cluster. No inline script or style (the server's CSP).
 */
'use strict';

const SVGNS = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);
const state = { samples: [], markers: new Map(), last: 0, groups: [], adminOff: false };

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

function sv(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem('hogrec-token');
  if (token && path.startsWith('/v1/admin/')) headers['Authorization'] = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let json = null;
  try { json = await r.json(); } catch (e) { json = null; }
  return { status: r.status, json };
}

/* ---- pages ---- */

const PAGES = ['overview', 'schedule', 'explorer', 'cluster'];

function show() {
  const page = (location.hash || '#overview').slice(1);
  const cur = PAGES.includes(page) ? page : 'overview';
  for (const p of PAGES) {
    $('page-' + p).classList.toggle('hidden', p !== cur);
    $('nav-' + p).classList.toggle('active', p === cur);
  }
  if (cur === 'schedule') loadSchedule();
  if (cur === 'cluster') loadCluster();
  if (cur === 'overview') draw();
}

/* ---- overview ---- */

const CHARTS = [
  { id: 'loss', title: 'Progressive loss and AUC (window)', series: [['loss', 'loss'], ['auc', 'AUC']] },
  { id: 'calibration', title: 'Calibration: mean prediction vs observed positive rate',
    series: [['mean_prediction', 'mean prediction'], ['mean_label', 'positive rate']] },
  { id: 'events', title: 'Events per second',
    series: [['accepted_ps', 'accepted'], ['trained_ps', 'trained'], ['rejected_ps', 'rejected'], ['refused_ps', 'refused']] },
  { id: 'queue', title: 'Queue depth', series: [['queue_depth', 'events waiting']] },
  { id: 'freshness', title: 'Freshness (ms, event queued to applied)',
    series: [['freshness_p50_us', 'p50', 1e-3], ['freshness_p99_us', 'p99', 1e-3]] },
  { id: 'lr', title: 'Effective learning rate per group', series: 'lr' },
  { id: 'updates', title: 'Updates per second', series: [['updates_ps', 'updates/s']] },
  { id: 'model', title: 'Model size (MB)', series: [['model_bytes', 'bytes', 1 / 1048576]] },
];

function seriesOf(c) {
  if (c.series !== 'lr') return c.series.map(([k, name, scale]) => ({ name, get: (s) => s[k] * (scale || 1) }));
  return state.groups.map((g) => ({ name: g, get: (s) => (s.lr ? s.lr[g] : null) }));
}

function buildCharts() {
  const box = $('charts');
  for (const c of CHARTS) {
    const div = el('div', { class: 'chart', id: 'chart-' + c.id });
    div.appendChild(el('h3', {}, c.title));
    div.appendChild(el('div', { class: 'legend' }));
    div.appendChild(sv('svg', { viewBox: '0 0 420 160', preserveAspectRatio: 'none' }));
    box.appendChild(div);
  }
}

function fmt(v) {
  if (v === null || !isFinite(v)) return '-';
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 1e5)) return v.toExponential(2);
  return (Math.round(v * 1000) / 1000).toString();
}

function drawChart(c, samples, t0, t1) {
  const div = $('chart-' + c.id);
  const svg = div.querySelector('svg');
  const legend = div.querySelector('.legend');
  const W = 420, H = 160, L = 46, B = 14, T = 12;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  legend.textContent = '';
  const ss = seriesOf(c);
  let lo = Infinity, hi = -Infinity;
  for (const s of ss)
    for (const p of samples) {
      const v = s.get(p);
      if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
  if (!isFinite(lo)) { lo = 0; hi = 1; }
  if (hi === lo) { hi = lo + (lo === 0 ? 1 : Math.abs(lo) * 0.1); }
  const x = (t) => L + (W - L - 4) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  svg.appendChild(sv('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }));
  svg.appendChild(sv('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  svg.appendChild(sv('text', { class: 'tick', x: 2, y: T + 4 }, fmt(hi)));
  svg.appendChild(sv('text', { class: 'tick', x: 2, y: H - B }, fmt(lo)));
  svg.appendChild(sv('text', { class: 'tick', x: L, y: H - 2 }, Math.round((t1 - t0) / 1000) + ' s ago'));
  svg.appendChild(sv('text', { class: 'tick', x: W - 24, y: H - 2 }, 'now'));
  ss.forEach((s, i) => {
    let pts = [];
    for (const p of samples) {
      const v = s.get(p);
      if (v !== null && isFinite(v)) pts.push(x(p.t_ms).toFixed(1) + ',' + y(v).toFixed(1));
    }
    svg.appendChild(sv('polyline', { class: 'series c' + (i % 5), points: pts.join(' '), 'data-n': pts.length }));
    const last = samples.length ? s.get(samples[samples.length - 1]) : null;
    legend.appendChild(el('span', { class: 'c' + (i % 5) }, '\u25a0 ' + s.name + ' ' + fmt(last)));
  });
  for (const [version, t] of state.markers) {
    if (t < t0 || t > t1) continue;
    svg.appendChild(sv('line', { class: 'marker', x1: x(t), y1: T, x2: x(t), y2: H - B, 'data-version': version }));
    svg.appendChild(sv('text', { class: 'marker-label', x: x(t) + 2, y: T - 2 }, 'v' + version));
  }
}

function draw() {
  if ($('page-overview').classList.contains('hidden')) return;
  const range = Number($('range').value) * 1000;
  const t1 = state.samples.length ? state.samples[state.samples.length - 1].t_ms : Date.now();
  const first = state.samples.length ? state.samples[0].t_ms : t1;
  const t0 = Math.min(t1 - 10000, Math.max(t1 - range, first)); /* the data held, 10 s at least */
  const samples = state.samples.filter((s) => s.t_ms >= t0);
  for (const c of CHARTS) drawChart(c, samples, t0, t1);
}

async function poll() {
  try {
    const r = await api('GET', '/v1/stats/history?since=' + state.last);
    if (r.status === 200 && r.json) {
      state.groups = r.json.groups;
      for (const s of r.json.samples) state.samples.push(s);
      if (state.samples.length > r.json.capacity) state.samples.splice(0, state.samples.length - r.json.capacity);
      if (state.samples.length) state.last = state.samples[state.samples.length - 1].t_ms;
      for (const m of r.json.markers) state.markers.set(m.version, m.t_ms);
      $('status').textContent = 'live: ' + state.samples.length + ' samples';
      draw();
    } else {
      $('status').textContent = 'stats history: HTTP ' + r.status;
    }
  } catch (e) {
    $('status').textContent = 'server unreachable';
  }
  if ((location.hash || '').slice(1) === 'cluster') loadCluster(); /* lag moves: refresh it too */
  setTimeout(poll, 1000);
}

/* ---- schedule ---- */

const FIELDS = [
  ['optimizer', 'select', ['sgd', 'adagrad', 'ftrl', 'adam']],
  ['type', 'select', ['constant', 'invpow', 'exponential', 'step', 'cosine']],
  ['eta0'], ['t0', 'number', null, 'invpow'], ['power', 'number', null, 'invpow'],
  ['gamma', 'number', null, 'exponential step'], ['step', 'number', null, 'exponential step'],
  ['period', 'number', null, 'cosine'], ['t_mult', 'number', null, 'cosine'],
  ['warmup'], ['floor'],
  ['multipliers.global'], ['multipliers.bias'], ['multipliers.user'], ['multipliers.item'], ['multipliers.context'],
  ['staleness.enabled', 'checkbox'], ['staleness.tau'], ['ftrl.beta'], ['ftrl.l1'],
  ['adam.beta1'], ['adam.beta2'], ['adam.epsilon'],
];

function getPath(o, path) {
  return path.split('.').reduce((a, k) => (a && typeof a === 'object' ? a[k] : undefined), o);
}

function setPath(o, path, v) {
  const ks = path.split('.');
  let cur = o;
  for (let i = 0; i < ks.length - 1; i++) cur = cur[ks[i]] = cur[ks[i]] || {};
  cur[ks[ks.length - 1]] = v;
}

function buildForm() {
  const f = $('sched-form');
  for (const [name, kind, options] of FIELDS) {
    f.appendChild(el('label', { for: 'f-' + name }, name));
    let input;
    if (kind === 'select') {
      input = el('select', { id: 'f-' + name, name });
      for (const o of options) input.appendChild(el('option', { value: o }, o));
    } else if (kind === 'checkbox') {
      input = el('input', { id: 'f-' + name, name, type: 'checkbox' });
    } else {
      input = el('input', { id: 'f-' + name, name, type: 'text', inputmode: 'decimal' });
    }
    f.appendChild(input);
    f.appendChild(el('span', { class: 'field-error', id: 'err-' + name }));
  }
  $('f-type').addEventListener('change', typeFields);
}

function typeFields() {
  const t = $('f-type').value;
  for (const [name, , , types] of FIELDS) {
    if (!types) continue;
    const on = types.split(' ').includes(t);
    for (const id of ['f-' + name, 'err-' + name]) $(id).classList.toggle('hidden', !on);
    $('f-' + name).previousSibling.classList.toggle('hidden', !on);
  }
}

function fillForm(s) {
  $('sched-version').textContent = s.version ? '(version ' + s.version + ')' : '';
  for (const [name, kind] of FIELDS) {
    const v = getPath(s, name);
    if (kind === 'checkbox') $('f-' + name).checked = !!v;
    else $('f-' + name).value = v === undefined || v === null ? '' : String(v);
  }
  typeFields();
}

function formSchedule() {
  const out = {};
  const t = $('f-type').value;
  for (const [name, kind, , types] of FIELDS) {
    if (types && !types.split(' ').includes(t)) continue;
    const input = $('f-' + name);
    if (kind === 'checkbox') setPath(out, name, input.checked);
    else if (kind === 'select') setPath(out, name, input.value);
    else if (input.value.trim() !== '') {
      const n = Number(input.value);
      setPath(out, name, input.value.trim() !== '' && isFinite(n) ? n : input.value);
    }
  }
  return out;
}

function clearErrors() {
  for (const [name] of FIELDS) $('err-' + name).textContent = '';
  $('sched-result').textContent = '';
  $('sched-result').className = '';
}

/* The API names the field first in its message ("eta0: must be > 0"). */
function showError(msg) {
  const m = /^([a-z_0-9.]+)[: ]/.exec(msg || '');
  let field = m ? m[1] : null;
  while (field && !$('err-' + field) && field.includes('.')) field = field.slice(0, field.lastIndexOf('.'));
  if (field && $('err-' + field)) $('err-' + field).textContent = msg;
  $('sched-result').textContent = 'not applied: ' + msg;
  $('sched-result').className = 'err';
}

async function putSchedule(s) {
  clearErrors();
  const r = await api('PUT', '/v1/admin/schedule', s);
  if (r.status === 200) {
    fillForm(r.json);
    $('sched-result').textContent = 'applied: version ' + r.json.version;
    $('sched-result').className = 'ok';
    loadHistory();
  } else if (r.status === 401) {
    $('sched-result').textContent = 'the admin token is wrong or missing';
    $('sched-result').className = 'err';
    $('token-box').classList.remove('hidden');
  } else {
    showError(r.json && r.json.error ? r.json.error.message : 'HTTP ' + r.status);
  }
}

function readOnly(why) {
  state.adminOff = true;
  $('admin-note').textContent = why;
  $('admin-note').classList.remove('hidden');
  $('sched-apply').classList.add('hidden');
  $('token-box').classList.add('hidden');
  for (const i of $('sched-form').querySelectorAll('input, select')) i.disabled = true;
}

async function loadSchedule() {
  const r = await api('GET', '/v1/admin/schedule');
  if (r.status === 200) {
    fillForm(r.json);
    $('token-box').classList.add('hidden');
    loadHistory();
    return;
  }
  const stats = await api('GET', '/v1/stats');
  if (stats.json && stats.json.schedule) fillForm(stats.json.schedule);
  if (r.status === 404) {
    readOnly('Editing is off: this server runs with the admin API disabled (no admin_token is configured). ' +
             'The schedule below is read from /v1/stats.');
  } else {
    $('token-box').classList.remove('hidden');
  }
}

async function loadHistory() {
  const r = await api('GET', '/v1/admin/schedule/history');
  const tb = $('history').querySelector('tbody');
  tb.textContent = '';
  if (r.status !== 200) return;
  const h = r.json.history;
  const current = h.length ? h[h.length - 1].version : 0;
  for (const e of h.slice().reverse()) {
    const tr = el('tr', { 'data-version': e.version });
    tr.appendChild(el('td', {}, String(e.version)));
    tr.appendChild(el('td', {}, e.time ? new Date(e.time * 1000).toLocaleTimeString() : '-'));
    tr.appendChild(el('td', {}, String(e.at_update)));
    tr.appendChild(el('td', {}, fmt(e.loss_before)));
    tr.appendChild(el('td', {}, fmt(e.loss_after)));
    const s = Object.assign({}, e.schedule);
    delete s.version;
    tr.appendChild(el('td', { class: 'sched' }, JSON.stringify(s)));
    const td = el('td');
    if (e.version !== current && !state.adminOff) {
      const b = el('button', { type: 'button', class: 'rollback', 'data-version': e.version }, 'roll back to v' + e.version);
      b.addEventListener('click', () => putSchedule(s));
      td.appendChild(b);
    } else if (e.version === current) {
      td.textContent = 'current';
    }
    tr.appendChild(td);
    tb.appendChild(tr);
  }
}

/* ---- explorer ---- */

function rows(tbody, list) {
  tbody.textContent = '';
  list.forEach((it, i) => {
    const tr = el('tr', { 'data-item': it.item });
    tr.appendChild(el('td', {}, String(i + 1)));
    tr.appendChild(el('td', { class: 'item' }, it.item));
    tr.appendChild(el('td', { class: 'score' }, String(it.score)));
    tbody.appendChild(tr);
  });
}

async function showUser(ev) {
  ev.preventDefault();
  const u = encodeURIComponent($('user-id').value);
  const k = encodeURIComponent($('user-k').value);
  const [rec, info] = await Promise.all([api('GET', '/v1/recommend?user=' + u + '&k=' + k),
                                         api('GET', '/v1/user?user=' + u)]);
  if (rec.status !== 200) {
    $('user-info').textContent = rec.json && rec.json.error ? rec.json.error.message : 'HTTP ' + rec.status;
    rows($('topk').querySelector('tbody'), []);
    return;
  }
  rows($('topk').querySelector('tbody'), rec.json.items);
  const i = info.json || {};
  $('user-info').textContent = (i.known ? 'known' : 'unknown') + ', ' + (i.cold ? 'cold (popular fallback)' : 'warm') +
    (rec.json.fallback ? '; ranked by popularity' : '');
  $('seen').textContent = (i.seen || []).join(', ') || '-';
}

async function showItem(ev) {
  ev.preventDefault();
  const r = await api('GET', '/v1/similar?item=' + encodeURIComponent($('item-id').value) + '&k=10');
  rows($('similar').querySelector('tbody'), r.status === 200 ? r.json.items : []);
}

async function showPair(ev) {
  ev.preventDefault();
  const r = await api('GET', '/v1/predict?user=' + encodeURIComponent($('pair-user').value) +
                      '&item=' + encodeURIComponent($('pair-item').value));
  $('pair-score').textContent = r.status === 200 ? 'score ' + r.json.score
    : (r.json && r.json.error ? r.json.error.message : 'HTTP ' + r.status);
}

/* ---- cluster ---- */

async function loadCluster() {
  const r = await api('GET', '/v1/cluster');
  const box = $('cluster');
  box.textContent = '';
  if (r.status !== 200 || !r.json) { box.textContent = 'HTTP ' + r.status; return; }
  if (r.json.mode === 'standalone') {
    box.appendChild(el('p', { id: 'standalone' }, 'standalone: this server runs alone (no --redis).'));
    return;
  }
  const c = r.json;
  box.appendChild(el('p', {}, 'cluster ' + c.cluster + ', this node ' + c.node_id + ' (' + c.role + '), leader ' +
                               c.leader + ', epoch ' + c.epoch));
  const t = el('table', { id: 'members' });
  const cols = ['node', 'role', 'epoch', 'address', 'entries not covered', 'lag ms',
                'delta applied', 'heartbeat age ms'];
  const head = el('tr');
  for (const h of cols) head.appendChild(el('th', {}, h));
  t.appendChild(head);
  for (const m of c.members || []) {
    const lag = m.lag || {};
    const tr = el('tr', { 'data-node': m.node_id || '' });
    if (m.stale) tr.className = 'stale';
    const cells = [m.node_id, m.role + (m.stale ? ' (stale)' : ''), m.epoch, m.address,
                   lag.entries_not_covered, lag.lag_ms, lag.applied_delta, m.age_ms];
    for (const v of cells) tr.appendChild(el('td', {}, v === undefined || v === null ? '-' : String(v)));
    t.appendChild(tr);
  }
  box.appendChild(t);
  if (c.lag) box.appendChild(el('p', { class: 'sched' }, 'lag: ' + JSON.stringify(c.lag)));
}

/* ---- start ---- */

document.addEventListener('DOMContentLoaded', () => {
  buildCharts();
  buildForm();
  $('range').addEventListener('change', draw);
  $('sched-apply').addEventListener('click', () => putSchedule(formSchedule()));
  $('token-save').addEventListener('click', () => {
    sessionStorage.setItem('hogrec-token', $('token').value);
    $('token').value = '';
    loadSchedule();
  });
  $('user-form').addEventListener('submit', showUser);
  $('item-form').addEventListener('submit', showItem);
  $('pair-form').addEventListener('submit', showPair);
  window.addEventListener('hashchange', show);
  show();
  poll();
});
