/**
 * ANSI escape handling for the log view: SGR colours and styles become spans, every other escape is dropped.
 */

export interface IAnsiState {
  /** 0–15: a palette colour (a CSS class); a string: an explicit `rgb(...)`; null: the default. */
  fg: number | string | null;
  bg: number | string | null;
  bold: boolean;
  dim: boolean;
  italic: boolean;
  underline: boolean;
  inverse: boolean;
}

export interface IAnsiSpan extends IAnsiState {
  text: string;
}

export const DEFAULT_STATE: Readonly<IAnsiState> = Object.freeze({
  fg: null,
  bg: null,
  bold: false,
  dim: false,
  italic: false,
  underline: false,
  inverse: false
});

// CSI sequences (SGR is the `m` one), OSC strings, and two-byte escapes.
const ESCAPE = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[()#][A-Za-z0-9]|\x1b[@-Z\\-_]/g;

const CUBE = [0, 95, 135, 175, 215, 255];

/** The xterm 256-colour palette entry for 16–255 as `rgb(...)`; 0–15 stay palette indices. */
function color256(n: number): number | string {
  if (n < 16) {
    return n;
  }
  if (n < 232) {
    const i = n - 16;
    return `rgb(${CUBE[Math.floor(i / 36)]},${CUBE[Math.floor(i / 6) % 6]},${CUBE[i % 6]})`;
  }
  const v = 8 + (n - 232) * 10;
  return `rgb(${v},${v},${v})`;
}

export function isDefault(s: IAnsiState): boolean {
  return (
    s.fg === null && s.bg === null && !s.bold && !s.dim && !s.italic && !s.underline && !s.inverse
  );
}

/** Apply one SGR parameter list (`1;31`, `38;5;208`, `38;2;r;g;b`) to a state, returning the new state. */
export function applySgr(state: IAnsiState, params: string): IAnsiState {
  const s: IAnsiState = { ...state };
  const codes = params === '' ? [0] : params.split(/[;:]/).map(p => (p === '' ? 0 : parseInt(p, 10)));
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) {
      Object.assign(s, DEFAULT_STATE);
    } else if (c === 1) {
      s.bold = true;
    } else if (c === 2) {
      s.dim = true;
    } else if (c === 3) {
      s.italic = true;
    } else if (c === 4) {
      s.underline = true;
    } else if (c === 7) {
      s.inverse = true;
    } else if (c === 22) {
      s.bold = false;
      s.dim = false;
    } else if (c === 23) {
      s.italic = false;
    } else if (c === 24) {
      s.underline = false;
    } else if (c === 27) {
      s.inverse = false;
    } else if (c >= 30 && c <= 37) {
      s.fg = c - 30;
    } else if (c === 39) {
      s.fg = null;
    } else if (c >= 40 && c <= 47) {
      s.bg = c - 40;
    } else if (c === 49) {
      s.bg = null;
    } else if (c >= 90 && c <= 97) {
      s.fg = c - 90 + 8;
    } else if (c >= 100 && c <= 107) {
      s.bg = c - 100 + 8;
    } else if (c === 38 || c === 48) {
      let value: number | string | null = null;
      if (codes[i + 1] === 5 && i + 2 < codes.length) {
        value = color256(codes[i + 2]);
        i += 2;
      } else if (codes[i + 1] === 2 && i + 4 < codes.length) {
        value = `rgb(${codes[i + 2]},${codes[i + 3]},${codes[i + 4]})`;
        i += 4;
      } else {
        i = codes.length;
      }
      if (c === 38) {
        s.fg = value;
      } else {
        s.bg = value;
      }
    }
  }
  return s;
}

/** What a terminal shows for a line holding carriage returns: the text after the last one that is followed by text. */
export function resolveCarriageReturns(line: string): string {
  if (line.indexOf('\r') < 0) {
    return line;
  }
  const parts = line.split('\r');
  for (let i = parts.length - 1; i >= 0; i--) {
    if (parts[i] !== '') {
      return parts[i];
    }
  }
  return '';
}

/** Split one line into styled spans, starting from `state`; returns the spans and the state at the line's end. */
export function parseAnsi(
  line: string,
  state: IAnsiState = DEFAULT_STATE
): { spans: IAnsiSpan[]; state: IAnsiState } {
  const text = resolveCarriageReturns(line);
  const spans: IAnsiSpan[] = [];
  if (text.indexOf('\x1b') < 0) {
    if (text) {
      spans.push({ ...state, text });
    }
    return { spans, state };
  }
  let current = state;
  let last = 0;
  ESCAPE.lastIndex = 0;
  let m: RegExpExecArray | null;
  while ((m = ESCAPE.exec(text)) !== null) {
    if (m.index > last) {
      spans.push({ ...current, text: text.slice(last, m.index) });
    }
    if (m[2] === 'm') {
      current = applySgr(current, m[1]);
    }
    last = ESCAPE.lastIndex;
  }
  if (last < text.length) {
    spans.push({ ...current, text: text.slice(last) });
  }
  return { spans, state: current };
}

/** The line as plain text (escapes removed, carriage returns resolved), for search and copy. */
export function stripAnsi(line: string): string {
  const text = resolveCarriageReturns(line);
  return text.indexOf('\x1b') < 0 ? text : text.replace(ESCAPE, '');
}

/** The state after a whole line, without building spans (used while appending). */
export function stateAfter(line: string, state: IAnsiState): IAnsiState {
  let current = state;
  ESCAPE.lastIndex = 0;
  let m: RegExpExecArray | null;
  while ((m = ESCAPE.exec(line)) !== null) {
    if (m[2] === 'm') {
      current = applySgr(current, m[1]);
    }
  }
  return current;
}
