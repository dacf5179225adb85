// The console's entry point: asks for the token when the server wants one
// (kept in sessionStorage, so only for this tab), then starts the panes.

import * as api from './api.js';
import { Charts } from './charts.js';
import { byId } from './dom.js';
import { Editor } from './editor.js';
import { Feed } from './feed.js';
import { KeyBrowser } from './keys.js';
import { Subscriptions } from './subscriptions.js';

let statusTimer = null;

/** A short note in the header; errors stay until the next note. */
function status(text, isError = false) {
  const node = byId('status');
  node.textContent = text;
  node.classList.toggle('error', isError);
  clearTimeout(statusTimer);
  if (!isError) statusTimer = setTimeout(() => (node.textContent = ''), 5000);
}

let started = false;

function startPanes() {
  if (started) return;
  started = true;
  byId('app').hidden = false;
  let editor = null;
  const keys = new KeyBrowser((key) => editor.open(key), status);
  editor = new Editor(keys, status);
  const feed = new Feed((key) => editor.open(key));
  const subs = new Subscriptions(status);
  const charts = new Charts();
  byId('new-key').addEventListener('click', () => editor.create());
  keys.list();
  feed.start();
  subs.start();
  charts.start();
  document.addEventListener('keydown', (e) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    if (e.key === '/' && !typing && !document.querySelector('dialog[open]')) {
      e.preventDefault();
      byId('search').focus();
    }
  });
}

/** Shows the token dialog; resolves once a token the server takes is set. */
function askToken(message = '') {
  const dialog = byId('token-dialog');
  byId('token-error').textContent = message;
  if (!dialog.open) dialog.showModal();
  byId('token').focus();
}

async function boot() {
  try {
    const version = await api.json('GET', 'system/version');
    byId('server-info').textContent = `server ${version.version} · ${location.host}`;
  } catch (e) {
    if (e.status === 401) {
      askToken(api.token() ? 'The saved token was refused; enter it again.' : '');
    } else {
      status(`cannot reach the server: ${e.message}`, true);
    }
    return;
  }
  byId('sign-out').hidden = !api.token();
  startPanes();
}

function setUp() {
  // A 401 during use (token changed on the server) asks again.
  api.setUnauthorizedHandler(() => askToken('The server refused the token; enter it again.'));
  byId('token-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    api.setToken(byId('token').value);
    try {
      await api.json('GET', 'system/version');
    } catch (err) {
      api.setToken(null);
      byId('token-error').textContent = err.status === 401 ? 'Wrong token.' : `Cannot check the token: ${err.message}`;
      return;
    }
    byId('token').value = '';
    byId('token-dialog').close();
    boot();
  });
  // The page is useless without a token; Escape does not dismiss the ask.
  byId('token-dialog').addEventListener('cancel', (e) => e.preventDefault());
  byId('sign-out').addEventListener('click', () => {
    api.setToken(null);
    location.reload();
  });
  boot();
}

setUp();
