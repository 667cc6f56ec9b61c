/**
 * A terminal-like, virtualized log view: only the rows in sight are in the DOM, redrawn at most once a frame, so a
 * job printing hundreds of thousands of lines keeps the page responsive. Follows the end unless the user scrolls up;
 * renders ANSI colours; searches with highlighted matches.
 */

import { Widget } from '@lumino/widgets';

import { IAnsiSpan, parseAnsi } from './ansi';
import { LogBuffer } from './logbuffer';

const OVERSCAN = 20;

const raf: (cb: () => void) => unknown =
  typeof requestAnimationFrame === 'function' ? cb => requestAnimationFrame(cb) : cb => setTimeout(cb, 16);

function spanClass(s: IAnsiSpan): string {
  const classes: string[] = [];
  let fg = s.fg;
  let bg = s.bg;
  if (s.inverse) {
    [fg, bg] = [bg ?? 'inverse-fg', fg ?? 'inverse-bg'];
  }
  if (typeof fg === 'number') {
    classes.push(`jp-LaunchLog-fg${fg}`);
  } else if (fg === 'inverse-fg') {
    classes.push('jp-LaunchLog-fgInverse');
  }
  if (typeof bg === 'number') {
    classes.push(`jp-LaunchLog-bg${bg}`);
  } else if (bg === 'inverse-bg') {
    classes.push('jp-LaunchLog-bgInverse');
  }
  if (s.bold) {
    classes.push('jp-LaunchLog-bold');
  }
  if (s.dim) {
    classes.push('jp-LaunchLog-dim');
  }
  if (s.italic) {
    classes.push('jp-LaunchLog-italic');
  }
  if (s.underline) {
    classes.push('jp-LaunchLog-underline');
  }
  return classes.join(' ');
}

export class LogView extends Widget {
  constructor(readonly buffer = new LogBuffer()) {
    super();
    this.addClass('jp-LaunchLog');

    const bar = document.createElement('div');
    bar.className = 'jp-LaunchLog-toolbar';
    bar.setAttribute('role', 'toolbar');
    bar.setAttribute('aria-label', 'Log controls');

    this._followButton = document.createElement('button');
    this._followButton.className = 'jp-LaunchLog-follow jp-mod-styled';
    this._followButton.type = 'button';
    this._followButton.title = 'Follow the end of the log (End); scroll up to pause';
    this._followButton.addEventListener('click', () => this.setFollow(!this._follow));

    this._searchInput = document.createElement('input');
    this._searchInput.className = 'jp-LaunchLog-search jp-mod-styled';
    this._searchInput.type = 'search';
    this._searchInput.placeholder = 'Search log';
    this._searchInput.setAttribute('aria-label', 'Search the log');
    this._searchInput.addEventListener('input', () => this._runSearch());
    this._searchInput.addEventListener('keydown', e => {
      if (e.key === 'Enter') {
        e.preventDefault();
        this.gotoMatch(e.shiftKey ? -1 : 1);
      } else if (e.key === 'Escape') {
        this._searchInput.value = '';
        this._runSearch();
      }
    });

    const prev = document.createElement('button');
    prev.className = 'jp-mod-styled jp-LaunchLog-prev';
    prev.type = 'button';
    prev.textContent = '↑';
    prev.title = 'Previous match (Shift+Enter)';
    prev.setAttribute('aria-label', 'Previous match');
    prev.addEventListener('click', () => this.gotoMatch(-1));
    const next = document.createElement('button');
    next.className = 'jp-mod-styled jp-LaunchLog-next';
    next.type = 'button';
    next.textContent = '↓';
    next.title = 'Next match (Enter)';
    next.setAttribute('aria-label', 'Next match');
    next.addEventListener('click', () => this.gotoMatch(1));

    this._matchLabel = document.createElement('span');
    this._matchLabel.className = 'jp-LaunchLog-matches';
    this._matchLabel.setAttribute('aria-live', 'polite');

    this._lineCount = document.createElement('span');
    this._lineCount.className = 'jp-LaunchLog-count';

    bar.append(this._followButton, this._searchInput, prev, next, this._matchLabel, this._lineCount);

    this._scroller = document.createElement('div');
    this._scroller.className = 'jp-LaunchLog-scroller';
    this._scroller.tabIndex = 0;
    this._scroller.setAttribute('role', 'log');
    this._scroller.setAttribute('aria-label', 'Job log');
    this._sizer = document.createElement('div');
    this._sizer.className = 'jp-LaunchLog-sizer';
    this._rows = document.createElement('div');
    this._rows.className = 'jp-LaunchLog-rows';
    this._sizer.appendChild(this._rows);
    this._scroller.appendChild(this._sizer);
    this._scroller.addEventListener('scroll', () => this._onScroll(), { passive: true });
    this._scroller.addEventListener('keydown', e => this._onKeydown(e));

    this.node.append(bar, this._scroller);
    this.setFollow(true);
  }

  get follow(): boolean {
    return this._follow;
  }

  setFollow(follow: boolean): void {
    this._follow = follow;
    this._followButton.textContent = follow ? 'Pause' : 'Follow';
    this._followButton.setAttribute('aria-pressed', String(follow));
    this.toggleClass('jp-mod-following', follow);
    this.scheduleRender();
  }

  /** Add log text; the view redraws on the next frame. */
  append(text: string): void {
    const before = this.buffer.length;
    const first = this.buffer.append(text);
    if (this._query && first > 0) {
      // Only lines that changed are searched again (the growing last line may have been counted already).
      const from = Math.min(first, Math.max(0, before - 1));
      this._matches = this._matches.filter(i => i < from).concat(this.buffer.search(this._query, from));
    } else if (this._query) {
      this._matches = this.buffer.search(this._query);
    }
    this.scheduleRender();
  }

  clear(): void {
    this.buffer.clear();
    this._matches = [];
    this._current = -1;
    this.scheduleRender();
  }

  scheduleRender(): void {
    if (this._pending) {
      return;
    }
    this._pending = true;
    raf(() => {
      this._pending = false;
      this.render();
    });
  }

  search(query: string): void {
    this._searchInput.value = query;
    this._runSearch();
  }

  get matches(): ReadonlyArray<number> {
    return this._matches;
  }

  /** Move to the next (1) or previous (-1) match and show it. */
  gotoMatch(direction: 1 | -1): void {
    if (!this._matches.length) {
      return;
    }
    const n = this._matches.length;
    this._current = this._current < 0 ? (direction > 0 ? 0 : n - 1) : (this._current + direction + n) % n;
    this.setFollow(false);
    this.scrollToLine(this._matches[this._current]);
  }

  scrollToLine(line: number): void {
    const h = this._rowHeight();
    const view = this._scroller.clientHeight || h * 20;
    this._scroller.scrollTop = Math.max(0, line * h - view / 2);
    this._expectedScrollTop = this._scroller.scrollTop;
    this.scheduleRender();
  }

  /** Draw the rows in sight. */
  render(): void {
    const h = this._rowHeight();
    const n = this.buffer.length;
    this._sizer.style.height = `${n * h}px`;
    this._sizer.style.minWidth = `${this.buffer.maxLength + 2}ch`;
    const viewHeight = this._scroller.clientHeight || h * 40;
    let top: number;
    if (this._follow) {
      top = Math.max(0, n * h - viewHeight);
      this._scroller.scrollTop = top;
      this._expectedScrollTop = this._scroller.scrollTop;
    } else {
      top = this._scroller.scrollTop;
    }
    const viewRows = Math.ceil(viewHeight / h);
    const first = Math.max(0, Math.floor(top / h) - OVERSCAN);
    const last = Math.min(n, first + viewRows + 2 * OVERSCAN);
    this._rows.style.transform = `translateY(${first * h}px)`;

    const current = this._current >= 0 ? this._matches[this._current] : -1;
    const matchSet = this._query ? new Set(this._matchesIn(first, last)) : null;
    const fragment = document.createDocumentFragment();
    for (let i = first; i < last; i++) {
      fragment.appendChild(this._renderRow(i, matchSet !== null && matchSet.has(i), i === current));
    }
    this._rows.replaceChildren(fragment);
    this._rendered = [first, last];

    const trimmed = this.buffer.trimmed ? ` (${this.buffer.trimmed.toLocaleString()} earlier dropped)` : '';
    this._lineCount.textContent = `${n.toLocaleString()} lines${trimmed}`;
    this._matchLabel.textContent = this._query
      ? this._matches.length
        ? `${this._current >= 0 ? this._current + 1 : 0} of ${this._matches.length}`
        : 'no matches'
      : '';
  }

  /** The first and last (exclusive) line drawn. */
  get renderedRange(): [number, number] {
    return this._rendered;
  }

  protected onAfterAttach(): void {
    this._rowHeightPx = 0;
    if (typeof ResizeObserver !== 'undefined') {
      this._resizeObserver = new ResizeObserver(() => this.scheduleRender());
      this._resizeObserver.observe(this._scroller);
    }
    this.scheduleRender();
  }

  protected onBeforeDetach(): void {
    this._resizeObserver?.disconnect();
    this._resizeObserver = null;
  }

  protected onAfterShow(): void {
    this.scheduleRender();
  }

  private _renderRow(i: number, isMatch: boolean, isCurrent: boolean): HTMLElement {
    const row = document.createElement('div');
    row.className = 'jp-LaunchLog-row';
    if (isMatch) {
      row.classList.add('jp-mod-match');
    }
    if (isCurrent) {
      row.classList.add('jp-mod-current');
    }
    const { spans } = parseAnsi(this.buffer.line(i), this.buffer.stateAt(i));
    for (const span of spans) {
      const cls = spanClass(span);
      const style = this._inlineColours(span);
      if (!cls && !style && !isMatch) {
        row.appendChild(document.createTextNode(span.text));
        continue;
      }
      const el = document.createElement('span');
      if (cls) {
        el.className = cls;
      }
      if (style) {
        el.setAttribute('style', style);
      }
      if (isMatch) {
        this._highlight(el, span.text);
      } else {
        el.textContent = span.text;
      }
      row.appendChild(el);
    }
    if (!spans.length) {
      row.textContent = '\u200b';
    }
    return row;
  }

  private _inlineColours(s: IAnsiSpan): string {
    let style = '';
    const fg = s.inverse ? s.bg : s.fg;
    const bg = s.inverse ? s.fg : s.bg;
    if (typeof fg === 'string' && fg.startsWith('rgb')) {
      style += `color:${fg};`;
    }
    if (typeof bg === 'string' && bg.startsWith('rgb')) {
      style += `background-color:${bg};`;
    }
    return style;
  }

  private _highlight(el: HTMLElement, text: string): void {
    const needle = this._query.toLowerCase();
    const lower = text.toLowerCase();
    let pos = 0;
    let at = lower.indexOf(needle);
    while (at >= 0 && needle) {
      if (at > pos) {
        el.appendChild(document.createTextNode(text.slice(pos, at)));
      }
      const mark = document.createElement('mark');
      mark.className = 'jp-LaunchLog-mark';
      mark.textContent = text.slice(at, at + needle.length);
      el.appendChild(mark);
      pos = at + needle.length;
      at = lower.indexOf(needle, pos);
    }
    if (pos < text.length) {
      el.appendChild(document.createTextNode(text.slice(pos)));
    }
  }

  private _matchesIn(first: number, last: number): number[] {
    // Matches are sorted: binary search for the first one in view.
    let lo = 0;
    let hi = this._matches.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this._matches[mid] < first) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    const out: number[] = [];
    for (let k = lo; k < this._matches.length && this._matches[k] < last; k++) {
      out.push(this._matches[k]);
    }
    return out;
  }

  private _runSearch(): void {
    this._query = this._searchInput.value;
    this._matches = this._query ? this.buffer.search(this._query) : [];
    this._current = -1;
    if (this._matches.length) {
      this.gotoMatch(1);
    } else {
      this.scheduleRender();
    }
  }

  private _rowHeight(): number {
    if (!this._rowHeightPx) {
      const probe = document.createElement('div');
      probe.className = 'jp-LaunchLog-row';
      probe.textContent = 'M';
      this._rows.appendChild(probe);
      this._rowHeightPx = probe.getBoundingClientRect().height || 0;
      probe.remove();
      if (!this._rowHeightPx) {
        // Not laid out yet (hidden, or in tests): use the CSS default and measure again next time.
        return 18;
      }
    }
    return this._rowHeightPx;
  }

  private _onScroll(): void {
    const s = this._scroller;
    const atBottom = s.scrollHeight - s.scrollTop - s.clientHeight < this._rowHeight();
    if (Math.abs(s.scrollTop - this._expectedScrollTop) > 1) {
      // The user scrolled: pause when they leave the end, follow again when they come back to it.
      if (atBottom !== this._follow) {
        this.setFollow(atBottom);
      }
    }
    this._expectedScrollTop = s.scrollTop;
    const [first, last] = this._rendered;
    const h = this._rowHeight();
    const top = Math.floor(s.scrollTop / h);
    const bottom = Math.ceil((s.scrollTop + s.clientHeight) / h);
    if (top < first + OVERSCAN / 2 || bottom > last - OVERSCAN / 2) {
      this.scheduleRender();
    }
  }

  private _onKeydown(e: KeyboardEvent): void {
    if (e.key === 'End' && !e.shiftKey) {
      e.preventDefault();
      this.setFollow(true);
    } else if (e.key === 'Home' && !e.shiftKey) {
      e.preventDefault();
      this.setFollow(false);
      this.scrollToLine(0);
    } else if ((e.ctrlKey || e.metaKey) && e.key === 'f') {
      e.preventDefault();
      e.stopPropagation();
      this._searchInput.focus();
    }
  }

  private _resizeObserver: ResizeObserver | null = null;
  private _follow = true;
  private _pending = false;
  private _query = '';
  private _matches: number[] = [];
  private _current = -1;
  private _rowHeightPx = 0;
  private _expectedScrollTop = 0;
  private _rendered: [number, number] = [0, 0];
  private _followButton: HTMLButtonElement;
  private _searchInput: HTMLInputElement;
  private _matchLabel: HTMLSpanElement;
  private _lineCount: HTMLSpanElement;
  private _scroller: HTMLDivElement;
  private _sizer: HTMLDivElement;
  private _rows: HTMLDivElement;
}
