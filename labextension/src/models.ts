/**
 * View models for the panel and the job view: a queue's paged job list, a job's metric series, a live log follower,
 * and the small formatting rules the views share. No DOM here.
 */

import { ISignal, Signal } from '@lumino/signaling';

import { FINAL_STATES, IJob, IMetricRecord, LaunchAPI, parseLogFrame } from './api';

// ------------------------------------------------------------------ formatting

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) {
    return '—';
  }
  if (seconds < 1) {
    return `${Math.round(seconds * 1000)} ms`;
  }
  if (seconds < 60) {
    return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  }
  const m = Math.floor(seconds / 60);
  if (m < 60) {
    return `${m} m ${Math.floor(seconds % 60)} s`;
  }
  const h = Math.floor(m / 60);
  return `${h} h ${m % 60} m`;
}

/** "12 s ago", "5 m ago", then a date. `now` and `t` in seconds since the epoch. */
export function formatAgo(t: number | null | undefined, now = Date.now() / 1000): string {
  if (!t) {
    return '—';
  }
  const d = Math.max(0, now - t);
  if (d < 5) {
    return 'just now';
  }
  if (d < 60) {
    return `${Math.floor(d)} s ago`;
  }
  if (d < 3600) {
    return `${Math.floor(d / 60)} m ago`;
  }
  if (d < 86400) {
    return `${Math.floor(d / 3600)} h ago`;
  }
  return new Date(t * 1000).toLocaleString();
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function isFinal(job: Pick<IJob, 'state'>): boolean {
  return FINAL_STATES.indexOf(job.state) >= 0;
}

/** A job's running time: from start to finish, or to now while it runs. */
export function jobDuration(job: IJob, now = Date.now() / 1000): number | null {
  if (!job.started_at) {
    return null;
  }
  return (job.finished_at ?? now) - job.started_at;
}

export function jobTitle(job: IJob): string {
  return job.name || job.spec?.notebook || job.id;
}

/** Who submitted the job, as people know them: the identity's display name, else its username. */
export function ownerName(job: Pick<IJob, 'owner' | 'owner_name'>): string {
  return job.owner_name || job.owner || '';
}

/** The resources the job asked for, as a short line: `2 CPUs · 1 GPU · 8Gi`; '' when it asked for none. */
export function resourcesText(job: Pick<IJob, 'spec'>): string {
  const r = (job.spec?.resources || {}) as { cpu?: number | string | null; gpu?: number | null; memory?: string | null };
  const parts: string[] = [];
  if (r.cpu) {
    parts.push(`${r.cpu} CPU${Number(r.cpu) === 1 ? '' : 's'}`);
  }
  if (r.gpu) {
    parts.push(`${r.gpu} GPU${r.gpu === 1 ? '' : 's'}`);
  }
  if (r.memory) {
    parts.push(String(r.memory));
  }
  return parts.join(' · ');
}

// ------------------------------------------------------------------ job list

/**
 * The jobs of one queue, newest first. `refresh()` re-reads the newest page and merges it (new jobs on top, changed
 * states in place) without dropping older pages the user loaded with `loadMore()`.
 */
export class JobListModel {
  constructor(
    readonly api: LaunchAPI,
    readonly queue: string,
    readonly pageSize = 20
  ) {}

  get jobs(): ReadonlyArray<IJob> {
    return this._jobs;
  }

  get hasMore(): boolean {
    return this._next !== null;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get error(): string | null {
    return this._error;
  }

  async refresh(): Promise<void> {
    try {
      const page = await this.api.listJobs({ queue: this.queue, limit: this.pageSize });
      this._error = null;
      // Once older pages are loaded, their cursor still bounds the list; a fresh first page does not move it.
      this._merge(page.jobs, this._pages > 1 ? this._next : page.next);
      this._pages = Math.max(this._pages, 1);
    } catch (err) {
      this._error = (err as Error).message;
      this._changed.emit();
    }
  }

  async loadMore(): Promise<void> {
    if (this._next === null) {
      return;
    }
    const page = await this.api.listJobs({ queue: this.queue, limit: this.pageSize, before: this._next });
    this._pages++;
    this._merge(page.jobs, page.next);
  }

  private _merge(incoming: IJob[], next: number | null): void {
    const byId = new Map<string, IJob>();
    for (const job of this._jobs) {
      byId.set(job.id, job);
    }
    let changed = false;
    for (const job of incoming) {
      const old = byId.get(job.id);
      if (!old || !sameJob(old, job)) {
        changed = true;
      }
      byId.set(job.id, job);
    }
    if (changed || next !== this._next) {
      this._jobs = Array.from(byId.values()).sort((a, b) => b.seq - a.seq);
      this._next = next;
      this._changed.emit();
    }
  }

  private _pages = 0;
  private _jobs: IJob[] = [];
  private _next: number | null = null;
  private _error: string | null = null;
  private _changed = new Signal<this, void>(this);
}

function sameJob(a: IJob, b: IJob): boolean {
  return (
    a.state === b.state &&
    a.reason === b.reason &&
    a.message === b.message &&
    a.started_at === b.started_at &&
    a.finished_at === b.finished_at &&
    a.attempt === b.attempt
  );
}

// ------------------------------------------------------------------ metrics

export interface ISeries {
  key: string;
  /** x: the step when the job gave one, else the record's index. */
  points: Array<[number, number]>;
}

/** A job's metric records as one numeric series per key; records are taken once each (by id). */
export class MetricsModel {
  get series(): ReadonlyArray<ISeries> {
    return Array.from(this._series.values());
  }

  get lastId(): number {
    return this._lastId;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  add(records: IMetricRecord[]): void {
    let added = false;
    for (const r of records) {
      if (r.id <= this._lastId) {
        continue;
      }
      this._lastId = r.id;
      const x = r.step ?? this._count;
      this._count++;
      for (const [key, raw] of Object.entries(r.data || {})) {
        const value = typeof raw === 'number' ? raw : typeof raw === 'string' ? parseFloat(raw) : NaN;
        if (!isFinite(value)) {
          continue;
        }
        let s = this._series.get(key);
        if (!s) {
          s = { key, points: [] };
          this._series.set(key, s);
        }
        s.points.push([x, value]);
        added = true;
      }
    }
    if (added) {
      this._changed.emit();
    }
  }

  private _series = new Map<string, ISeries>();
  private _lastId = 0;
  private _count = 0;
  private _changed = new Signal<this, void>(this);
}

// ------------------------------------------------------------------ live log

export interface ILogFollowerOptions {
  api: LaunchAPI;
  jobId: string;
  /** Poll interval when the WebSocket cannot be used, in ms. */
  pollInterval?: number;
  WebSocket?: typeof WebSocket;
}

/** A job state change the live stream reported (`{"event": "state" | "end", ...}`). */
export interface IStreamEvent {
  event: 'state' | 'end';
  state: string;
  reason: string | null;
  message?: string | null;
  exit_code?: number | null;
}

/**
 * Follows a job's log from offset 0: the WebSocket stream first, resumed from the last byte offset after a drop, and
 * HTTP pages from that offset when the socket keeps failing. Emits each byte of the log exactly once, as text
 * (a UTF-8 character split across chunks is decoded whole).
 */
export class LogFollower {
  constructor(options: ILogFollowerOptions) {
    this._api = options.api;
    this._jobId = options.jobId;
    this._pollInterval = options.pollInterval ?? 500;
    this._WebSocket =
      options.WebSocket ?? options.api.transport.WebSocket ?? (typeof WebSocket !== 'undefined' ? WebSocket : undefined);
  }

  /** New text, in order. */
  get received(): ISignal<this, string> {
    return this._received;
  }

  /** State changes pushed by the stream (sooner than a poll of the job). */
  get stateChanged(): ISignal<this, IStreamEvent> {
    return this._stateChanged;
  }

  /** Emitted once the log is complete (the job finished and everything was read). */
  get ended(): ISignal<this, void> {
    return this._ended;
  }

  /** Bytes taken so far: the offset to resume from. */
  get offset(): number {
    return this._offset;
  }

  get isDone(): boolean {
    return this._done;
  }

  start(): void {
    if (this._disposed || this._done) {
      return;
    }
    if (this._WebSocket && this._socketFailures < 3) {
      this._connect();
    } else {
      void this._poll();
    }
  }

  /** Told by the job view when the job reached a final state, so a poller can stop at the log's end. */
  jobFinished(): void {
    this._jobFinal = true;
  }

  dispose(): void {
    this._disposed = true;
    this._socket?.close();
    this._socket = null;
    if (this._timer) {
      clearTimeout(this._timer);
    }
    Signal.clearData(this);
  }

  /** Take the bytes at `offset`, dropping what was already taken (a resumed stream may repeat a little). */
  take(offset: number, bytes: Uint8Array): void {
    const end = offset + bytes.length;
    if (end <= this._offset) {
      return;
    }
    const fresh = offset < this._offset ? bytes.subarray(this._offset - offset) : bytes;
    this._offset = end;
    const text = this._decoder.decode(fresh, { stream: true });
    if (text) {
      this._received.emit(text);
    }
  }

  /** Handle one WebSocket message (binary: log bytes; text: a state or end event). */
  handleMessage(data: unknown): void {
    if (typeof data === 'string') {
      let event: IStreamEvent;
      try {
        event = JSON.parse(data);
      } catch {
        return;
      }
      if (event.event === 'state' || event.event === 'end') {
        this._stateChanged.emit(event);
      }
      if (event.event === 'end') {
        this._finish();
      }
      return;
    }
    if (data instanceof ArrayBuffer || data instanceof Uint8Array) {
      const chunk = parseLogFrame(data);
      this.take(chunk.offset, chunk.bytes);
    }
  }

  private _connect(): void {
    const WS = this._WebSocket as typeof WebSocket;
    const socket = new WS(this._api.logStreamUrl(this._jobId, this._offset));
    socket.binaryType = 'arraybuffer';
    this._socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this._socketFailures = 0;
    };
    socket.onmessage = (event: MessageEvent) => this.handleMessage(event.data);
    socket.onclose = () => {
      if (this._socket !== socket) {
        return;
      }
      this._socket = null;
      if (this._disposed || this._done) {
        return;
      }
      if (!opened) {
        this._socketFailures++;
      }
      // Resume from the last offset: at once after a drop; by HTTP once the socket has failed three times running.
      this._timer = setTimeout(() => this.start(), opened ? 100 : 500 * this._socketFailures);
    };
  }

  private async _poll(): Promise<void> {
    if (this._disposed || this._done) {
      return;
    }
    try {
      const read = await this._api.readLog(this._jobId, this._offset);
      for (const chunk of read.chunks) {
        this.take(chunk.offset, chunk.bytes);
      }
      if (read.done || (this._jobFinal && !read.chunks.length)) {
        this._finish();
        return;
      }
      this._timer = setTimeout(() => void this._poll(), read.chunks.length ? 0 : this._pollInterval);
    } catch {
      this._timer = setTimeout(() => void this._poll(), this._pollInterval * 4);
    }
  }

  private _finish(): void {
    if (this._done) {
      return;
    }
    this._done = true;
    const tail = this._decoder.decode();
    if (tail) {
      this._received.emit(tail);
    }
    this._socket?.close();
    this._socket = null;
    this._ended.emit();
  }

  private _api: LaunchAPI;
  private _jobId: string;
  private _pollInterval: number;
  private _WebSocket: typeof WebSocket | undefined;
  private _socket: WebSocket | null = null;
  private _socketFailures = 0;
  private _offset = 0;
  private _decoder = new TextDecoder();
  private _done = false;
  private _jobFinal = false;
  private _disposed = false;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _received = new Signal<this, string>(this);
  private _stateChanged = new Signal<this, IStreamEvent>(this);
  private _ended = new Signal<this, void>(this);
}
