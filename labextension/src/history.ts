/**
 * The panel's "History" view: every job the user may see, filtered, searched and sorted by the server (state, queue,
 * owner, submission dates, archived, name search; the same `GET /jobs` arguments `jupyter launch list` takes), with
 * open, cancel, rerun, archive and delete on each row.
 */

import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { IJob, IJobQuery, IQueue, JobSortColumn, LaunchAPI, isDisconnected } from './api';
import { formatAgo, formatDuration, isFinal, jobDuration, jobTitle, ownerName, resourcesText } from './models';

/** The filters a user sets in the history's bar; empty strings mean "any". */
export interface IHistoryFilters {
  q: string;
  state: string;
  queue: string;
  owner: string;
  /** `YYYY-MM-DD` as a date input gives it: jobs submitted on or after that day (local time). */
  from: string;
  /** `YYYY-MM-DD`: jobs submitted on or before that day. */
  to: string;
  archived: boolean;
}

export const NO_FILTERS: IHistoryFilters = { q: '', state: '', queue: '', owner: '', from: '', to: '', archived: false };

/** The state choices of the filter: one state, or the active ones together. */
export const STATE_CHOICES: ReadonlyArray<[string, string]> = [
  ['', 'Any state'],
  ['queued', 'Queued'],
  ['claimed,starting,running', 'Running'],
  ['succeeded', 'Succeeded'],
  ['failed', 'Failed'],
  ['cancelled', 'Cancelled']
];

/** Local midnight of a `YYYY-MM-DD` day, in epoch seconds; `days` later for an end bound. */
export function dayStart(day: string, days = 0): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(day);
  if (!m) {
    return null;
  }
  return new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]) + days).getTime() / 1000;
}

/** The `GET /jobs` arguments for a set of filters and a sort. */
export function historyQuery(filters: IHistoryFilters, sort: string): IJobQuery {
  return {
    q: filters.q.trim() || undefined,
    state: filters.state || undefined,
    queue: filters.queue || undefined,
    owner: filters.owner.trim() || undefined,
    submitted_after: dayStart(filters.from),
    submitted_before: dayStart(filters.to, 1),
    archived: filters.archived ? 'true' : undefined,
    sort: sort === '-submitted' ? undefined : sort
  };
}

/**
 * The history's jobs under its filters and sort. `refresh()` reads again as many jobs as are shown (at least a page),
 * so a poll keeps every loaded row current; `loadMore()` reads the next page by offset (any sort pages that way).
 */
export class HistoryModel {
  constructor(
    readonly api: LaunchAPI,
    readonly pageSize = 25
  ) {}

  get jobs(): ReadonlyArray<IJob> {
    return this._jobs;
  }

  get filters(): IHistoryFilters {
    return this._filters;
  }

  get sort(): string {
    return this._sort;
  }

  get hasMore(): boolean {
    return this._hasMore;
  }

  get error(): string | null {
    return this._error;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Change some filters and read the first page again. */
  async setFilters(filters: Partial<IHistoryFilters>): Promise<void> {
    this._filters = { ...this._filters, ...filters };
    this._shown = this.pageSize;
    await this._refreshQuietly();
  }

  /** Sort by a column: the same column again flips the direction; a new one starts descending for times. */
  async sortBy(column: JobSortColumn): Promise<void> {
    const current = this._sort.replace(/^-/, '');
    if (current === column) {
      this._sort = this._sort.startsWith('-') ? column : `-${column}`;
    } else {
      this._sort = ['submitted', 'started', 'finished'].includes(column) ? `-${column}` : column;
    }
    this._shown = this.pageSize;
    await this._refreshQuietly();
  }

  /** Read the jobs again. A server that does not answer rejects and leaves the rows as they were. */
  async refresh(): Promise<void> {
    const generation = ++this._generation;
    try {
      const page = await this.api.listJobs({ ...historyQuery(this._filters, this._sort), limit: this._shown });
      if (generation !== this._generation) {
        return; // a newer read (the user typed on) answers for the view
      }
      this._jobs = page.jobs;
      this._hasMore = page.nextOffset !== null;
      this._error = null;
    } catch (err) {
      if (generation !== this._generation) {
        return;
      }
      if (isDisconnected(err)) {
        throw err;
      }
      this._error = (err as Error).message;
    }
    this._changed.emit();
  }

  async loadMore(): Promise<void> {
    if (!this._hasMore) {
      return;
    }
    this._shown = Math.min(this._jobs.length + this.pageSize, MAX_SHOWN);
    await this._refreshQuietly();
  }

  /** A read the user asked for: when the server does not answer, the panel's poll says so and retries. */
  private async _refreshQuietly(): Promise<void> {
    try {
      await this.refresh();
    } catch (err) {
      if (!isDisconnected(err)) {
        throw err;
      }
    }
  }

  private _filters: IHistoryFilters = { ...NO_FILTERS };
  private _sort = '-submitted';
  private _shown = this.pageSize;
  private _jobs: IJob[] = [];
  private _hasMore = false;
  private _error: string | null = null;
  private _generation = 0;
  private _changed = new Signal<this, void>(this);
}

/** The server's page limit: a history shows at most this many rows at once. */
const MAX_SHOWN = 500;

/** The columns a user sorts by, as the header shows them. */
const SORT_COLUMNS: ReadonlyArray<[JobSortColumn, string]> = [
  ['submitted', 'Submitted'],
  ['name', 'Name'],
  ['state', 'State'],
  ['queue', 'Queue'],
  ['owner', 'Owner'],
  ['finished', 'Finished']
];

export interface IHistoryViewOptions {
  api: LaunchAPI;
  openJob: (id: string, job?: IJob) => void;
  /** Asks the user to confirm deleting a job; true to delete. */
  confirmDelete: (job: IJob) => Promise<boolean>;
  /** The queues for the queue filter (the panel reads them anyway). */
  queues?: () => ReadonlyArray<IQueue>;
  /** Milliseconds the search box waits for typing to pause. */
  searchDelay?: number;
  /** Shows the metrics of the picked jobs overlaid; no pick boxes without it. */
  compare?: (jobs: IJob[]) => void;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = cls;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function labelled(label: string, control: HTMLElement, wide = false): HTMLLabelElement {
  const wrap = el('label', `jp-LaunchHistory-field${wide ? ' jp-mod-wide' : ''}`);
  const span = el('span', 'jp-LaunchHistory-fieldLabel', label);
  wrap.append(span, control);
  return wrap;
}

export class HistoryView extends Widget {
  constructor(options: IHistoryViewOptions) {
    super();
    this.addClass('jp-LaunchHistory');
    this.model = new HistoryModel(options.api);
    this._api = options.api;
    this._openJob = options.openJob;
    this._confirmDelete = options.confirmDelete;
    this._queues = options.queues ?? (() => []);
    this._searchDelay = options.searchDelay ?? 250;
    this._compare = options.compare ?? null;

    const bar = el('div', 'jp-LaunchHistory-filters');
    bar.setAttribute('role', 'search');
    this._search = el('input', 'jp-mod-styled jp-LaunchHistory-search');
    this._search.type = 'search';
    this._search.placeholder = 'Search names or ids';
    this._search.setAttribute('aria-label', 'Search jobs by name or id');
    this._search.addEventListener('input', () => this._searchSoon());

    this._state = el('select', 'jp-mod-styled jp-LaunchHistory-state');
    for (const [value, text] of STATE_CHOICES) {
      const o = el('option', '', text);
      o.value = value;
      this._state.appendChild(o);
    }
    this._state.addEventListener('change', () => void this.model.setFilters({ state: this._state.value }));
    this._queue = el('select', 'jp-mod-styled jp-LaunchHistory-queue');
    this._queue.addEventListener('change', () => void this.model.setFilters({ queue: this._queue.value }));
    this._owner = el('input', 'jp-mod-styled jp-LaunchHistory-owner');
    this._owner.placeholder = 'anyone';
    this._owner.addEventListener('change', () => void this.model.setFilters({ owner: this._owner.value }));
    this._from = el('input', 'jp-mod-styled jp-LaunchHistory-from');
    this._from.type = 'date';
    this._from.addEventListener('change', () => void this.model.setFilters({ from: this._from.value }));
    this._to = el('input', 'jp-mod-styled jp-LaunchHistory-to');
    this._to.type = 'date';
    this._to.addEventListener('change', () => void this.model.setFilters({ to: this._to.value }));
    this._archived = el('input', 'jp-LaunchHistory-archived');
    this._archived.type = 'checkbox';
    this._archived.addEventListener('change', () => void this.model.setFilters({ archived: this._archived.checked }));
    const archivedLabel = el('label', 'jp-LaunchHistory-archivedLabel');
    archivedLabel.append(this._archived, document.createTextNode(' Archived only'));
    bar.append(
      this._search,
      labelled('State', this._state),
      labelled('Queue', this._queue),
      labelled('Owner', this._owner, true),
      labelled('Submitted from', this._from, true),
      labelled('Submitted to', this._to, true),
      archivedLabel
    );

    this._sortBar = el('div', 'jp-LaunchHistory-sort');
    this._sortBar.setAttribute('role', 'toolbar');
    this._sortBar.setAttribute('aria-label', 'Sort jobs by');
    this._status = el('p', 'jp-LaunchPanel-status');
    this._status.setAttribute('role', 'status');
    this._list = el('ul', 'jp-LaunchHistory-list');
    this._list.setAttribute('aria-label', 'Job history');
    this._more = el('button', 'jp-mod-styled jp-LaunchHistory-more', 'More jobs…');
    this._more.type = 'button';
    this._more.addEventListener('click', () => void this.model.loadMore());
    this._compareButton = el('button', 'jp-mod-styled jp-LaunchHistory-compare');
    this._compareButton.type = 'button';
    this._compareButton.addEventListener('click', () => this._compare?.(Array.from(this._picked.values())));
    this.node.append(bar, this._sortBar, this._compareButton, this._status, this._list, this._more);
    this.model.changed.connect(() => this.render());
    this.render();
  }

  readonly model: HistoryModel;

  refresh(): Promise<void> {
    return this.model.refresh();
  }

  dispose(): void {
    if (this._searchTimer) {
      clearTimeout(this._searchTimer);
    }
    super.dispose();
  }

  /** Redraw from the model, keeping focus on the control that had it. */
  render(): void {
    const active = document.activeElement as HTMLElement | null;
    const focusKey = active && this._list.contains(active) ? active.dataset.focusKey : undefined;
    this._renderQueues();
    this._renderSort();
    const model = this.model;
    this._status.textContent = model.error ?? (model.jobs.length ? '' : 'No jobs match these filters.');
    this._status.classList.toggle('jp-mod-error', Boolean(model.error));
    const now = Date.now() / 1000;
    this._list.replaceChildren(...model.jobs.map(job => this._renderJob(job, now)));
    this._more.hidden = !model.hasMore;
    for (const job of model.jobs) {
      if (this._picked.has(job.id)) {
        this._picked.set(job.id, job); // keep the picked records current
      }
    }
    this._renderCompare();
    if (focusKey) {
      (this._list.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`) as HTMLElement | null)?.focus();
    }
  }

  private _searchSoon(): void {
    if (this._searchTimer) {
      clearTimeout(this._searchTimer);
    }
    this._searchTimer = setTimeout(() => {
      this._searchTimer = null;
      void this.model.setFilters({ q: this._search.value });
    }, this._searchDelay);
  }

  private _renderQueues(): void {
    const names = ['', ...this._queues().map(q => q.name)];
    if (this.model.filters.queue && !names.includes(this.model.filters.queue)) {
      names.push(this.model.filters.queue);
    }
    const shown = Array.from(this._queue.options).map(o => o.value);
    if (shown.join('\n') === names.join('\n')) {
      return;
    }
    this._queue.replaceChildren(
      ...names.map(name => {
        const o = el('option', '', name || 'Any queue');
        o.value = name;
        return o;
      })
    );
    this._queue.value = this.model.filters.queue;
  }

  private _renderSort(): void {
    const sort = this.model.sort;
    const column = sort.replace(/^-/, '');
    const descending = sort.startsWith('-');
    this._sortBar.replaceChildren(
      ...SORT_COLUMNS.map(([key, label]) => {
        const b = el('button', 'jp-LaunchHistory-sortButton');
        b.type = 'button';
        b.dataset.sort = key;
        const on = key === column;
        b.textContent = on ? `${label} ${descending ? '↓' : '↑'}` : label;
        b.setAttribute('aria-pressed', String(on));
        b.title = on ? `Sorted by ${label.toLowerCase()}, ${descending ? 'descending' : 'ascending'}; click to reverse` : `Sort by ${label.toLowerCase()}`;
        b.addEventListener('click', () => void this.model.sortBy(key));
        return b;
      })
    );
  }

  private _renderJob(job: IJob, now: number): HTMLElement {
    const li = el('li', 'jp-LaunchJobRow jp-LaunchHistory-row');
    li.dataset.jobId = job.id;
    li.dataset.state = job.state;
    const open = el('button', 'jp-LaunchJobRow-open');
    open.type = 'button';
    open.dataset.focusKey = `open:${job.id}`;
    open.addEventListener('click', () => this._openJob(job.id, job));
    const state = el('span', `jp-LaunchState jp-LaunchState-${job.state}`, job.state);
    const title = el('span', 'jp-LaunchJobRow-title', jobTitle(job));
    const meta = el('span', 'jp-LaunchJobRow-meta');
    meta.textContent = [
      job.queue,
      ownerName(job),
      resourcesText(job),
      formatAgo(job.submitted_at, now),
      job.started_at ? formatDuration(jobDuration(job, now)) : '',
      job.archived_at ? 'archived' : ''
    ]
      .filter(Boolean)
      .join(' · ');
    const reason = el('span', 'jp-LaunchJobRow-reason', job.message || job.reason || '');
    open.append(state, title, meta, reason);
    open.title = `${job.id}\n${job.state}${job.reason ? ` (${job.reason})` : ''}${job.message ? `: ${job.message}` : ''}`;
    open.setAttribute('aria-label', `Job ${jobTitle(job)}, ${job.state}, ${meta.textContent}`);

    const actions = el('span', 'jp-LaunchHistory-actions');
    const action = (label: string, what: string, cls: string, run: () => Promise<unknown>) => {
      const b = el('button', `jp-mod-styled jp-LaunchHistory-action ${cls}`, label);
      b.type = 'button';
      b.dataset.focusKey = `${cls}:${job.id}`;
      b.title = `${what}: ${jobTitle(job)}`;
      b.setAttribute('aria-label', b.title);
      b.addEventListener('click', async () => {
        b.disabled = true;
        try {
          await run();
          this._status.classList.remove('jp-mod-error');
        } catch (err) {
          this._status.textContent = (err as Error).message;
          this._status.classList.add('jp-mod-error');
          b.disabled = false;
          return;
        }
        await this.model.refresh().catch(() => undefined); // a server gone meanwhile: the panel's poll says so
      });
      actions.appendChild(b);
    };
    if (!isFinal(job)) {
      if (!job.cancel_requested) {
        action('Cancel', 'Cancel the job', 'jp-mod-cancel', () => this._api.cancel(job.id));
      }
    } else {
      action('Rerun', 'Run the job again as a new job', 'jp-mod-rerun', async () => {
        const again = await this._api.rerun(job.id);
        this._openJob(again.id, again);
      });
      if (job.archived_at) {
        action('Unarchive', 'Bring the job back into the history', 'jp-mod-unarchive', () =>
          this._api.archiveJob(job.id, false)
        );
      } else {
        action('Archive', 'Hide the job from the history (kept; "Archived only" lists it)', 'jp-mod-archive', () =>
          this._api.archiveJob(job.id)
        );
      }
      action('Delete', 'Delete the job with its log, metrics and outputs', 'jp-mod-delete', async () => {
        if (await this._confirmDelete(job)) {
          await this._api.deleteJob(job.id);
        }
      });
    }
    if (this._compare) {
      const pick = el('input', 'jp-LaunchHistory-pick');
      pick.type = 'checkbox';
      pick.checked = this._picked.has(job.id);
      pick.dataset.focusKey = `pick:${job.id}`;
      pick.title = `Compare the metrics of ${jobTitle(job)} with other picked jobs`;
      pick.setAttribute('aria-label', pick.title);
      pick.addEventListener('change', () => {
        if (pick.checked) {
          this._picked.set(job.id, job);
        } else {
          this._picked.delete(job.id);
        }
        this._renderCompare();
      });
      actions.prepend(pick);
    }
    li.append(open, actions);
    return li;
  }

  private _renderCompare(): void {
    const n = this._picked.size;
    this._compareButton.hidden = !this._compare || n === 0;
    this._compareButton.disabled = n < 2;
    this._compareButton.textContent = n < 2 ? 'Pick another job to compare its metrics' : `Compare metrics of ${n} jobs`;
  }

  private _api: LaunchAPI;
  private _openJob: (id: string, job?: IJob) => void;
  private _confirmDelete: (job: IJob) => Promise<boolean>;
  private _queues: () => ReadonlyArray<IQueue>;
  private _searchDelay: number;
  private _searchTimer: ReturnType<typeof setTimeout> | null = null;
  private _search: HTMLInputElement;
  private _state: HTMLSelectElement;
  private _queue: HTMLSelectElement;
  private _owner: HTMLInputElement;
  private _from: HTMLInputElement;
  private _to: HTMLInputElement;
  private _archived: HTMLInputElement;
  private _sortBar: HTMLDivElement;
  private _status: HTMLParagraphElement;
  private _list: HTMLUListElement;
  private _more: HTMLButtonElement;
  private _compare: ((jobs: IJob[]) => void) | null;
  private _compareButton: HTMLButtonElement;
  private _picked = new Map<string, IJob>();
}
