/**
 * The log view's model: a job's output as lines (the last one possibly still growing), with the ANSI state at the
 * start of each line that needs one, and search. Appending is linear in the new text; nothing else is re-read.
 */

import { DEFAULT_STATE, IAnsiState, isDefault, stateAfter, stripAnsi } from './ansi';

export const DEFAULT_MAX_LINES = 1_000_000;

export class LogBuffer {
  constructor(readonly maxLines = DEFAULT_MAX_LINES) {}

  /** Complete lines, oldest first. */
  private _lines: string[] = [];
  /** Text after the last newline. */
  private _partial = '';
  /** ANSI state at the start of line i, only where it is not the default. */
  private _starts = new Map<number, IAnsiState>();
  private _state: IAnsiState = DEFAULT_STATE;
  private _trimmed = 0;
  private _maxLength = 0;

  /** Lines shown, the growing last one included. */
  get length(): number {
    return this._lines.length + (this._partial ? 1 : 0);
  }

  /** Lines dropped from the head to stay under maxLines. */
  get trimmed(): number {
    return this._trimmed;
  }

  /** The longest line seen, in characters (for the horizontal scroll width). */
  get maxLength(): number {
    return this._maxLength;
  }

  line(i: number): string {
    return i < this._lines.length ? this._lines[i] : this._partial;
  }

  stateAt(i: number): IAnsiState {
    return this._starts.get(i) ?? (i >= this._lines.length ? this._state : DEFAULT_STATE);
  }

  plain(i: number): string {
    return stripAnsi(this.line(i));
  }

  /** Add text; returns the index of the first line that changed. */
  append(text: string): number {
    const firstChanged = this._lines.length;
    if (!text) {
      return firstChanged;
    }
    if (text.indexOf('\r\n') >= 0) {
      text = text.replace(/\r\n/g, '\n');
    }
    const pieces = (this._partial + text).split('\n');
    this._partial = pieces.pop() as string;
    let state = this._state;
    let index = this._lines.length;
    let maxLength = this._maxLength;
    for (const line of pieces) {
      if (!isDefault(state)) {
        this._starts.set(index, state);
      }
      if (line.indexOf('\x1b') >= 0) {
        state = stateAfter(line, state);
      }
      if (line.length > maxLength) {
        maxLength = line.length;
      }
      this._lines.push(line);
      index++;
    }
    if (this._partial.length > maxLength) {
      maxLength = this._partial.length;
    }
    this._maxLength = maxLength;
    this._state = state;
    if (this._lines.length > this.maxLines) {
      this._trim(this._lines.length - this.maxLines + Math.floor(this.maxLines / 10));
      return 0;
    }
    return firstChanged;
  }

  clear(): void {
    this._lines = [];
    this._partial = '';
    this._starts.clear();
    this._state = DEFAULT_STATE;
    this._trimmed = 0;
    this._maxLength = 0;
  }

  /** Indices of lines from `from` on whose plain text contains `query` (case-insensitive). */
  search(query: string, from = 0): number[] {
    const hits: number[] = [];
    if (!query) {
      return hits;
    }
    const needle = query.toLowerCase();
    const n = this.length;
    for (let i = from; i < n; i++) {
      const raw = this.line(i);
      // Most lines are plain: test the raw text first, strip escapes only when there are some.
      const text = raw.indexOf('\x1b') >= 0 || raw.indexOf('\r') >= 0 ? stripAnsi(raw) : raw;
      if (text.toLowerCase().indexOf(needle) >= 0) {
        hits.push(i);
      }
    }
    return hits;
  }

  /** The whole log as plain text. */
  text(): string {
    const out: string[] = [];
    for (let i = 0; i < this.length; i++) {
      out.push(this.plain(i));
    }
    return out.join('\n');
  }

  private _trim(count: number): void {
    this._lines.splice(0, count);
    const starts = new Map<number, IAnsiState>();
    this._starts.forEach((state, i) => {
      if (i >= count) {
        starts.set(i - count, state);
      }
    });
    this._starts = starts;
    this._trimmed += count;
  }
}
