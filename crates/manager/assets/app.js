// The autogate manager page: sign-in, clusters, one cluster's nodes, certificates, session
// timeline and services, kept current by the manager's event stream.
//
// Plain JavaScript with no framework and no build step, so the file the manager serves is the
// file in the repository. Everything shown comes from the REST API under /api/v1 with the admin
// token as a Bearer header. Data from gateways (node ids, certificate subjects, service output)
// is inserted as text nodes only, never as markup: the page's Content-Security-Policy refuses
// inline script, and this keeps a hostile node id from becoming markup in the first place.
'use strict';

(() => {
  const TOKEN_KEY = 'autogate.manager.token';
  // A safety net under the event stream: every view re-reads itself this often anyway.
  const REFRESH_EVERY_MS = 15000;
  // Notices often come in bursts (a fail-over is a close, an open and a node update): one
  // re-read after the burst is enough.
  const DEBOUNCE_MS = 80;
  const TIMELINE_MAX = 50;
  // Close reasons the manager writes when it stops (crates/manager/src/registry.rs): a
  // graceful stop, and the sessions a killed manager left open, closed at its next start.
  const MANAGER_STOP_REASONS = ['manager shutting down', 'manager restarted'];

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------
  // DOM helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else if (v === true) e.setAttribute(k, '');
      else e.setAttribute(k, String(v));
    }
    append(e, children);
    return e;
  }

  function append(parent, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return parent;
  }

  function replace(parent, ...children) {
    parent.replaceChildren();
    return append(parent, children);
  }

  function badge(text, kind) {
    return el('span', { class: 'badge ' + (kind || String(text)), text });
  }

  // A badge for something that changes on the gateway's side (connection, a node's role): while
  // the manager is unreachable these are marked stale, since the page cannot know them.
  function stateBadge(text, kind) {
    const b = badge(text, kind);
    b.classList.add('state');
    return b;
  }

  // 14:55:44 UTC, as the rest of the page gives times in UTC.
  function clock(date) {
    return date.toISOString().slice(11, 19) + ' UTC';
  }

  const dash = '—';
  const show = (v) => (v === undefined || v === null || v === '' ? dash : String(v));

  function when(iso) {
    if (!iso) return dash;
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    return new Date(t).toISOString().replace('T', ' ').replace('Z', ' UTC');
  }

  function table(headers, rows, attrs) {
    return el('table', attrs || {},
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', { text: h })))),
      el('tbody', {}, rows));
  }

  const clusterHref = (id) => '#/clusters/' + encodeURIComponent(id);

  // Node names by id, from the last node lists read: a node's id changes at every start, its
  // name does not, so the name is what people recognise and the id what logs say.
  const nodeNames = new Map();

  function nameOf(id, name) {
    return typeof name === 'string' && name ? name : nodeNames.get(id) || null;
  }

  // A node as "name id": the name in bold, the id beside it in small monospace (the id alone
  // for nodes of gateways that send no name).
  function nodeLabel(id, name) {
    const n = nameOf(id, name);
    return [
      n ? el('strong', { class: 'node-name', text: n }) : null,
      n ? ' ' : null,
      el('span', { class: n ? 'mono node-id' : 'mono', text: show(id) }),
    ];
  }

  // "core-1 (vm_…)" in running text.
  function nodeText(id, name) {
    const n = nameOf(id, name);
    return n ? n + ' (' + show(id) + ')' : show(id);
  }

  // ---------------------------------------------------------------------------------------
  // API

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function call(method, path, body, withToken) {
    const headers = { Accept: 'application/json' };
    const t = withToken !== undefined ? withToken : token();
    if (t) headers.Authorization = 'Bearer ' + t;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    let text;
    try {
      resp = await fetch('/api/v1' + path, init);
      text = await resp.text();
    } catch (e) {
      unreachable();
      throw new ApiError(0, 'cannot reach the manager (' + e.message + ')', null);
    }
    // Any answer, an error status included, is the manager speaking.
    reached();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!resp.ok) {
      // REST errors are {"error": "<sentence>"}; service runs answer {"status": "error",
      // "error": {"message", …}} in the product family's shape.
      let message = 'HTTP ' + resp.status;
      if (data && typeof data.error === 'string') message = data.error;
      else if (data && data.error && typeof data.error.message === 'string') message = data.error.message;
      throw new ApiError(resp.status, message, data);
    }
    return data;
  }

  // Every call of a signed-in page: a refused token ends the sign-in.
  async function api(method, path, body) {
    try {
      return await call(method, path, body);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        signOut('The manager refused the token (' + e.message + '). Sign in again.');
      }
      throw e;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Reachability. The page shows what the manager said last; when the manager stops answering,
  // that is history, and the page says so (banner, stale marks) instead of looking live.

  // When the manager last answered (a Date), and whether it has stopped answering.
  let lastAnswer = null;
  let down = false;
  let probeTimer = null;
  const PROBE_EVERY_MS = 2000;

  function reached() {
    lastAnswer = new Date();
    if (!down) return;
    down = false;
    clearTimeout(probeTimer);
    drawReachability();
    // Whatever is shown dates from before the outage: reopen the stream (unless it is what
    // just answered) and re-read it all.
    if (token()) {
      if (!events || events.readyState !== EventSource.OPEN) startLive();
      scheduleRefresh();
    }
  }

  function unreachable() {
    if (down) return;
    down = true;
    drawReachability();
    probe();
  }

  // While the manager is down, ask its probe (no token needed) until it answers again.
  function probe() {
    clearTimeout(probeTimer);
    probeTimer = setTimeout(async () => {
      if (!down) return;
      if (await answers()) reached();
      else probe();
    }, PROBE_EVERY_MS);
  }

  async function answers() {
    try {
      await fetch('/healthz', { cache: 'no-store', credentials: 'omit' });
      return true;
    } catch (_) {
      return false;
    }
  }

  function drawReachability() {
    const banner = $('stale');
    document.body.classList.toggle('stale', down);
    if (!down) {
      banner.hidden = true;
      banner.textContent = '';
      for (const e of document.querySelectorAll('#view .state')) e.removeAttribute('title');
      return;
    }
    const since = lastAnswer ? clock(lastAnswer) : null;
    banner.textContent = (since
      ? 'The manager is unreachable since ' + since + '; states below are as of then.'
      : 'The manager is unreachable; nothing below has been confirmed by it.') +
      ' Whether clusters are connected, which node is active, the nodes\u2019 roles, sessions and' +
      ' services may have changed since, and nothing can be changed from this page until the' +
      ' manager answers again. The page checks every ' + (PROBE_EVERY_MS / 1000) + ' s.';
    banner.dataset.since = lastAnswer ? lastAnswer.toISOString() : '';
    banner.hidden = false;
    showAppError('');
    for (const e of document.querySelectorAll('#view .state')) {
      e.title = 'as of ' + (since || 'the page\u2019s last update') + ': the manager is unreachable';
    }
    setLive(false, since ? 'offline since ' + since : 'offline');
  }

  function showAppError(message) {
    const p = $('app-error');
    p.textContent = message || '';
    p.hidden = !message;
  }

  // ---------------------------------------------------------------------------------------
  // Sign-in

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    stopLive();
    if (current) current.alive = false;
    current = null;
    $('app').hidden = true;
    $('signout').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
    $('token').focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const input = $('token');
    const t = input.value.trim();
    const err = $('signin-error');
    if (!t) {
      err.textContent = 'Enter the admin token.';
      return;
    }
    const button = ev.target.querySelector('button');
    button.disabled = true;
    err.textContent = '';
    try {
      await call('GET', '/clusters', undefined, t);
      sessionStorage.setItem(TOKEN_KEY, t);
      input.value = '';
      start();
    } catch (e) {
      err.textContent = e.status === 401 ? 'Sign-in refused: ' + e.message : e.message;
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Live updates

  let events = null;
  let refreshTimer = null;
  let pollTimer = null;
  let reconnectTimer = null;

  function setLive(on, text) {
    const l = $('live');
    l.className = 'live ' + (on ? 'on' : 'off');
    const offline = down && lastAnswer ? 'offline since ' + clock(lastAnswer) : 'offline';
    l.textContent = text || (on ? 'live' : offline);
  }

  // Each (re)connection of the stream asks for a new ticket: EventSource cannot send headers,
  // and the token must never be part of a URL (logs, history). A ticket opens one stream,
  // within seconds of being issued, and nothing else.
  let liveAttempt = 0;

  async function startLive() {
    stopLive();
    if (!token()) return;
    const attempt = ++liveAttempt;
    setLive(false, 'connecting…');
    let ticket;
    try {
      ticket = (await api('POST', '/events/ticket')).ticket;
    } catch (_) {
      // Unreachable or refused: call() and api() already said so; try again while signed in.
      if (attempt === liveAttempt && token()) reconnectTimer = setTimeout(startLive, 3000);
      return;
    }
    if (attempt !== liveAttempt || !token()) return;
    const es = new EventSource('/api/v1/events?ticket=' + encodeURIComponent(ticket));
    events = es;
    es.addEventListener('ready', () => {
      reached();
      setLive(true);
      // Whatever happened while the stream was down.
      scheduleRefresh();
    });
    es.addEventListener('resync', () => scheduleRefresh());
    es.onmessage = (m) => {
      reached();
      let ev = null;
      try {
        ev = JSON.parse(m.data);
      } catch (_) {
        ev = null;
      }
      if (ev && ev.kind === 'services_changed') {
        if (current && current.id === ev.cluster_id && current.loadServices) current.loadServices();
        return;
      }
      scheduleRefresh();
    };
    es.onerror = async () => {
      if (!down) setLive(false, 'reconnecting…');
      // A dropped stream may be a blip or the manager gone: its probe tells which.
      if (!down && events === es && !(await answers())) unreachable();
      // The browser retries by itself with the same URL, but a ticket is good once: close
      // this stream and open a new one with a new ticket (a refused token signs out there).
      if (events === es) {
        es.close();
        reconnectTimer = setTimeout(() => {
          if (events === es && token()) startLive();
        }, 1000);
      }
    };
    pollTimer = setInterval(() => scheduleRefresh(), REFRESH_EVERY_MS);
  }

  function stopLive() {
    liveAttempt++;
    if (events) events.close();
    events = null;
    clearInterval(pollTimer);
    clearTimeout(reconnectTimer);
    clearTimeout(refreshTimer);
    setLive(false);
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      if (current) current.refresh();
    }, DEBOUNCE_MS);
  }

  // ---------------------------------------------------------------------------------------
  // Views. Each has mount() (builds its frame, forms included, once) and refresh() (re-reads
  // and redraws only the data parts, so a half-filled form survives live updates).

  let current = null;

  function route() {
    if (!token()) return;
    if (current) current.alive = false;
    showAppError('');
    const m = /^#\/clusters\/([^/]+)$/.exec(location.hash);
    current = m ? new ClusterView(decodeURIComponent(m[1])) : new ClustersView();
    current.mount($('view'));
    current.refresh();
  }

  function crumbs(...parts) {
    const nav = $('crumbs');
    replace(nav, el('a', { href: '#/', text: 'Clusters' }));
    for (const p of parts) append(nav, [' / ', p]);
  }

  function stateSelect(cluster, onChanged) {
    const sel = el('select', {
      class: 'compact state-select ' + cluster.state, 'aria-label': 'State of ' + cluster.cluster_id,
      dataset: { state: cluster.state },
    },
      ['enabled', 'read-only', 'disabled'].map((s) => el('option', { value: s, text: s, selected: s === cluster.state })));
    sel.addEventListener('change', async () => {
      sel.disabled = true;
      try {
        await api('PATCH', '/clusters/' + encodeURIComponent(cluster.cluster_id), { state: sel.value });
        showAppError('');
      } catch (e) {
        showAppError('Changing the state of ' + cluster.cluster_id + ' failed: ' + e.message);
      } finally {
        sel.disabled = false;
        onChanged();
      }
    });
    return sel;
  }

  // Names the file behind "certificates[1]: …" in the server's message.
  function nameFiles(message, field, files) {
    return message.replace(new RegExp('^' + field + '\\[(\\d+)\\]'), (whole, i) => {
      const f = files[Number(i)];
      return f ? whole + ' (' + f.name + ')' : whole;
    });
  }

  async function readPemFiles(input) {
    const files = Array.from(input.files || []);
    const texts = await Promise.all(files.map((f) => f.text()));
    return { files, texts };
  }

  function nodeCounts(nodes, absent) {
    const list = Array.isArray(nodes) ? nodes : [];
    const runners = list.filter((n) => n.role === 'runner').length;
    const gone = Array.isArray(absent) ? absent : [];
    const lost = gone.filter((n) => n.status === 'lost').length;
    const stopped = gone.length - lost;
    return (list.length - runners) + ' core, ' + runners + ' runner' + (runners === 1 ? '' : 's') +
      (lost ? ', ' + lost + ' lost' : '') + (stopped ? ', ' + stopped + ' stopped' : '');
  }

  class ClustersView {
    constructor() {
      this.alive = true;
    }

    mount(root) {
      crumbs();
      this.tbody = el('tbody');
      this.empty = el('p', { class: 'muted', hidden: true, text: 'No cluster is registered yet. Add one below.' });
      const form = el('form', { id: 'add-cluster', autocomplete: 'off', novalidate: true },
        el('div', { class: 'grid2' },
          el('div', { class: 'field' },
            el('label', { for: 'new-id' }, 'Cluster id', el('span', { class: 'req', title: 'required', text: '*' })),
            el('input', { id: 'new-id', type: 'text', required: true, placeholder: 'cluster_1', spellcheck: 'false' }),
            el('p', { class: 'hint', text: 'The GATEWAY_APPLICATION_CLUSTER_ID of its nodes.' })),
          el('div', { class: 'field' },
            el('label', { for: 'new-name', text: 'Name' }),
            el('input', { id: 'new-name', type: 'text', placeholder: 'defaults to the id' }))),
        el('div', { class: 'grid2' },
          el('div', { class: 'field' },
            el('label', { for: 'new-state', text: 'State' }),
            el('select', { id: 'new-state' },
              ['enabled', 'read-only', 'disabled'].map((s) => el('option', { value: s, text: s })))),
          el('div', { class: 'field' },
            el('label', { for: 'new-certs', text: 'Certificates (PEM)' }),
            el('input', { id: 'new-certs', type: 'file', multiple: true, accept: '.pem,.crt,.cer,application/x-pem-file' }),
            el('p', { class: 'hint', text: 'Each core node may have its own key pair: pick every node\u2019s certificate.' }))),
        el('button', { type: 'submit', text: 'Add cluster' }),
        el('p', { id: 'add-cluster-error', class: 'error', role: 'alert' }),
        el('p', { id: 'add-cluster-ok', class: 'muted', role: 'status' }));
      form.addEventListener('submit', (ev) => this.add(ev));
      this.store = el('p', { id: 'manager-store', class: 'muted' });
      replace(root,
        el('section', { class: 'card' },
          el('h1', { text: 'Gateway clusters' }),
          table(['Cluster', 'Name', 'State', 'Connection', 'Active node', 'Term', 'Nodes', 'Certificates'], [], { id: 'clusters' }),
          this.empty),
        el('section', { class: 'card' }, el('h2', { text: 'Add a cluster' }), form),
        el('section', { class: 'card', id: 'replicas-card' },
          el('h2', { text: 'Manager replicas' }),
          table(['Replica', 'Address', 'Sessions', 'Last seen', 'Started'], [], { id: 'replicas' }),
          this.store));
      this.tbody = root.querySelector('#clusters tbody');
      this.replicas = root.querySelector('#replicas tbody');
    }

    // The replicas that serve this manager, the one this page talks to marked, and its store.
    async refreshReplicas() {
      let r;
      try {
        r = await api('GET', '/replicas');
      } catch (e) {
        return;
      }
      if (!this.alive) return;
      replace(this.replicas, (r.replicas || []).map((x) =>
        el('tr', { dataset: { replicaId: x.replica_id } },
          el('td', { class: 'mono', text: x.replica_id + (x.this ? ' (this page)' : '') }),
          el('td', { class: 'mono', text: show(x.address) }),
          el('td', { text: show(x.sessions) }),
          el('td', {}, when(x.last_seen)),
          el('td', {}, when(x.started_at)))));
      const st = r.store || {};
      this.store.textContent = 'Store: ' + show(st.backend) + ' ' + show(st.endpoints) +
        (st.prefix ? ' under ' + st.prefix : '') +
        (st.healthy ? ', healthy' : ', unavailable: ' + show(st.error));
    }

    async refresh() {
      let list;
      try {
        list = await api('GET', '/clusters');
      } catch (e) {
        if (this.alive && e.status !== 401 && e.status !== 0) showAppError('Cannot list clusters: ' + e.message);
        return;
      }
      if (!this.alive) return;
      showAppError('');
      this.refreshReplicas();
      list.sort((a, b) => String(a.cluster_id).localeCompare(String(b.cluster_id)));
      this.empty.hidden = list.length > 0;
      replace(this.tbody, list.map((c) => {
        const active = c.active || {};
        return el('tr', { dataset: { clusterId: c.cluster_id } },
          el('td', {}, el('a', { href: clusterHref(c.cluster_id), class: 'cluster-link', text: c.cluster_id })),
          el('td', { text: show(c.name) }),
          el('td', {}, stateSelect(c, () => this.refresh())),
          el('td', {}, c.connected ? stateBadge('connected') : stateBadge('disconnected')),
          el('td', { class: 'active-node' }, active.node_id ? nodeLabel(active.node_id, active.node_name) : dash),
          el('td', { class: 'term', text: show(active.term) }),
          el('td', { class: 'node-counts', text: nodeCounts(c.nodes, c.absent_nodes) }),
          el('td', { text: String((c.certificates || []).length) }));
      }));
    }

    async add(ev) {
      ev.preventDefault();
      const err = $('add-cluster-error');
      const ok = $('add-cluster-ok');
      err.textContent = '';
      ok.textContent = '';
      const id = $('new-id').value.trim();
      if (!id) {
        err.textContent = 'cluster_id: required';
        return;
      }
      const body = { cluster_id: id, state: $('new-state').value };
      const name = $('new-name').value.trim();
      if (name) body.name = name;
      const { files, texts } = await readPemFiles($('new-certs'));
      if (texts.length) body.certificates = texts;
      const button = ev.target.querySelector('button[type=submit]');
      button.disabled = true;
      try {
        const c = await api('POST', '/clusters', body);
        ok.textContent = 'Added ' + c.cluster_id + ' with ' + (c.certificates || []).length + ' certificate(s).';
        ev.target.reset();
        this.refresh();
      } catch (e) {
        err.textContent = nameFiles(e.message, 'certificates', files);
      } finally {
        button.disabled = false;
      }
    }
  }

  class ClusterView {
    constructor(id) {
      this.id = id;
      this.alive = true;
      this.path = '/clusters/' + encodeURIComponent(id);
      this.connected = null;
      this.activeNode = null;
      this.catalog = null;
      // Service cards by name, each with the definition it was built from.
      this.cards = new Map();
      this.servicesSeq = 0;
    }

    mount(root) {
      crumbs(el('span', { class: 'mono', text: this.id }));
      const section = (id, title, ...rest) =>
        el('section', { class: 'card', id }, el('h2', { text: title }), ...rest);
      this.title = el('h1', { text: this.id });
      this.facts = el('dl', { class: 'facts', id: 'gateway-facts' });
      this.core = el('div', { id: 'core-nodes' });
      this.runners = el('div', { id: 'runners' });
      this.certs = el('div', { id: 'certificates' });
      this.timeline = el('ol', { class: 'timeline', id: 'timeline' });
      this.services = el('div', { id: 'services-list' });
      const certForm = el('form', { id: 'add-cert', class: 'row', novalidate: true },
        el('label', { class: 'inline', for: 'more-certs' }, 'Add certificates (PEM)'),
        el('input', { id: 'more-certs', type: 'file', multiple: true, accept: '.pem,.crt,.cer,application/x-pem-file' }),
        el('button', { type: 'submit', class: 'secondary', text: 'Upload' }));
      certForm.addEventListener('submit', (ev) => this.addCerts(ev));
      const reload = el('button', { type: 'button', class: 'secondary', id: 'reload-services', text: 'Reload services' });
      reload.addEventListener('click', () => this.loadServices());
      replace(root,
        el('section', { class: 'card' }, this.title, this.facts),
        section('core', 'Core nodes', this.core),
        section('runner-nodes', 'Runners', this.runners),
        section('certs', 'Certificates', this.certs, certForm,
          el('p', { id: 'cert-error', class: 'error', role: 'alert' })),
        section('sessions', 'Session timeline', this.timeline),
        section('services', 'Services', el('div', { class: 'row' }, reload), this.services));
      this.loadServices();
    }

    async refresh() {
      let c;
      let sessions;
      try {
        [c, sessions] = await Promise.all([
          api('GET', this.path),
          api('GET', this.path + '/sessions'),
        ]);
      } catch (e) {
        if (this.alive && e.status !== 401 && e.status !== 0) showAppError('Cannot read cluster ' + this.id + ': ' + e.message);
        return;
      }
      if (!this.alive) return;
      showAppError('');
      for (const n of [].concat(c.nodes || [], c.absent_nodes || [])) {
        if (n && n.node_id && n.name) nodeNames.set(n.node_id, n.name);
      }
      if (c.active && c.active.node_id && c.active.node_name) nodeNames.set(c.active.node_id, c.active.node_name);
      this.drawFacts(c);
      this.drawNodes(c);
      this.drawCerts(c);
      this.drawTimeline(Array.isArray(sessions) ? sessions : (sessions && sessions.sessions) || []);
      const active = c.active ? c.active.node_id : null;
      const catalog = c.services_updated_at || null;
      const changed = this.connected !== null &&
        (c.connected !== this.connected || active !== this.activeNode || catalog !== this.catalog);
      this.connected = c.connected;
      this.activeNode = active;
      this.catalog = catalog;
      // A new active node or catalog may change the services; forms are rebuilt only then, so
      // a half-filled form survives other updates.
      if (changed) this.loadServices();
    }

    drawFacts(c) {
      this.title.textContent = c.name && c.name !== c.cluster_id ? c.name + ' (' + c.cluster_id + ')' : c.cluster_id;
      const a = c.active || {};
      const fact = (label, ...value) => [el('dt', { text: label }), el('dd', {}, ...value)];
      replace(this.facts,
        // The state once: the control that changes it shows it.
        fact('State', stateSelect(c, () => this.refresh())),
        fact('Connection', c.connected ? stateBadge('connected') : stateBadge('disconnected')),
        fact('Active node', el('span', { id: 'active-node' }, a.node_id ? nodeLabel(a.node_id, a.node_name) : dash)),
        fact('Term', el('span', { id: 'term', text: show(a.term) })),
        fact('Connected since', when(a.connected_at)),
        fact('From', show(a.remote_addr)),
        fact('Gateway version', show(a.version)),
        fact('Manager replica', el('span', { id: 'session-replica', class: 'mono', text: show(a.replica) })),
        fact('Highest term seen', el('span', { id: 'highest-term', text: show(c.highest_term) }),
          c.highest_term === null || c.highest_term === undefined ? null : this.resetTermButton(c)));
    }

    // The way out when a node sent a term no real leader can beat (docs/operations.md).
    resetTermButton(c) {
      const b = el('button', { type: 'button', id: 'reset-term', class: 'secondary compact', text: 'Reset' });
      b.addEventListener('click', async () => {
        if (!window.confirm('Reset the term of ' + c.cluster_id + '? The manager forgets the highest term (' +
          c.highest_term + ') and closes the live session; the next node to connect with a term sets it again. ' +
          'Remove the certificate of a node that sent a false term first.')) return;
        b.disabled = true;
        try {
          await api('POST', this.path + '/reset-term');
          showAppError('');
        } catch (e) {
          showAppError('Cannot reset the term of ' + c.cluster_id + ': ' + e.message);
        } finally {
          b.disabled = false;
          this.refresh();
        }
      });
      return b;
    }

    drawNodes(c) {
      const nodes = Array.isArray(c.nodes) ? c.nodes : [];
      const absent = Array.isArray(c.absent_nodes) ? c.absent_nodes : [];
      const core = nodes.filter((n) => n.role !== 'runner');
      const runners = nodes.filter((n) => n.role === 'runner');
      const order = { active: 0, standby: 1, paused: 2 };
      const byName = (x, y) => String(x.name || x.node_id).localeCompare(String(y.name || y.node_id));
      core.sort((x, y) => (order[x.role] ?? 9) - (order[y.role] ?? 9) || byName(x, y));
      runners.sort(byName);
      // A node that left stays listed, marked stopped or lost with when it was last seen,
      // until it comes back under the same name or is forgotten here.
      const goneRow = (n, cls, cells) => {
        const forget = el('button', { type: 'button', class: 'secondary forget', text: 'Forget' });
        forget.addEventListener('click', () => this.forget(n));
        return el('tr', { class: cls + ' absent', dataset: { nodeId: n.node_id, status: n.status, name: n.name || '' } },
          el('td', {}, n.name ? el('strong', { class: 'node-name', text: n.name }) : dash),
          el('td', { class: 'mono', text: n.node_id }),
          el('td', {}, stateBadge(n.status), el('div', { class: 'muted last-seen', text: 'last seen ' + when(n.last_seen) }),
            el('div', { class: 'muted reason', text: show(n.reason) })),
          cells,
          el('td', {}, forget));
      };
      // A node that came back: from what, since when.
      const backNote = (n) => n.back
        ? el('div', { class: 'back-note muted' }, badge('back', 'ok'),
          ' since ' + when(n.back.back_at) + ' (was ' + n.back.was + ', last seen ' + when(n.back.last_seen) +
          (n.back.previous_node_id !== n.node_id ? ' as ' + n.back.previous_node_id : '') + ')')
        : null;
      const goneCore = absent.filter((n) => n.role !== 'runner');
      const goneRunners = absent.filter((n) => n.role === 'runner');
      const coreRows = (c.connected ? core : []).map((n) =>
        el('tr', { class: 'node' + (n.back ? ' back' : ''), dataset: { nodeId: n.node_id, role: n.role, name: n.name || '' } },
          el('td', {}, n.name ? el('strong', { class: 'node-name', text: n.name }) : dash),
          el('td', { class: 'mono', text: n.node_id }),
          el('td', {}, stateBadge(n.role), backNote(n)),
          el('td', {}, n.is_primary ? badge('primary') : dash),
          el('td', { text: n.manager_reachable === true ? 'yes' : n.manager_reachable === false ? 'no' : dash }),
          el('td', { class: 'mono', text: show(n.address) }),
          el('td', {})));
      const coreGone = goneCore.map((n) => goneRow(n, 'node', [el('td', {}, dash), el('td', {}, dash), el('td', {}, dash)]));
      replace(this.core,
        c.connected ? null : el('p', { class: 'muted', text: 'Not connected: the nodes are reported by the cluster\u2019s active node.' }),
        coreRows.length || coreGone.length
          ? table(['Name', 'Node id', 'Role', 'Primary', 'Reaches manager', 'API address', ''], [coreRows, coreGone])
          : null);
      const runnerRows = runners.map((n) =>
        el('tr', { class: 'runner' + (n.back ? ' back' : ''), dataset: { nodeId: n.node_id, name: n.name || '' } },
          el('td', {}, n.name ? el('strong', { class: 'node-name', text: n.name }) : dash, backNote(n)),
          el('td', { class: 'mono', text: n.node_id }),
          el('td', {}, badge('online', 'ok')),
          el('td', { text: show(n.running) }),
          el('td', { text: show(n.capacity) }),
          el('td', { class: 'mono', text: show(n.address) }),
          el('td', {})));
      const runnersGone = goneRunners.map((n) => goneRow(n, 'runner', [el('td', {}, dash), el('td', {}, dash)]));
      if (!runnerRows.length && !runnersGone.length) {
        replace(this.runners, el('p', { class: 'muted', text: c.connected ? 'No runners reported by this cluster.' : dash }));
      } else {
        replace(this.runners, table(['Name', 'Runner id', 'Status', 'Running', 'Capacity', 'Address', ''], [runnerRows, runnersGone]));
      }
    }

    async forget(n) {
      const who = n.name ? n.name + ' (' + n.node_id + ')' : n.node_id;
      if (!window.confirm('Forget ' + who + '? It is no longer listed; a node of that name that joins later is shown as new.')) return;
      try {
        await api('DELETE', this.path + '/nodes/' + encodeURIComponent(n.node_id));
        this.refresh();
      } catch (e) {
        showAppError('Cannot forget ' + who + ': ' + e.message);
      }
    }

    drawCerts(c) {
      const certs = c.certificates || [];
      if (!certs.length) {
        replace(this.certs, el('p', { class: 'muted', text: 'No certificate is registered: no node of this cluster can connect.' }));
        return;
      }
      replace(this.certs, table(['Subject', 'SHA-256 fingerprint', 'Expires', 'Last presented by', ''],
        certs.map((k) => {
          const rm = el('button', { type: 'button', class: 'danger', text: 'Remove' });
          rm.addEventListener('click', () => this.removeCert(k));
          return el('tr', { class: 'cert', dataset: { fingerprint: k.fingerprint_sha256 } },
            el('td', { class: 'subject', text: show(k.subject) }),
            el('td', { class: 'fp', text: k.fingerprint_sha256 }),
            el('td', {}, when(k.not_after), k.expired ? [' ', badge('expired')] : null),
            el('td', {},
              k.last_presented_by ? el('span', { class: 'presented-by' }, nodeLabel(k.last_presented_by)) : dash,
              k.last_presented_at ? el('div', { class: 'muted', text: when(k.last_presented_at) }) : null),
            el('td', {}, rm));
        })));
    }

    drawTimeline(sessions) {
      const list = sessions.slice(0, TIMELINE_MAX);
      if (!list.length) {
        replace(this.timeline, el('li', { class: 'muted', text: 'No session yet.' }));
        return;
      }
      const items = [];
      list.forEach((s, i) => {
        const live = !s.disconnected_at;
        items.push(el('li', { class: 'session' + (live ? ' live' : ''), dataset: { sessionId: s.session_id, nodeId: s.node_id } },
          nodeLabel(s.node_id, s.node_name),
          ' term ' + show(s.term) + ', connected ' + when(s.connected_at) + ' from ' + show(s.remote_addr),
          live ? [' ', stateBadge('live', 'ok')]
            : el('div', { class: 'muted', text: 'closed ' + when(s.disconnected_at) + ': ' + show(s.close_reason) })));
        // The gap between this session and the one before it (the list is newest first).
        const older = list[i + 1];
        if (older && older.disconnected_at) {
          const gap = Date.parse(s.connected_at) - Date.parse(older.disconnected_at);
          const ms = Number.isFinite(gap) ? Math.max(0, Math.round(gap)) + ' ms' : dash;
          const moved = older.node_id !== s.node_id;
          // A session the manager's own stop ended is an outage of the manager, not of the
          // cluster: no fail-over, whichever node dialled first when it was back.
          const kind = MANAGER_STOP_REASONS.includes(older.close_reason) ? 'restart'
            : moved ? 'failover' : 'reconnect';
          const nodes = nodeText(older.node_id, older.node_name) + ' \u2192 ' + nodeText(s.node_id, s.node_name);
          const text = kind === 'restart'
            ? 'manager restart' + (moved ? ': ' + nodes + ',' : ':') + ' gap ' + ms
            : kind === 'failover' ? 'fail-over ' + nodes + ': gap ' + ms
            : 'reconnected after ' + ms;
          items.push(el('li', { class: kind, text, dataset: { gapMs: String(gap) } }));
        }
      });
      if (sessions.length > list.length) {
        items.push(el('li', { class: 'muted', text: (sessions.length - list.length) + ' older session(s) not shown.' }));
      }
      replace(this.timeline, items);
    }

    async addCerts(ev) {
      ev.preventDefault();
      const err = $('cert-error');
      err.textContent = '';
      const { files, texts } = await readPemFiles($('more-certs'));
      if (!texts.length) {
        err.textContent = 'Pick one or more PEM files first.';
        return;
      }
      try {
        await api('PATCH', this.path, { add_certificates: texts });
        ev.target.reset();
        this.refresh();
      } catch (e) {
        err.textContent = nameFiles(e.message, 'add_certificates', files);
      }
    }

    async removeCert(k) {
      const who = k.subject || k.fingerprint_sha256;
      if (!window.confirm('Remove the certificate ' + who + '? A node using it is disconnected at once.')) return;
      try {
        await api('PATCH', this.path, { remove_certificates: [k.fingerprint_sha256] });
        $('cert-error').textContent = '';
        this.refresh();
      } catch (e) {
        $('cert-error').textContent = e.message;
      }
    }

    // Reads the catalog and draws one card per service. A card whose service did not change is
    // kept as it is — the inputs being typed and the last run's result with it — so a catalog
    // change elsewhere (another service created) wipes nothing.
    async loadServices() {
      const box = this.services;
      const seq = ++this.servicesSeq;
      let data;
      try {
        data = await api('GET', this.path + '/services');
      } catch (e) {
        // A newer read answers instead; an unreachable manager keeps what is shown (the banner
        // says it is stale).
        if (!this.alive || seq !== this.servicesSeq || e.status === 0) return;
        this.cards.clear();
        if (e.status === 404 && /no such API endpoint/.test(e.message)) {
          replace(box, el('p', { class: 'muted', text: 'This manager does not list services.' }));
        } else {
          replace(box, el('p', { class: 'error', text: 'Cannot list services: ' + e.message }));
        }
        return;
      }
      if (!this.alive || seq !== this.servicesSeq) return;
      // The catalog now shown: refresh() compares the cluster's services_updated_at with it, so
      // the same catalog is not read (and drawn) again.
      this.catalog = (data && data.updated_at) || null;
      const list = (data && Array.isArray(data.services)) ? data.services : [];
      if (!list.length) {
        this.cards.clear();
        replace(box, el('p', { class: 'muted', text: 'This cluster offers no service.' }));
        return;
      }
      const cards = new Map();
      for (const svc of list) {
        const sig = JSON.stringify(svc);
        const kept = this.cards.get(svc.name);
        cards.set(svc.name, kept && kept.sig === sig ? kept : { sig, node: serviceCard(this, svc) });
      }
      this.cards = cards;
      replace(box,
        data.updated_at ? el('p', { class: 'hint', text: 'Catalog as of ' + when(data.updated_at) }) : null,
        Array.from(cards.values(), (c) => c.node));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Services: a run form generated from the service's decorator (JSON Schema).

  function schemaOf(svc) {
    const candidates = [svc.schema, svc.decorator && svc.decorator.schema, svc.decorator];
    for (const c of candidates) {
      if (c && typeof c === 'object' && !Array.isArray(c) && (c.properties || c.type)) return c;
    }
    return null;
  }

  function typeOf(prop) {
    let t = prop.type;
    if (Array.isArray(t)) t = t.find((x) => x !== 'null');
    if (Array.isArray(prop.enum)) return 'enum';
    return ['string', 'integer', 'number', 'boolean', 'array', 'object'].includes(t) ? t : 'json';
  }

  let fieldSeq = 0;

  function fieldFor(name, prop, required) {
    const kind = typeOf(prop);
    const id = 'f' + (++fieldSeq);
    const label = el('label', { for: id },
      prop.title || name,
      required ? el('span', { class: 'req', title: 'required', text: '*' }) : null,
      el('span', { class: 'muted', text: ' ' + (kind === 'json' ? 'JSON' : kind === 'enum' ? 'choice' : kind) }));
    const hasDefault = Object.prototype.hasOwnProperty.call(prop, 'default');
    let input;
    switch (kind) {
      case 'boolean':
        input = el('input', { id, type: 'checkbox', checked: hasDefault && prop.default === true });
        break;
      case 'enum':
        input = el('select', { id, required },
          required ? null : el('option', { value: '', text: '' }),
          prop.enum.map((v, i) => el('option', {
            value: String(i), text: typeof v === 'string' ? v : JSON.stringify(v),
            selected: hasDefault && JSON.stringify(v) === JSON.stringify(prop.default),
          })));
        break;
      case 'integer':
      case 'number':
        input = el('input', {
          id, type: 'number', step: kind === 'integer' ? '1' : 'any', required,
          min: prop.minimum, max: prop.maximum, value: hasDefault ? prop.default : null,
        });
        break;
      case 'string':
        input = el('input', {
          id, type: 'text', required, spellcheck: 'false', value: hasDefault ? prop.default : null,
          placeholder: prop.format || prop.pattern || null,
        });
        break;
      default:
        input = el('textarea', {
          id, required, spellcheck: 'false',
          placeholder: kind === 'array' ? '["a", "b"]' : kind === 'object' ? '{"key": "value"}' : 'any JSON value',
        });
        if (hasDefault) input.value = JSON.stringify(prop.default);
    }
    input.name = name;
    const error = el('p', { class: 'error field-error', id: id + '-error', role: 'alert' });
    input.setAttribute('aria-describedby', error.id);
    const wrap = el('div', { class: 'field', dataset: { field: name, kind } },
      kind === 'boolean' ? el('label', { class: 'inline', for: id }, input, Array.from(label.childNodes)) : [label, input],
      error,
      prop.description ? el('p', { class: 'hint', text: prop.description }) : null);
    // A fixed value clears its message as soon as it is edited.
    input.addEventListener('input', () => setFieldError(field, ''));
    const field = { name, kind, prop, required, input, wrap, error };
    return field;
  }

  // What the form can check before sending, in the decorator's own terms: required inputs,
  // types, numeric bounds and lengths. The gateway checks everything again (patterns, formats,
  // the rest of JSON Schema) and its refusals are shown beside the fields the same way.
  function checkNumber(n, p) {
    const min = typeof p.minimum === 'number' ? p.minimum : null;
    const max = typeof p.maximum === 'number' ? p.maximum : null;
    // draft-04 spells an exclusive bound as a boolean next to minimum/maximum.
    const xmin = typeof p.exclusiveMinimum === 'number' ? p.exclusiveMinimum : p.exclusiveMinimum === true ? min : null;
    const xmax = typeof p.exclusiveMaximum === 'number' ? p.exclusiveMaximum : p.exclusiveMaximum === true ? max : null;
    if (xmin !== null && !(n > xmin)) return 'must be greater than ' + xmin;
    if (xmax !== null && !(n < xmax)) return 'must be less than ' + xmax;
    if (min !== null && n < min) return 'must be at least ' + min;
    if (max !== null && n > max) return 'must be at most ' + max;
    if (typeof p.multipleOf === 'number' && p.multipleOf > 0 && !Number.isInteger(n / p.multipleOf)) {
      return 'must be a multiple of ' + p.multipleOf;
    }
    return null;
  }

  function checkLength(count, p, unit) {
    const [lo, hi] = unit === 'item' ? [p.minItems, p.maxItems] : [p.minLength, p.maxLength];
    const n = (k) => k + ' ' + unit + (k === 1 ? '' : 's');
    if (typeof lo === 'number' && count < lo) return 'must have at least ' + n(lo);
    if (typeof hi === 'number' && count > hi) return 'must have at most ' + n(hi);
    return null;
  }

  // One field's value: { value } (undefined when left out) or { error } with the message shown
  // beside it.
  function fieldValue(f) {
    const p = f.prop;
    if (f.kind === 'boolean') return { value: f.input.checked };
    // A number field holding something that is not a number reads as ''.
    if (f.input.validity && f.input.validity.badInput) {
      return { error: f.kind === 'integer' ? 'expected a whole number' : 'expected a number' };
    }
    const raw = f.input.value;
    if (raw.trim() === '') return f.required ? { error: 'required' } : { value: undefined };
    switch (f.kind) {
      case 'enum':
        return { value: p.enum[Number(raw)] };
      case 'integer':
      case 'number': {
        const n = Number(raw);
        if (f.kind === 'integer' && !Number.isInteger(n)) return { error: 'expected a whole number, got ' + JSON.stringify(raw) };
        if (!Number.isFinite(n)) return { error: 'expected a number, got ' + JSON.stringify(raw) };
        const bad = checkNumber(n, p);
        return bad ? { error: bad } : { value: n };
      }
      case 'string': {
        const bad = checkLength(Array.from(raw).length, p, 'character');
        return bad ? { error: bad } : { value: raw };
      }
      default: {
        let v;
        try {
          v = JSON.parse(raw);
        } catch (e) {
          return { error: 'not valid JSON (' + e.message + ')' };
        }
        if (f.kind === 'array' && !Array.isArray(v)) return { error: 'expected a JSON array' };
        if (f.kind === 'object' && (v === null || typeof v !== 'object' || Array.isArray(v))) {
          return { error: 'expected a JSON object' };
        }
        const bad = f.kind === 'array' ? checkLength(v.length, p, 'item') : null;
        return bad ? { error: bad } : { value: v };
      }
    }
  }

  // The inputs object, and the fields at fault with what is wrong with each.
  function collect(fields) {
    const inputs = {};
    const errors = [];
    for (const f of fields) {
      const r = fieldValue(f);
      if (r.error) errors.push({ field: f, message: r.error });
      else if (r.value !== undefined) inputs[f.name] = r.value;
    }
    return { inputs, errors };
  }

  function setFieldError(f, message) {
    f.error.textContent = message || '';
    f.wrap.classList.toggle('invalid', !!message);
    if (message) f.input.setAttribute('aria-invalid', 'true');
    else f.input.removeAttribute('aria-invalid');
  }

  // A decorator violation's JSON pointer as a field path: "/times" → times, "/targets/1" →
  // targets[1], "" → inputs (the whole object).
  function pointerPath(pointer) {
    const parts = String(pointer || '').split('/').slice(1)
      .map((x) => x.replace(/~1/g, '/').replace(/~0/g, '~'));
    if (!parts.length) return { field: null, label: 'inputs' };
    const label = parts[0] + parts.slice(1).map((x) => (/^\d+$/.test(x) ? '[' + x + ']' : '.' + x)).join('');
    return { field: parts[0], label };
  }

  // The violations of a run the gateway refused for its inputs, as { field, label, message },
  // or null when the run failed for another reason.
  function violationsOf(answer) {
    const data = answer && answer.error && answer.error.data;
    if (!data || !Array.isArray(data.violations)) return null;
    return data.violations.map((v) => {
      if (typeof v === 'string') return { field: null, label: 'inputs', message: v };
      const { field, label } = pointerPath(v && v.pointer);
      return { field, label, message: show(v && v.message) };
    });
  }

  function serviceCard(view, svc) {
    const schema = schemaOf(svc);
    const props = schema && schema.properties && typeof schema.properties === 'object' ? schema.properties : null;
    const required = new Set(schema && Array.isArray(schema.required) ? schema.required : []);
    const fields = props
      ? Object.entries(props).map(([name, prop]) => fieldFor(name, prop || {}, required.has(name)))
      : [];
    let free = null;
    if (!props) {
      free = el('textarea', { name: 'inputs', spellcheck: 'false', 'aria-label': 'Inputs (JSON object)' });
      free.value = '{}';
    }
    const error = el('p', { class: 'error run-error', role: 'alert' });
    const result = el('div', { class: 'result', 'aria-live': 'polite' });
    const button = el('button', { type: 'submit', text: 'Run' });
    const form = el('form', { class: 'run-form', novalidate: true, autocomplete: 'off' },
      fields.map((f) => f.wrap),
      free ? el('div', { class: 'field' }, el('label', { text: 'Inputs (JSON object)' }), free) : null,
      button, error);
    const byName = new Map(fields.map((f) => [f.name, f]));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      error.textContent = '';
      for (const f of fields) setFieldError(f, '');
      let inputs;
      if (free) {
        try {
          inputs = JSON.parse(free.value || '{}');
        } catch (e) {
          error.textContent = 'inputs: not valid JSON (' + e.message + ')';
          return;
        }
        if (inputs === null || typeof inputs !== 'object' || Array.isArray(inputs)) {
          error.textContent = 'inputs: expected a JSON object';
          return;
        }
      } else {
        const c = collect(fields);
        if (c.errors.length) {
          // Nothing is sent: each message stands beside its field.
          for (const { field, message } of c.errors) setFieldError(field, message);
          error.textContent = 'Not sent: check ' + c.errors.map((x) => x.field.name).join(', ') + '.';
          c.errors[0].field.input.focus();
          return;
        }
        inputs = c.inputs;
      }
      button.disabled = true;
      replace(result, el('p', { class: 'muted', text: 'Running…' }));
      const started = performance.now();
      try {
        const answer = await api('POST', view.path + '/services/' + encodeURIComponent(svc.name) + '/run', { inputs });
        replace(result, renderRun(answer, performance.now() - started));
      } catch (e) {
        if (e.body && e.body.status === 'error') {
          // The gateway's refusal of an input stands beside that input too.
          for (const v of violationsOf(e.body) || []) {
            const f = v.field !== null ? byName.get(v.field) : null;
            if (f) setFieldError(f, v.label === f.name ? v.message : v.label + ': ' + v.message);
          }
          replace(result, renderRun(e.body, performance.now() - started));
          return;
        }
        replace(result, el('div', { class: 'run-failed' }, el('p', { class: 'error', text: e.message })));
      } finally {
        button.disabled = false;
      }
    });
    const tags = Array.isArray(svc.tags) ? svc.tags : [];
    const decorator = typeof svc.decorator === 'string' ? svc.decorator : null;
    return el('div', { class: 'service', dataset: { service: svc.name } },
      el('h3', {}, el('span', { class: 'mono', text: svc.name }), ' ', svc.type ? badge(svc.type, 'type') : null),
      svc.description ? el('p', { text: svc.description }) : null,
      tags.length || decorator ? el('p', { class: 'tags' },
        decorator ? el('span', { class: 'muted', text: 'decorator ' + decorator + ' ' }) : null,
        tags.map((t) => badge(typeof t === 'string' ? t : JSON.stringify(t), 'tag'))) : null,
      form, result);
  }

  function renderRun(answer, tookMs) {
    if (answer && answer.status === 'error') {
      const e = answer.error || {};
      // Inputs the decorator refused: one line per input, "times: must be at most 5". The
      // JSON-RPC code and the raw structure are the API's business, not the reader's.
      const violations = violationsOf(answer);
      let head;
      let detail = null;
      if (violations) {
        head = 'The gateway refused the inputs; nothing ran.';
        detail = el('ul', { class: 'violations' }, violations.map((v) =>
          el('li', { dataset: { field: v.field || '' }, text: v.label + ': ' + v.message })));
      } else {
        head = show(e.message);
        // A gateway's extra words, when they are words and say more than the message.
        if (typeof e.data === 'string' && e.data !== e.message) {
          detail = el('pre', { class: 'out stderr', text: e.data });
        } else if (e.data && typeof e.data.message === 'string' && e.data.message !== e.message) {
          detail = el('p', { class: 'error', text: e.data.message });
        }
      }
      return el('div', { class: 'run-failed' },
        el('p', { class: 'error', text: head }),
        detail,
        answer.node_id ? el('p', { class: 'muted', text: 'answered by node ' + nodeText(answer.node_id) }) : null);
    }
    const r = (answer && answer.result) || answer || {};
    const code = r.return_code;
    const fact = (label, value) => [el('dt', { text: label }), el('dd', {}, value)];
    return el('div', { class: 'run-done' },
      el('dl', { class: 'facts' },
        fact('Status', badge(show(answer && answer.status), code === 0 ? 'ok' : 'bad')),
        fact('Return code', el('span', { class: 'return-code', text: show(code) })),
        answer && answer.node_id ? fact('Ran on', el('span', { class: 'ran-on' }, nodeLabel(answer.node_id))) : null,
        fact('Started', when(r.start_time)),
        fact('Ended', when(r.end_time)),
        fact('Elapsed', show(r.elapsed_time) + (typeof r.elapsed_time === 'number' ? ' s' : '') +
          ' (round trip ' + Math.round(tookMs) + ' ms)'),
        // Only a run that built its Python environment has one.
        r.environment_build_time ? fact('Environment build', show(r.environment_build_time)) : null),
      el('h3', { text: 'stdout' }),
      el('pre', { class: 'out stdout', text: r.stdout || '' }),
      r.stderr ? [el('h3', { text: 'stderr' }), el('pre', { class: 'out stderr', text: r.stderr })] : null);
  }

  // ---------------------------------------------------------------------------------------
  // Start

  function start() {
    $('signin').hidden = true;
    $('signin-error').textContent = '';
    $('app').hidden = false;
    $('signout').hidden = false;
    startLive();
    route();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('signin-form').addEventListener('submit', signIn);
    $('signout').addEventListener('click', () => signOut(''));
    window.addEventListener('hashchange', route);
    if (token()) start();
    else signOut('');
  });
})();
