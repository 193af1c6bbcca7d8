// The setup page: what the signed-in person may reach, and their API tokens (create, list,
// revoke), over the JSON API with the session cookie. Data only ever reaches the page as text
// (textContent, attributes), never as HTML.
'use strict';

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'onclick') e.addEventListener('click', v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const json = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(json.error || ('HTTP ' + resp.status));
    err.status = resp.status;
    throw err;
  }
  return json;
}

function show(id, message) {
  $(id).textContent = message;
  $(id).hidden = !message;
}

// Every character the shell or the URL could read specially is percent-encoded.
function encodeQuery(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

function installCommand(initUrl) {
  const base = initUrl.slice(0, initUrl.lastIndexOf('/p/'));
  return 'curl -fsSL "' + base + '/api/download/install.sh?init_url=' + encodeQuery(initUrl) + '" | bash';
}

function renderPods(me) {
  const list = $('pods');
  list.replaceChildren();
  if (!me.pods.length) {
    list.append(el('li', {}, 'No pods you may reach yet.'));
    return;
  }
  for (const pod of me.pods) {
    const item = el('li', { 'data-pod': pod.pod }, el('strong', {}, pod.pod), ' (' + pod.status + (pod.owner ? ', yours' : '') + ')');
    const ports = el('ul');
    for (const p of pod.ports) {
      ports.append(el('li', {}, el('a', { href: p.url, target: '_blank', rel: 'noopener' }, 'port ' + p.port + (p.label ? ' — ' + p.label : '')), ' ', el('code', {}, p.url)));
    }
    if (pod.other_ports) {
      const port = el('input', { type: 'number', min: '1', max: '65535', placeholder: 'port', 'aria-label': 'port of ' + pod.pod });
      const open = el('button', {
        type: 'button',
        onclick: () => {
          const n = Number(port.value);
          if (!Number.isInteger(n) || n < 1 || n > 65535) return;
          window.open(me.pod_url_template.replace('{pod}', pod.pod).replace('{port}', String(n)), '_blank', 'noopener');
        },
      }, 'Open');
      ports.append(el('li', {}, 'any other port: ', port, ' ', open));
    }
    item.append(ports);
    list.append(item);
  }
}

function renderTokens(tokens) {
  const body = $('tokens');
  body.replaceChildren();
  if (!tokens.length) {
    body.append(el('tr', {}, el('td', { colspan: '6' }, 'No API tokens yet.')));
  }
  for (const t of tokens) {
    const actions = el('td');
    if (t.state === 'active') {
      actions.append(el('button', {
        type: 'button',
        class: 'revoke',
        onclick: async () => {
          if (!window.confirm('Revoke "' + t.name + '"? Every CLI using it stops working.')) return;
          try {
            await api('DELETE', '/api/proxy-tokens/' + encodeURIComponent(t.id));
            await loadTokens();
          } catch (e) {
            show('error', 'Revoking failed: ' + e.message);
          }
        },
      }, 'Revoke'));
    }
    body.append(el('tr', { 'data-token': t.id, 'data-state': t.state },
      el('td', {}, t.name), el('td', {}, t.state), el('td', {}, t.created_at || ''),
      el('td', {}, t.expires_at || ''), el('td', {}, t.last_used_at || 'never'), actions));
  }
}

async function loadTokens() {
  renderTokens((await api('GET', '/api/proxy-tokens')).tokens);
}

async function create() {
  show('error', '');
  const name = $('name').value.trim();
  const days = Number($('days').value);
  try {
    const created = await api('POST', '/api/proxy-tokens', { name, expires_in_days: days });
    $('command').textContent = installCommand(created.init_url);
    $('created-name').textContent = created.name;
    $('created').hidden = false;
    $('copied').textContent = '';
    await loadTokens();
  } catch (e) {
    show('error', 'Creating the token failed: ' + e.message);
  }
}

async function copy() {
  const text = $('command').textContent;
  try {
    await navigator.clipboard.writeText(text);
    $('copied').textContent = 'Copied.';
  } catch (e) {
    const range = document.createRange();
    range.selectNodeContents($('command'));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    $('copied').textContent = 'Selected: press Ctrl-C (⌘-C) to copy.';
  }
}

async function main() {
  $('name').value = 'CLI Setup - ' + new Date().toLocaleDateString();
  $('create').addEventListener('click', create);
  $('copy').addEventListener('click', copy);
  let me;
  try {
    me = await api('GET', '/api/me');
  } catch (e) {
    if (e.status === 401) {
      $('signed-out').hidden = false;
      return;
    }
    show('error', 'Loading failed: ' + e.message);
    return;
  }
  $('who').textContent = me.user + (me.email ? ' <' + me.email + '>' : '');
  $('signed-in').hidden = false;
  renderPods(me);
  try {
    await loadTokens();
  } catch (e) {
    show('error', 'Loading your API tokens failed: ' + e.message);
  }
  document.body.dataset.ready = 'true';
}

main();
