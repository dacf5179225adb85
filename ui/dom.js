// DOM helpers of the console. Everything from the server (keys, values,
// error messages) goes into the page through these as text: no helper
// here parses HTML, so a key that looks like markup stays text.

/** `document.getElementById`, failing loudly on a typo. */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`no element #${id}`);
  return node;
}

/**
 * Builds an element: `attrs` are set as attributes (`class`, `type`, …)
 * or, for `on*` names, as event listeners; `children` are nodes or
 * strings, and strings become text nodes.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Like `el`, in the SVG namespace. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      node.addEventListener(name.slice(2), value);
    } else {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

/** Replaces the children of `node` with `children`. */
export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Asks a yes/no question in the confirmation dialog; resolves to a bool. */
export function confirmAction(text, yesLabel = 'Delete') {
  const dialog = byId('confirm-dialog');
  byId('confirm-text').textContent = text;
  byId('confirm-yes').textContent = yesLabel;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    byId('confirm-no').focus();
  });
}

/** "in 5 s", "3 min ago": a short relative time to `ms` (unix ms). */
export function relative(ms) {
  const secs = Math.round((ms - Date.now()) / 1000);
  const abs = Math.abs(secs);
  const text = abs < 90 ? `${abs} s` : abs < 5400 ? `${Math.round(abs / 60)} min` : `${Math.round(abs / 3600)} h`;
  return secs >= 0 ? `in ${text}` : `${text} ago`;
}

/** A byte count for people: 512 B, 1.5 KiB, 2.0 MiB. */
export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
