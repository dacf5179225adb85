// JSON text for people: lays out a JSON document with two-space indents by
// walking its text, never through JSON.parse and back, so numbers of any
// size and the order of members stay exactly as the server stored them.

/** Whether `text` is one JSON document; the parser's message if not. */
export function check(text) {
  if (text.trim() === '') return 'the value is empty: write a JSON document (null, 1, "text", {...})';
  try {
    JSON.parse(text);
    return null;
  } catch (e) {
    return `not valid JSON: ${e.message}`;
  }
}

/** `text` (valid JSON) laid out with two-space indents. */
export function pretty(text) {
  let out = '';
  let depth = 0;
  let inString = false;
  const newline = () => '\n' + '  '.repeat(depth);
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === '\\') {
        out += text[++i];
      } else if (c === '"') {
        inString = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        inString = true;
        out += c;
        break;
      case '{':
      case '[': {
        // An empty container stays on one line.
        let j = i + 1;
        while (j < text.length && /\s/.test(text[j])) j++;
        if (text[j] === (c === '{' ? '}' : ']')) {
          out += c + text[j];
          i = j;
        } else {
          depth++;
          out += c + newline();
        }
        break;
      }
      case '}':
      case ']':
        depth--;
        out += newline() + c;
        break;
      case ',':
        out += ',' + newline();
        break;
      case ':':
        out += ': ';
        break;
      case ' ':
      case '\t':
      case '\n':
      case '\r':
        break;
      default:
        out += c;
    }
  }
  return out;
}
