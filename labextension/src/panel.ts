/**
 * The "Launch" side panel: queues (backend, running and queued against max_instances, agents serving each), each
 * expandable to its jobs newest first, paged, and kept current by polling while the panel is visible.
 */

import { Widget } from '@lumino/widgets';

import { IJob, IQueue, LaunchAPI } from './api';
import { JobListModel, formatAgo, formatDuration, jobDuration, jobTitle } from './models';
import { SchedulesSection, jobRowActions } from './schedules';

export const PANEL_ID = 'jupyter-launch-panel';

export interface ILaunchPanelOptions {
  api: LaunchAPI;
  openJob: (id: string, job?: IJob) => void;
  /** Opens a sweep's view (its children's table and metrics). */
  openSweep?: (id: string) => void;
  /** Opens the submit dialog for the current notebook. */
  submit?: () => void;
  /** Refresh interval while visible, ms. */
  interval?: number;
}

export class LaunchPanel extends Widget {
  constructor(options: ILaunchPanelOptions) {
    super();
    this._api = options.api;
    this._openJob = options.openJob;
    this._openSweep = options.openSweep;
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

    this._status = document.createElement('p');
    this._status.className = 'jp-LaunchPanel-status';
    this._status.setAttribute('role', 'status');
    this._list = document.createElement('ul');
    this._list.className = 'jp-LaunchPanel-queues';
    this._list.setAttribute('aria-label', 'Queues');
    this._schedules = new SchedulesSection(this._api, () => void this.refresh());
    this.node.append(header, this._status, this._list, this._schedules.node);
  }

  get queues(): ReadonlyArray<IQueue> {
    return this._queues;
  }

  /** Read queues and the expanded queues' jobs now. */
  async refresh(): Promise<void> {
    try {
      this._queues = await this._api.listQueues();
      this._status.textContent = this._queues.length ? '' : 'No queues yet. Create one with `jupyter launch queue create FILE`.';
      this._status.classList.remove('jp-mod-error');
    } catch (err) {
      this._status.textContent = (err as Error).message;
      this._status.classList.add('jp-mod-error');
    }
    await Promise.all([...Array.from(this._expanded.values()).map(m => m.refresh()), this._schedules.refresh()]);
    this._render();
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
        this._timer = setTimeout(() => void tick(), document.hidden ? this._interval * 5 : this._interval);
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
      job.owner || '',
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
    li.append(...jobRowActions(job, this._api, () => void this.refresh(), this._openSweep));
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
  private _schedules: SchedulesSection;
  private _openSweep?: (id: string) => void;
}
