/**
 * The typed client for the jupyter-launch REST API under `/launch/api/`.
 *
 * It knows nothing of widgets: it takes a transport (JupyterLab's ServerConnection in the app, a fake in tests)
 * and turns every server refusal into a `LaunchAPIError` whose message a user can read.
 */


import type { components, paths } from './generated/openapi';

/*
 * The request and response shapes come from the server's OpenAPI document (jupyter_launch/server/openapi.yaml),
 * turned into ./generated/openapi.d.ts by `jlpm build:openapi` before every tsc and jest run: a document change that
 * drifts from what the panel uses fails the build.
 */
type Schemas = components['schemas'];
type SubmitBody = NonNullable<paths['/launch/api/jobs']['post']['requestBody']>['content']['application/json'];
type LogPage = Schemas['LogPage'];
/** The JSON body of a 200 answer to GET on a documented path. */
type Answer<P extends keyof paths> = paths[P] extends {
  get: { responses: { 200: { content: { 'application/json': infer T } } } };
}
  ? T
  : never;

export type JobState = Schemas['Job']['state'];

export const FINAL_STATES: ReadonlyArray<string> = ['succeeded', 'failed', 'cancelled'];
export const ACTIVE_STATES: ReadonlyArray<string> = ['claimed', 'starting', 'running'];

/** A queue as the server sends it, with the job types it accepts (its config's `job_types`). */
export type IQueue = Schemas['Queue'] & { job_types: string[] };

export type IJob = Schemas['Job'];

/** A page of jobs, newest first. */
export interface IJobPage {
  jobs: IJob[];
  /** The `before` cursor for the next (older) page, or null at the end. */
  next: Schemas['JobPage']['next_before'];
  /** The `offset` of the next page in any sort, or null at the end. */
  nextOffset: Schemas['JobPage']['next_offset'];
}

/** The sort columns the server takes (`-` in front: descending). */
export const JOB_SORTS = ['submitted', 'name', 'state', 'queue', 'owner', 'job_type', 'started', 'finished'] as const;
export type JobSortColumn = (typeof JOB_SORTS)[number];

/**
 * What `GET /jobs` filters on, all on the server (so the CLI's `jupyter launch list` takes the same): `state` may list
 * states with commas; `q` is found in the name (any case) or starts the id; times are epoch seconds.
 */
export interface IJobQuery {
  queue?: string;
  state?: string;
  owner?: string;
  job_type?: string;
  q?: string;
  submitted_after?: number | null;
  submitted_before?: number | null;
  archived?: 'false' | 'true' | 'all';
  /** A column of JOB_SORTS, `-` in front for descending; newest first by default. */
  sort?: string;
  limit?: number;
  before?: number | null;
  offset?: number;
}

/** A piece of the log as exact bytes (the page's base64 or text `data`, or a WebSocket frame's payload). */
export interface ILogChunk extends Pick<LogPage['chunks'][number], 'offset' | 'stream'> {
  /** The chunk's exact bytes. */
  bytes: Uint8Array;
}

export interface ILogRead {
  chunks: ILogChunk[];
  /** The offset to read from next. */
  next: LogPage['next_offset'];
  /** True when the job is finished and the log was read to its end. */
  done: LogPage['done'];
}

export type IMetricRecord = Schemas['MetricRecord'];

export type IOutput = Schemas['Output'];

export type IResources = Schemas['Resources'];

export type ISchedule = Schemas['Schedule'];

export type ISweep = Schemas['Sweep'];

/** A schedule of a notebook by its path: the submit request, and when (five cron fields read in `tz`). */
export type IScheduleRequest = ISubmitRequest & { cron: string; tz: string };

/** What the submit form asks for: a notebook (its path in the Jupyter root), its queue, and how to run it. */
export type ISubmitRequest = Required<Pick<SubmitBody, 'notebook' | 'queue'>> & Schemas['SubmitOptions'];

/** What the client needs from the outside world: HTTP requests and WebSocket URLs under the server's base URL. */
export interface ITransport {
  request(path: string, init?: RequestInit): Promise<Response>;
  /** The ws:// URL for a path (token included when the server needs it). */
  wsUrl(path: string): string;
  /** The http URL for a path, for links. */
  httpUrl(path: string): string;
  WebSocket?: typeof WebSocket;
}

/** A refusal from the server (or no answer at all), with a sentence for the user. */
export class LaunchAPIError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly reason: string | null = null,
    readonly field: string | null = null
  ) {
    super(message);
    this.name = 'LaunchAPIError';
  }
}

/** A server that does not answer (the network, or a 5xx while it stops or starts): retry quietly, do not alarm. */
export function isDisconnected(err: unknown): boolean {
  return err instanceof LaunchAPIError && (err.status === 0 || err.status >= 500);
}

const API = 'launch/api';

function encodePath(path: string): string {
  return path
    .split('/')
    .map(p => encodeURIComponent(p))
    .join('/');
}

function query(params: Record<string, string | number | boolean | null | undefined>): string {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return parts.length ? `?${parts.join('&')}` : '';
}

/** The readable message for an error response body (JSON from our handlers or tornado's, or plain text). */
export function errorMessage(status: number, body: string): {
  message: string;
  reason: string | null;
  field: string | null;
} {
  let message = '';
  let reason: string | null = null;
  let field: string | null = null;
  try {
    const json = JSON.parse(body);
    if (json && typeof json === 'object') {
      const err = typeof json.error === 'object' && json.error ? json.error : json;
      message = err.message || err.detail || (typeof json.error === 'string' ? json.error : '') || '';
      reason = err.reason || err.code || null;
      field = err.field || null;
      if (Array.isArray(err.errors) && err.errors.length && !message) {
        message = err.errors.map((e: any) => e.message || String(e)).join('; ');
      }
    }
  } catch {
    message = body.trim().slice(0, 500);
  }
  if (status === 401 || status === 403) {
    if (!message || /forbidden|unauthorized|_xsrf/i.test(message)) {
      message = 'Not authenticated: the Jupyter server refused the request. Reload the page or log in again.';
    }
  } else if (!message) {
    message = `The server answered ${status} with no explanation.`;
  }
  return { message, reason, field };
}

function normalizeQueue(raw: any): IQueue {
  const config = raw.config || {};
  return {
    name: raw.name,
    provider: raw.provider || config.provider?.type || '?',
    created_at: raw.created_at,
    updated_at: raw.updated_at,
    max_instances: raw.max_instances ?? config.provider?.max_instances ?? null,
    min_instances: raw.min_instances ?? config.provider?.min_instances ?? 0,
    shared: raw.shared ?? config.shared ?? (config.provider?.type || 'local') !== 'local',
    counts: raw.counts || {},
    agents: (raw.agents || []).map((a: any) => (typeof a === 'string' ? a : a.id)),
    job_types: raw.job_types || config.job_types || [],
    config
  };
}

const encoder = new TextEncoder();

function base64Bytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) {
    bytes[i] = bin.charCodeAt(i);
  }
  return bytes;
}

/** A log page (`GET .../logs?offset=N&encoding=base64`) as chunks of exact bytes plus the next offset. */
export function normalizeLogRead(raw: any, offset: number): ILogRead {
  const list: any[] = Array.isArray(raw?.chunks) ? raw.chunks : [];
  const base64 = raw?.encoding === 'base64';
  const chunks = list.map(c => ({
    offset: typeof c.offset === 'number' ? c.offset : offset,
    stream: c.stream || 'stdout',
    bytes: base64 ? base64Bytes(c.data || '') : encoder.encode(c.data || '')
  }));
  let next = raw?.next_offset;
  if (typeof next !== 'number') {
    const last = chunks[chunks.length - 1];
    next = last ? last.offset + last.bytes.length : offset;
  }
  return { chunks, next, done: Boolean(raw?.done) };
}

/**
 * One binary WebSocket frame of the live log: a JSON header (`{"offset", "stream", "attempt"}`), a newline, then the
 * raw bytes.
 */
export function parseLogFrame(frame: ArrayBuffer | Uint8Array): ILogChunk {
  const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
  const nl = bytes.indexOf(10);
  if (nl < 0) {
    throw new Error('a log frame without a header');
  }
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(0, nl)));
  return { offset: header.offset, stream: header.stream || 'stdout', bytes: bytes.subarray(nl + 1) };
}

export class LaunchAPI {
  constructor(readonly transport: ITransport) {}

  async requestJSON<T = any>(path: string, init: RequestInit = {}): Promise<T> {
    let response: Response;
    try {
      response = await this.transport.request(`${API}/${path}`, init);
    } catch (err) {
      throw new LaunchAPIError(
        `Could not reach the Jupyter server: ${(err as Error).message || err}`,
        0,
        'network'
      );
    }
    const text = await response.text();
    if (!response.ok) {
      const { message, reason, field } = errorMessage(response.status, text);
      throw new LaunchAPIError(message, response.status, reason, field);
    }
    if (!text) {
      return undefined as T;
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new LaunchAPIError(`The server sent something that is not JSON: ${text.slice(0, 200)}`, response.status);
    }
  }

  async listQueues(): Promise<IQueue[]> {
    const raw = await this.requestJSON<Answer<'/launch/api/queues'>>('queues');
    const list = Array.isArray(raw) ? raw : raw.queues || [];
    return list.map(normalizeQueue);
  }

  async getQueue(name: string): Promise<IQueue> {
    return normalizeQueue(await this.requestJSON(`queues/${encodeURIComponent(name)}`));
  }

  async listJobs(options: IJobQuery = {}): Promise<IJobPage> {
    const limit = options.limit ?? 50;
    const { offset, ...filters } = options;
    const raw = await this.requestJSON<Answer<'/launch/api/jobs'>>(
      `jobs${query({ ...filters, limit, offset: offset || null })}`
    );
    const jobs: IJob[] = Array.isArray(raw) ? raw : raw.jobs || [];
    let next: number | null;
    if (!Array.isArray(raw) && raw.next_before !== undefined) {
      next = raw.next_before ?? null;
    } else {
      next = jobs.length >= limit ? jobs[jobs.length - 1].seq : null;
    }
    const nextOffset = !Array.isArray(raw) && raw.next_offset !== undefined ? raw.next_offset : null;
    return { jobs, next, nextOffset };
  }

  /** Delete an ended job with its log, metrics and outputs; the blob digests the server released. */
  async deleteJob(id: string): Promise<string[]> {
    const raw = await this.requestJSON(`jobs/${encodeURIComponent(id)}`, { method: 'DELETE' });
    return raw?.released ?? [];
  }

  /** Archive an ended job (hidden from the history unless asked for), or bring it back. */
  async archiveJob(id: string, archived = true): Promise<IJob> {
    const action = archived ? 'archive' : 'unarchive';
    return unwrapJob(await this.requestJSON(`jobs/${encodeURIComponent(id)}/${action}`, { method: 'POST' }));
  }

  /** The job's whole log as it is now, page after page, as text (for a download). */
  async logText(id: string): Promise<string> {
    const parts: Uint8Array[] = [];
    let offset = 0;
    for (;;) {
      const page = await this.readLog(id, offset);
      if (!page.chunks.length || page.next <= offset) {
        break;
      }
      parts.push(...page.chunks.map(c => c.bytes));
      offset = page.next;
    }
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return new TextDecoder().decode(all);
  }

  async getJob(id: string): Promise<IJob> {
    return unwrapJob(await this.requestJSON(`jobs/${encodeURIComponent(id)}`));
  }

  /**
   * Submit a notebook job by its path under the Jupyter root: the server packages it as the CLI would (the notebook's
   * folder, ignore files, the size limit, its environment), so the job is the one any other face would make.
   */
  async submit(request: ISubmitRequest): Promise<IJob> {
    const { notebook, queue, ...options } = request;
    const body: SubmitBody = { queue, notebook, options };
    return unwrapJob(
      await this.requestJSON('jobs', {
        method: 'POST',
        body: JSON.stringify(body),
        headers: { 'Content-Type': 'application/json' }
      })
    );
  }

  async listSchedules(): Promise<ISchedule[]> {
    const raw = await this.requestJSON<Answer<'/launch/api/schedules'>>('schedules');
    return raw.schedules || [];
  }

  /** Package the notebook once (on the server, as `submit` does) and queue it at each time `cron` names. */
  async createSchedule(request: IScheduleRequest): Promise<ISchedule> {
    const { notebook, queue, cron, tz, ...options } = request;
    return await this.requestJSON('schedules', {
      method: 'POST',
      body: JSON.stringify({ queue, notebook, options, cron, tz }),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async setSchedulePaused(id: string, paused: boolean): Promise<ISchedule> {
    return await this.requestJSON(`schedules/${encodeURIComponent(id)}/${paused ? 'pause' : 'resume'}`, {
      method: 'POST'
    });
  }

  async deleteSchedule(id: string): Promise<void> {
    await this.requestJSON(`schedules/${encodeURIComponent(id)}`, { method: 'DELETE' });
  }

  /** Put a queued job first on its queue. */
  async moveToFront(id: string): Promise<IJob> {
    return unwrapJob(
      await this.requestJSON(`jobs/${encodeURIComponent(id)}/move`, {
        method: 'POST',
        body: JSON.stringify({ front: true }),
        headers: { 'Content-Type': 'application/json' }
      })
    );
  }

  async getSweep(id: string): Promise<ISweep> {
    return await this.requestJSON(`sweeps/${encodeURIComponent(id)}`);
  }

  /** A sweep's children, newest first. */
  async sweepJobs(id: string): Promise<IJob[]> {
    const raw = await this.requestJSON<Answer<'/launch/api/jobs'>>(`jobs${query({ parent: id, limit: 500 })}`);
    return raw.jobs || [];
  }

  async cancel(id: string): Promise<IJob> {
    return unwrapJob(await this.requestJSON(`jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' }));
  }

  async rerun(id: string): Promise<IJob> {
    return unwrapJob(await this.requestJSON(`jobs/${encodeURIComponent(id)}/rerun`, { method: 'POST' }));
  }

  async readLog(id: string, offset = 0): Promise<ILogRead> {
    const raw = await this.requestJSON<Answer<'/launch/api/jobs/{job_id}/logs'>>(`jobs/${encodeURIComponent(id)}/logs${query({ offset, encoding: 'base64' })}`);
    return normalizeLogRead(raw, offset);
  }

  async metrics(id: string, after = 0): Promise<IMetricRecord[]> {
    const raw = await this.requestJSON<Answer<'/launch/api/jobs/{job_id}/metrics'>>(`jobs/${encodeURIComponent(id)}/metrics${query({ after: after || null })}`);
    return Array.isArray(raw) ? raw : raw.metrics || [];
  }

  async outputs(id: string): Promise<IOutput[]> {
    const raw = await this.requestJSON<Answer<'/launch/api/jobs/{job_id}/outputs'>>(`jobs/${encodeURIComponent(id)}/outputs`);
    return Array.isArray(raw) ? raw : raw.outputs || [];
  }

  /** An output's bytes. */
  async outputBlob(id: string, path: string): Promise<Blob> {
    const response = await this.transport.request(`${API}/jobs/${encodeURIComponent(id)}/outputs/${encodePath(path)}`);
    if (!response.ok) {
      const { message, reason } = errorMessage(response.status, await response.text());
      throw new LaunchAPIError(message, response.status, reason);
    }
    return response.blob();
  }

  outputUrl(id: string, path: string): string {
    return this.transport.httpUrl(`${API}/jobs/${encodeURIComponent(id)}/outputs/${encodePath(path)}`);
  }

  logStreamUrl(id: string, offset: number): string {
    return this.transport.wsUrl(`${API}/jobs/${encodeURIComponent(id)}/logs/ws${query({ offset })}`);
  }
}

function unwrapJob(raw: any): IJob {
  return raw && raw.job && !raw.id ? raw.job : raw;
}

/** The command line that does what the panel did, for the "copy CLI command" button. */
export function cliCommand(job: IJob, action: 'logs' | 'rerun' | 'cancel' = 'logs'): string {
  return action === 'logs' ? `jupyter launch logs ${job.id} -f` : `jupyter launch ${action} ${job.id}`;
}
