/**
 * The "Launch" side panel: a header, a row of view tabs, and the views. Its own view lists the queues (backend,
 * running and queued against max_instances, agents serving each), each expandable to its jobs newest first, paged;
 * other views (the history, and any a later feature adds with `addView`) sit beside it. The visible view is kept
 * current by polling while the panel is visible; when the server stops answering the panel says it is disconnected
 * and retries, more slowly, until it answers again.
 */

import { Panel, Widget } from '@lumino/widgets';

import { IJob, IQueue, LaunchAPI, isDisconnected } from './api';
import { JobListModel, formatAgo, formatDuration, jobDuration, jobTitle, ownerName, resourcesText } from './models';

export const PANEL_ID = 'jupyter-launch-panel';
export const QUEUES_VIEW = 'queues';

/** A view the panel shows under its tabs: its widget, and how to read its data again while it is shown. */
export interface ILaunchPanelView {
  /** Unique among the panel's views; also the tab's `data-view`. */
  id: string;
  label: string;
  widget: Widget;
  /** Called on each poll while the view is shown; a rejection marks the panel disconnected. */
  refresh?: () => Promise<void>;
}

export interface ILaunchPanelOptions {
  api: LaunchAPI;
  openJob: (id: string, job?: IJob) => void;
  /** Opens the submit dialog for the current notebook. */
  submit?: () => void;
  /** Refresh interval while visible, ms. */
  interval?: number;
}

export class LaunchPanel extends Panel {
  constructor(options: ILaunchPanelOptions) {
    super();
    this._api = options.api;
    this._openJob = options.openJob;
    this._interval = options.interval ?? 1000;
    this.id = PANEL_ID;
    this.addClass('jp-LaunchPanel');
    this.title.caption = 'Launch: queues and jobs';

    const header = document.createElement('header');
    header.className = 'jp-LaunchPanel-header';
    const h = document.createElement('h2');
    h.textContent = 'Launch';
    const refresh = document.createElement('button');
    refresh.type = 'button';
    refresh.className = 'jp-mod-styled jp-LaunchPanel-refresh';
    refresh.textContent = '⟳';
    refresh.title = 'Refresh now';
    refresh.setAttribute('aria-label', 'Refresh queues and jobs');
    refresh.addEventListener('click', () => void this.refresh());
    header.append(h);
    if (options.submit) {
      const submit = document.createElement('button');
      submit.type = 'button';
      submit.className = 'jp-mod-styled jp-mod-accept jp-LaunchPanel-submit';
      submit.textContent = 'Launch…';
      submit.title = 'Submit the current notebook to a queue';
      submit.addEventListener('click', () => options.submit?.());
      header.appendChild(submit);
    }
    header.appendChild(refresh);

    this._connection = document.createElement('p');
    this._connection.className = 'jp-LaunchPanel-connection';
    this._connection.setAttribute('role', 'status');
    this._connection.hidden = true;
    this._tabs = document.createElement('div');
    this._tabs.className = 'jp-LaunchPanel-tabs';
    this._tabs.setAttribute('role', 'tablist');
    this._tabs.setAttribute('aria-label', 'Launch views');
    const chrome = new Widget();
    chrome.addClass('jp-LaunchPanel-chrome');
    chrome.node.append(header, this._connection, this._tabs);
    this.addWidget(chrome);

    const queuesView = new Widget();
    queuesView.addClass('jp-LaunchPanel-queuesView');
    this._status = document.createElement('p');
    this._status.className = 'jp-LaunchPanel-status';
    this._status.setAttribute('role', 'status');
    this._list = document.createElement('ul');
    this._list.className = 'jp-LaunchPanel-queues';
    this._list.setAttribute('aria-label', 'Queues');
    queuesView.node.append(this._status, this._list);
    this.addView({ id: QUEUES_VIEW, label: 'Queues', widget: queuesView, refresh: () => this._refreshQueues() });
  }

  get queues(): ReadonlyArray<IQueue> {
    return this._queues;
  }

  /** The view shown now. */
  get currentView(): string {
    return this._current;
  }

  /** True while the server does not answer (the panel retries on its own). */
  get disconnected(): boolean {
    return this._disconnected;
  }

  /** Add a view with a tab of its own; the first view added is shown first. */
  addView(view: ILaunchPanelView): void {
    if (this._views.has(view.id)) {
      throw new Error(`a Launch panel view named ${view.id} exists already`);
    }
    this._views.set(view.id, view);
    view.widget.addClass('jp-LaunchPanel-view');
    view.widget.node.setAttribute('role', 'tabpanel');
    view.widget.node.id = `${PANEL_ID}-view-${view.id}`;
    this.addWidget(view.widget);
    if (!this._current) {
      this._current = view.id;
    }
    this._renderTabs();
  }

  /** Show a view, and read its data now. */
  showView(id: string): void {
    if (!this._views.has(id)) {
      return;
    }
    this._current = id;
    this._renderTabs();
    void this.refresh();
  }

  /** Read the shown view's data now (for the queues view: the queues and the expanded queues' jobs). */
  async refresh(): Promise<void> {
    const view = this._views.get(this._current);
    try {
      await view?.refresh?.();
      this._setDisconnected(false);
    } catch (err) {
      // A view shows its own errors; only a server that does not answer is the panel's to say.
      this._setDisconnected(isDisconnected(err));
      if (!isDisconnected(err)) {
        console.error('jupyter-launch: refreshing the panel failed', err);
      }
    }
  }

  /** The queues view: queues, then the expanded queues' jobs. A server that does not answer rejects. */
  private async _refreshQueues(): Promise<void> {
    let failure: unknown = null;
    try {
      this._queues = await this._api.listQueues();
      this._status.textContent = this._queues.length ? '' : 'No queues yet. Create one with `jupyter launch queue create FILE`.';
      this._status.classList.remove('jp-mod-error');
    } catch (err) {
      if (isDisconnected(err)) {
        failure = err; // the rows stay as they were last read; the panel says it is retrying
      } else {
        this._status.textContent = (err as Error).message;
        this._status.classList.add('jp-mod-error');
      }
    }
    if (!failure) {
      await Promise.all(Array.from(this._expanded.values()).map(m => m.refresh()));
    }
    this._render();
    if (failure) {
      throw failure;
    }
  }

  private _setDisconnected(disconnected: boolean): void {
    this._disconnected = disconnected;
    this._connection.hidden = !disconnected;
    this._connection.textContent = disconnected ? 'Disconnected from the Jupyter server; retrying…' : '';
    this.node.classList.toggle('jp-mod-disconnected', disconnected);
  }

  private _renderTabs(): void {
    const tabs = Array.from(this._views.values()).map(view => {
      const tab = document.createElement('button');
      tab.type = 'button';
      tab.className = 'jp-LaunchPanel-tab';
      tab.dataset.view = view.id;
      tab.textContent = view.label;
      tab.setAttribute('role', 'tab');
      tab.setAttribute('aria-controls', view.widget.node.id);
      const selected = view.id === this._current;
      tab.setAttribute('aria-selected', String(selected));
      tab.tabIndex = selected ? 0 : -1;
      tab.addEventListener('click', () => this.showView(view.id));
      tab.addEventListener('keydown', e => this._onTabKey(e));
      if (selected) {
        view.widget.show();
      } else {
        view.widget.hide();
      }
      return tab;
    });
    this._tabs.replaceChildren(...tabs);
    this._tabs.hidden = tabs.length < 2;
  }

  /** Left and right arrows move between tabs, as in a WAI-ARIA tab list. */
  private _onTabKey(e: KeyboardEvent): void {
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') {
      return;
    }
    const ids = Array.from(this._views.keys());
    const at = ids.indexOf(this._current);
    const next = ids[(at + (e.key === 'ArrowRight' ? 1 : ids.length - 1)) % ids.length];
    this.showView(next);
    (this._tabs.querySelector(`[data-view="${CSS.escape(next)}"]`) as HTMLElement | null)?.focus();
    e.preventDefault();
  }

  expand(queue: string, expanded = true): void {
    if (expanded && !this._expanded.has(queue)) {
      const model = new JobListModel(this._api, queue);
      model.changed.connect(() => this._render());
      this._expanded.set(queue, model);
      void model.refresh();
    } else if (!expanded) {
      this._expanded.delete(queue);
    }
    this._render();
  }

  isExpanded(queue: string): boolean {
    return this._expanded.has(queue);
  }

  dispose(): void {
    this._stop();
    super.dispose();
  }

  protected onAfterShow(): void {
    this._start();
  }

  protected onAfterAttach(): void {
    if (this.isVisible) {
      this._start();
    }
  }

  protected onBeforeHide(): void {
    this._stop();
  }

  protected onBeforeDetach(): void {
    this._stop();
  }

  private _start(): void {
    if (this._running) {
      return;
    }
    this._running = true;
    const tick = async () => {
      if (!this._running) {
        return;
      }
      await this.refresh();
      if (this._running) {
        const slow = document.hidden || this._disconnected;
        this._timer = setTimeout(() => void tick(), slow ? this._interval * 5 : this._interval);
      }
    };
    void tick();
  }

  private _stop(): void {
    this._running = false;
    if (this._timer) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  /** Redraw, keeping focus on the element that had it (rows are keyed by queue name and job id). */
  private _render(): void {
    const active = document.activeElement as HTMLElement | null;
    const focusKey = active && this.node.contains(active) ? active.dataset.focusKey : undefined;
    const now = Date.now() / 1000;
    const items = this._queues.map(q => this._renderQueue(q, now));
    this._list.replaceChildren(...items);
    if (focusKey) {
      (this._list.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`) as HTMLElement | null)?.focus();
    }
  }

  private _renderQueue(q: IQueue, now: number): HTMLElement {
    const li = document.createElement('li');
    li.className = 'jp-LaunchQueue';
    li.dataset.queue = q.name;
    const expanded = this._expanded.has(q.name);

    const toggle = document.createElement('button');
    toggle.type = 'button';
    toggle.className = 'jp-LaunchQueue-toggle';
    toggle.dataset.focusKey = `queue:${q.name}`;
    toggle.setAttribute('aria-expanded', String(expanded));
    toggle.addEventListener('click', () => this.expand(q.name, !expanded));

    const running = (q.counts.running ?? 0) + (q.counts.starting ?? 0) + (q.counts.claimed ?? 0);
    const queued = q.counts.queued ?? 0;
    const caret = document.createElement('span');
    caret.className = 'jp-LaunchQueue-caret';
    caret.textContent = expanded ? '▾' : '▸';
    caret.setAttribute('aria-hidden', 'true');
    const name = document.createElement('span');
    name.className = 'jp-LaunchQueue-name';
    name.textContent = q.name;
    const backend = document.createElement('span');
    backend.className = 'jp-LaunchQueue-backend';
    backend.textContent = q.provider;
    const counts = document.createElement('span');
    counts.className = 'jp-LaunchQueue-counts';
    counts.textContent = `${running}/${q.max_instances ?? '∞'} running · ${queued} queued`;
    const agents = document.createElement('span');
    agents.className = 'jp-LaunchQueue-agents';
    agents.classList.toggle('jp-mod-none', q.agents.length === 0);
    agents.textContent = q.agents.length ? `${q.agents.length} agent${q.agents.length > 1 ? 's' : ''}` : 'no agent';
    agents.title = q.agents.length ? `Agents: ${q.agents.join(', ')}` : 'No agent serves this queue';
    toggle.append(caret, name, backend, counts, agents);
    toggle.setAttribute(
      'aria-label',
      `Queue ${q.name}, ${q.provider}, ${running} of ${q.max_instances ?? 'unlimited'} running, ${queued} queued, ${agents.textContent}`
    );
    li.appendChild(toggle);

    if (expanded) {
      li.appendChild(this._renderJobs(q, this._expanded.get(q.name) as JobListModel, now));
    }
    return li;
  }

  private _renderJobs(q: IQueue, model: JobListModel, now: number): HTMLElement {
    const box = document.createElement('div');
    box.className = 'jp-LaunchJobs';
    if (model.error) {
      const e = document.createElement('p');
      e.className = 'jp-LaunchPanel-status jp-mod-error';
      e.textContent = model.error;
      box.appendChild(e);
    }
    if (!model.jobs.length) {
      const p = document.createElement('p');
      p.className = 'jp-LaunchJobs-empty';
      p.textContent = 'No jobs on this queue yet.';
      box.appendChild(p);
      return box;
    }
    const list = document.createElement('ul');
    list.className = 'jp-LaunchJobs-list';
    list.setAttribute('aria-label', `Jobs on ${q.name}`);
    for (const job of model.jobs) {
      list.appendChild(this._renderJob(job, now));
    }
    box.appendChild(list);
    if (model.hasMore) {
      const more = document.createElement('button');
      more.type = 'button';
      more.className = 'jp-mod-styled jp-LaunchJobs-more';
      more.dataset.focusKey = `more:${q.name}`;
      more.textContent = 'Older jobs…';
      more.addEventListener('click', () => void model.loadMore());
      box.appendChild(more);
    }
    return box;
  }

  private _renderJob(job: IJob, now: number): HTMLElement {
    const li = document.createElement('li');
    li.className = 'jp-LaunchJobRow';
    li.dataset.jobId = job.id;
    li.dataset.state = job.state;
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'jp-LaunchJobRow-open';
    open.dataset.focusKey = `job:${job.id}`;
    open.addEventListener('click', () => this._openJob(job.id, job));

    const state = document.createElement('span');
    state.className = `jp-LaunchState jp-LaunchState-${job.state}`;
    state.textContent = job.state;
    const title = document.createElement('span');
    title.className = 'jp-LaunchJobRow-title';
    title.textContent = jobTitle(job);
    const meta = document.createElement('span');
    meta.className = 'jp-LaunchJobRow-meta';
    const parts = [
      job.job_type || job.kind,
      ownerName(job),
      resourcesText(job),
      formatAgo(job.submitted_at, now),
      job.started_at ? formatDuration(jobDuration(job, now)) : ''
    ].filter(Boolean);
    meta.textContent = parts.join(' · ');
    const reason = document.createElement('span');
    reason.className = 'jp-LaunchJobRow-reason';
    reason.textContent = job.message || job.reason || '';
    open.append(state, title, meta, reason);
    open.title = `${job.id}\n${job.state}${job.reason ? ` (${job.reason})` : ''}${job.message ? `: ${job.message}` : ''}`;
    open.setAttribute('aria-label', `Job ${jobTitle(job)}, ${job.state}${job.message ? `, ${job.message}` : ''}, ${meta.textContent}`);
    li.appendChild(open);
    return li;
  }

  private _api: LaunchAPI;
  private _openJob: (id: string, job?: IJob) => void;
  private _interval: number;
  private _queues: IQueue[] = [];
  private _expanded = new Map<string, JobListModel>();
  private _running = false;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _status: HTMLParagraphElement;
  private _list: HTMLUListElement;
  private _connection: HTMLParagraphElement;
  private _tabs: HTMLDivElement;
  private _views = new Map<string, ILaunchPanelView>();
  private _current = '';
  private _disconnected = false;
}
