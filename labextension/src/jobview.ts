/**
 * One job in the main area: its state (with the reason), the live log, live metric charts, its outputs, and the
 * actions a user takes on it (cancel, rerun, copy the id or the CLI command).
 */

import { Clipboard, Notification } from '@jupyterlab/apputils';
import { PanelLayout, Widget } from '@lumino/widgets';

import { IJob, IOutput, LaunchAPI, cliCommand } from './api';
import { MetricsView } from './charts';
import { LogView } from './logview';
import {
  LogFollower,
  MetricsModel,
  formatAgo,
  formatBytes,
  formatDuration,
  isFinal,
  jobDuration,
  jobTitle,
  ownerName,
  resourcesText
} from './models';

export interface IJobViewOptions {
  api: LaunchAPI;
  jobId: string;
  job?: IJob;
  /** Opens a job's view; a rerun's record names the job it reruns, whose tab it takes over. */
  openJob: (id: string, job?: IJob) => void;
  openNotebook: (jobId: string, path: string) => Promise<void>;
  /** Job state poll interval while it is not finished, ms. */
  pollInterval?: number;
}

type Tab = 'logs' | 'metrics' | 'outputs';

function button(label: string, title: string, cls: string, onClick: () => void): HTMLButtonElement {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = `jp-mod-styled jp-LaunchJob-action ${cls}`;
  b.textContent = label;
  b.title = title;
  b.addEventListener('click', onClick);
  return b;
}

/** Hand a blob to the browser as a download named `name`. */
function saveBlob(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export class JobView extends Widget {
  constructor(options: IJobViewOptions) {
    super();
    this._api = options.api;
    this.jobId = options.jobId;
    this._options = options;
    this._pollInterval = options.pollInterval ?? 1000;
    this.id = `jp-launch-job-${options.jobId}`;
    this.addClass('jp-LaunchJob');
    this.title.label = `Job ${options.jobId.slice(0, 8)}`;
    this.title.closable = true;
    this.title.caption = `jupyter-launch job ${options.jobId}`;

    const header = document.createElement('header');
    header.className = 'jp-LaunchJob-header';
    this._heading = document.createElement('h2');
    this._heading.className = 'jp-LaunchJob-title';
    this._state = document.createElement('span');
    this._state.className = 'jp-LaunchState';
    this._state.setAttribute('aria-live', 'polite');
    this._reason = document.createElement('p');
    this._reason.className = 'jp-LaunchJob-reason';
    this._meta = document.createElement('dl');
    this._meta.className = 'jp-LaunchJob-meta';

    const actions = document.createElement('div');
    actions.className = 'jp-LaunchJob-actions';
    actions.setAttribute('role', 'toolbar');
    actions.setAttribute('aria-label', 'Job actions');
    this._cancelButton = button('Cancel', 'Cancel this job', 'jp-LaunchJob-cancel', () => void this.cancel());
    this._rerunButton = button('Rerun', 'Run this job again as a new job', 'jp-LaunchJob-rerun', () => void this.rerun());
    const copyId = button('Copy ID', 'Copy the job id', 'jp-LaunchJob-copyId', () => {
      Clipboard.copyToSystem(this.jobId);
      Notification.info('Job id copied', { autoClose: 2000 });
    });
    const copyCli = button('Copy CLI', 'Copy the command that follows this job from a terminal', 'jp-LaunchJob-copyCli', () => {
      Clipboard.copyToSystem(this._job ? cliCommand(this._job) : `jupyter launch logs ${this.jobId} -f`);
      Notification.info('Command copied', { autoClose: 2000 });
    });
    const downloadLog = button('Download log', 'Download the whole log as text', 'jp-LaunchJob-downloadLog', () =>
      void this.downloadLog()
    );
    actions.append(this._cancelButton, this._rerunButton, downloadLog, copyId, copyCli);

    const titleRow = document.createElement('div');
    titleRow.className = 'jp-LaunchJob-titleRow';
    titleRow.append(this._heading, this._state);
    header.append(titleRow, this._reason, this._meta, actions);
    this._error = document.createElement('p');
    this._error.className = 'jp-LaunchJob-error';
    this._error.setAttribute('role', 'alert');
    this._error.hidden = true;
    header.appendChild(this._error);

    // Tabs: a tablist with arrow-key navigation, one panel shown at a time.
    const tablist = document.createElement('div');
    tablist.className = 'jp-LaunchJob-tabs';
    tablist.setAttribute('role', 'tablist');

    this.log = new LogView();
    this.metrics = new MetricsModel();
    this._metricsView = new MetricsView(this.metrics);
    this._outputs = document.createElement('div');
    this._outputs.className = 'jp-LaunchJob-outputs';

    const panels: Record<Tab, HTMLElement> = {
      logs: this.log.node,
      metrics: this._metricsView.node,
      outputs: this._outputs
    };
    (['logs', 'metrics', 'outputs'] as Tab[]).forEach(tab => {
      const t = document.createElement('button');
      t.type = 'button';
      t.className = 'jp-LaunchJob-tab';
      t.id = `${this.id}-tab-${tab}`;
      t.setAttribute('role', 'tab');
      t.setAttribute('aria-controls', `${this.id}-panel-${tab}`);
      t.dataset.tab = tab;
      t.textContent = tab[0].toUpperCase() + tab.slice(1);
      t.addEventListener('click', () => this.showTab(tab));
      t.addEventListener('keydown', e => this._onTabKey(e));
      tablist.appendChild(t);
      this._tabButtons[tab] = t;
      const panel = panels[tab];
      panel.id = `${this.id}-panel-${tab}`;
      panel.setAttribute('role', 'tabpanel');
      panel.setAttribute('aria-labelledby', t.id);
      panel.classList.add('jp-LaunchJob-panel');
    });

    // Child widgets in a layout, so the log and charts get attach and resize messages.
    const layout = new PanelLayout();
    this.layout = layout;
    layout.addWidget(new Widget({ node: header }));
    layout.addWidget(new Widget({ node: tablist }));
    layout.addWidget(this.log);
    layout.addWidget(this._metricsView);
    layout.addWidget(new Widget({ node: this._outputs }));
    this.showTab('logs');

    if (options.job) {
      this._update(options.job);
    }
    this._follower = new LogFollower({ api: this._api, jobId: this.jobId });
    this._follower.received.connect((_, text) => this.log.append(text));
    // The stream says when the state changes; read the whole job then instead of waiting for the next poll.
    this._follower.stateChanged.connect(() => this._pollSoon());
    this._follower.start();
    void this._pollJob();
  }

  readonly jobId: string;
  readonly log: LogView;
  readonly metrics: MetricsModel;

  get job(): IJob | null {
    return this._job;
  }

  showTab(tab: Tab): void {
    this._tab = tab;
    for (const [name, b] of Object.entries(this._tabButtons)) {
      const selected = name === tab;
      b.setAttribute('aria-selected', String(selected));
      b.tabIndex = selected ? 0 : -1;
      b.classList.toggle('jp-mod-selected', selected);
    }
    this.log.setHidden(tab !== 'logs');
    this._metricsView.setHidden(tab !== 'metrics');
    this._outputs.hidden = tab !== 'outputs';
    if (tab === 'logs') {
      this.log.scheduleRender();
    } else if (tab === 'outputs') {
      void this._loadOutputs();
    }
  }

  async cancel(): Promise<void> {
    this._cancelButton.disabled = true;
    try {
      this._update(await this._api.cancel(this.jobId));
    } catch (err) {
      this._showError(err);
      this._cancelButton.disabled = false;
    }
  }

  async rerun(): Promise<void> {
    try {
      const job = await this._api.rerun(this.jobId);
      this._options.openJob(job.id, job);
    } catch (err) {
      this._showError(err);
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._disposedFlag = true;
    if (this._timer) {
      clearTimeout(this._timer);
    }
    this._follower.dispose();
    this.log.dispose();
    this._metricsView.dispose();
    super.dispose();
  }

  private _onTabKey(e: KeyboardEvent): void {
    const order: Tab[] = ['logs', 'metrics', 'outputs'];
    const i = order.indexOf(this._tab);
    let next: Tab | null = null;
    if (e.key === 'ArrowRight') {
      next = order[(i + 1) % order.length];
    } else if (e.key === 'ArrowLeft') {
      next = order[(i + order.length - 1) % order.length];
    } else if (e.key === 'Home') {
      next = order[0];
    } else if (e.key === 'End') {
      next = order[order.length - 1];
    }
    if (next) {
      e.preventDefault();
      this.showTab(next);
      this._tabButtons[next]?.focus();
    }
  }

  private async _pollJob(): Promise<void> {
    if (this._disposedFlag) {
      return;
    }
    if (this._inFlight) {
      this._again = true;
      return;
    }
    this._inFlight = true;
    let final = false;
    try {
      const job = await this._api.getJob(this.jobId);
      this._update(job);
      final = isFinal(job);
      this.metrics.add(await this._api.metrics(this.jobId, this.metrics.lastId));
    } catch (err) {
      this._showError(err);
    } finally {
      this._inFlight = false;
    }
    if (this._disposedFlag) {
      return;
    }
    if (final) {
      this._follower.jobFinished();
      if (!this._outputsLoadedFinal) {
        this._outputsLoadedFinal = true;
        void this._loadOutputs();
      }
      return;
    }
    if (this._timer) {
      clearTimeout(this._timer);
    }
    const delay = this._again ? 0 : this._pollInterval;
    this._again = false;
    this._timer = setTimeout(() => void this._pollJob(), delay);
  }

  private _pollSoon(): void {
    if (this._disposedFlag || (this._job && isFinal(this._job))) {
      return;
    }
    if (this._timer) {
      clearTimeout(this._timer);
    }
    this._timer = setTimeout(() => void this._pollJob(), 0);
  }

  private _update(job: IJob): void {
    this._job = job;
    this.title.label = `${jobTitle(job)} · ${job.id.slice(0, 8)}`;
    this._heading.textContent = jobTitle(job);
    this._state.textContent = job.state;
    this._state.className = `jp-LaunchState jp-LaunchState-${job.state}`;
    this.node.dataset.state = job.state;
    this._reason.textContent = job.message || job.reason || '';
    this._reason.title = job.reason || '';
    const rows: Array<[string, string]> = [
      ['Job id', job.id],
      ['Queue', job.queue],
      ['Job type', job.job_type || '—'],
      ['Owner', ownerName(job) || '—'],
      ['Resources', resourcesText(job) || 'none asked for'],
      ['Ran on', job.agent_id || (job.state === 'queued' ? 'not yet' : '—')],
      ['Submitted', formatAgo(job.submitted_at)],
      ['Duration', formatDuration(jobDuration(job))],
      ['Attempt', `${job.attempt}${job.retries ? ` of ${job.retries + 1}` : ''}`]
    ];
    if (job.exit_code !== null && job.exit_code !== undefined) {
      rows.push(['Exit code', String(job.exit_code)]);
    }
    this._meta.replaceChildren(
      ...rows.flatMap(([k, v]) => {
        const dt = document.createElement('dt');
        dt.textContent = k;
        const dd = document.createElement('dd');
        dd.textContent = v;
        return [dt, dd];
      })
    );
    this._cancelButton.disabled = isFinal(job) || Boolean(job.cancel_requested);
  }

  private async _loadOutputs(): Promise<void> {
    let outputs: IOutput[];
    try {
      outputs = await this._api.outputs(this.jobId);
    } catch (err) {
      this._outputs.textContent = (err as Error).message;
      return;
    }
    if (!outputs.length) {
      this._outputs.textContent = this._job && isFinal(this._job) ? 'This job left no outputs.' : 'Outputs appear here when the job finishes.';
      return;
    }
    const list = document.createElement('ul');
    list.className = 'jp-LaunchJob-outputList';
    for (const out of outputs) {
      const li = document.createElement('li');
      li.className = 'jp-LaunchJob-output';
      const name = document.createElement('span');
      name.className = 'jp-LaunchJob-outputPath';
      name.textContent = out.path;
      const size = document.createElement('span');
      size.className = 'jp-LaunchJob-outputSize';
      size.textContent = formatBytes(out.size);
      const download = button('Download', `Download ${out.path}`, 'jp-LaunchJob-download', () =>
        void this._download(out.path)
      );
      li.append(name, size, download);
      if (out.path.endsWith('.ipynb')) {
        li.appendChild(
          button('Open executed notebook', `Open ${out.path} in JupyterLab`, 'jp-LaunchJob-openNotebook', () => {
            this._options.openNotebook(this.jobId, out.path).catch(err => this._showError(err));
          })
        );
      }
      list.appendChild(li);
    }
    this._outputs.replaceChildren(list);
  }

  /** The whole log as the server has it now (not only the lines drawn), saved as `JOB_ID.log`. */
  async downloadLog(): Promise<void> {
    try {
      const text = await this._api.logText(this.jobId);
      saveBlob(new Blob([text], { type: 'text/plain;charset=utf-8' }), `${this.jobId}.log`);
    } catch (err) {
      this._showError(err);
    }
  }

  private async _download(path: string): Promise<void> {
    try {
      saveBlob(await this._api.outputBlob(this.jobId, path), path.split('/').pop() || path);
    } catch (err) {
      this._showError(err);
    }
  }

  private _showError(err: unknown): void {
    this._error.textContent = (err as Error).message || String(err);
    this._error.hidden = false;
  }

  private _api: LaunchAPI;
  private _options: IJobViewOptions;
  private _pollInterval: number;
  private _job: IJob | null = null;
  private _tab: Tab = 'logs';
  private _tabButtons: Partial<Record<Tab, HTMLButtonElement>> = {};
  private _heading: HTMLHeadingElement;
  private _state: HTMLSpanElement;
  private _reason: HTMLParagraphElement;
  private _meta: HTMLDListElement;
  private _error: HTMLParagraphElement;
  private _cancelButton: HTMLButtonElement;
  private _rerunButton: HTMLButtonElement;
  private _metricsView: MetricsView;
  private _outputs: HTMLDivElement;
  private _follower: LogFollower;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _disposedFlag = false;
  private _inFlight = false;
  private _again = false;
  private _outputsLoadedFinal = false;
}
