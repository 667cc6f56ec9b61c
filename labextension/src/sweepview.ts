/**
 * A sweep's view in the main area: the children's table (job, swept parameters, state, the last value of each
 * metric, best first when the sweep names a metric) and one chart per metric with every child's series overlaid.
 * Kept current by polling while it is visible and some child has not ended.
 */

import { Widget } from '@lumino/widgets';

import { FINAL_STATES, IJob, IMetricRecord, ISweep, LaunchAPI } from './api';
import { HEIGHT, PAD, WIDTH, boundsOf, seriesPath } from './charts';

const SVG = 'http://www.w3.org/2000/svg';
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
  '#17becf'];

export interface ISweepViewOptions {
  api: LaunchAPI;
  sweepId: string;
  openJob: (id: string, job?: IJob) => void;
  /** Poll interval while children run, ms. */
  interval?: number;
}

interface IChild {
  job: IJob;
  /** Every numeric metric's points, [step or index, value], in order. */
  series: Map<string, Array<[number, number]>>;
}

function isNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

function cell(value: unknown): string {
  if (value === undefined || value === null) {
    return '–';
  }
  return typeof value === 'number' && !Number.isInteger(value) ? String(Number(value.toPrecision(6))) : String(value);
}

/** The children's rows, best first by the sweep's metric (its goal decides); children without it last. */
export function rankChildren(children: IChild[], metric: string | null, goal: string): IChild[] {
  if (!metric) {
    return children;
  }
  const last = (c: IChild): number | undefined => c.series.get(metric)?.slice(-1)[0]?.[1];
  const sign = goal === 'maximize' ? -1 : 1;
  return [...children].sort((a, b) => {
    const x = last(a);
    const y = last(b);
    if (x === undefined || y === undefined) {
      return x === undefined ? (y === undefined ? 0 : 1) : -1;
    }
    return sign * (x - y);
  });
}

export class SweepView extends Widget {
  constructor(options: ISweepViewOptions) {
    super();
    this._api = options.api;
    this._openJob = options.openJob;
    this._interval = options.interval ?? 1000;
    this.id = `jp-launch-sweep-${options.sweepId}`;
    this._sweepId = options.sweepId;
    this.addClass('jp-LaunchSweep');
    this.title.label = `Sweep ${options.sweepId}`;
    this.title.closable = true;
    this._heading = document.createElement('h2');
    this._heading.className = 'jp-LaunchSweep-heading';
    this._status = document.createElement('p');
    this._status.className = 'jp-LaunchSweep-status';
    this._status.setAttribute('role', 'status');
    this._table = document.createElement('table');
    this._table.className = 'jp-LaunchSweep-table';
    this._charts = document.createElement('div');
    this._charts.className = 'jp-LaunchSweep-charts';
    this.node.append(this._heading, this._status, this._table, this._charts);
  }

  get sweep(): ISweep | null {
    return this._sweep;
  }

  async refresh(): Promise<void> {
    try {
      this._sweep = this._sweep ?? (await this._api.getSweep(this._sweepId));
      const jobs = (await this._api.sweepJobs(this._sweepId)).reverse();
      const children: IChild[] = [];
      for (const job of jobs) {
        const known = this._children.get(job.id);
        const records: IMetricRecord[] = await this._api.metrics(job.id, known?.after ?? 0);
        const series = known?.child.series ?? new Map<string, Array<[number, number]>>();
        for (const r of records) {
          for (const [k, v] of Object.entries(r.data || {})) {
            if (isNumber(v)) {
              const points = series.get(k) ?? [];
              points.push([r.step ?? points.length, v]);
              series.set(k, points);
            }
          }
        }
        const after = records.length ? records[records.length - 1].id : known?.after ?? 0;
        const child = { job, series };
        this._children.set(job.id, { child, after });
        children.push(child);
      }
      this._render(children);
      this._status.classList.remove('jp-mod-error');
      this._done = jobs.length > 0 && jobs.every(j => FINAL_STATES.includes(j.state));
    } catch (err) {
      this._status.textContent = (err as Error).message;
      this._status.classList.add('jp-mod-error');
    }
  }

  dispose(): void {
    this._stop();
    super.dispose();
  }

  protected onAfterAttach(): void {
    this._start();
  }

  protected onBeforeDetach(): void {
    this._stop();
  }

  private _start(): void {
    if (this._timer === null) {
      const tick = async (): Promise<void> => {
        await this.refresh();
        if (!this._done && !this.isDisposed) {
          this._timer = setTimeout(() => void tick(), this._interval);
        } else {
          this._timer = null;
        }
      };
      this._timer = setTimeout(() => void tick(), 0);
    }
  }

  private _stop(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _render(children: IChild[]): void {
    const sweep = this._sweep as ISweep;
    const config = sweep.config as { parameters?: Record<string, unknown>; metric?: { name?: string; goal?: string } };
    const swept = Object.keys(config.parameters ?? {});
    const metric = config.metric?.name ?? null;
    const goal = config.metric?.goal ?? 'minimize';
    const names = new Set<string>();
    children.forEach(c => c.series.forEach((_, k) => names.add(k)));
    const metrics = [...names].sort();
    if (metric) {
      metrics.splice(metrics.indexOf(metric), metrics.includes(metric) ? 1 : 0);
      metrics.unshift(metric);
    }
    this._heading.textContent = `Sweep ${sweep.name} · ${sweep.queue}`;
    const counts = new Map<string, number>();
    children.forEach(c => counts.set(c.job.state, (counts.get(c.job.state) ?? 0) + 1));
    this._status.textContent =
      `${sweep.runs} job(s)${sweep.max_parallel ? `, at most ${sweep.max_parallel} at once` : ''}` +
      `${metric ? `, ranked by ${metric} (${goal})` : ''}: ` +
      [...counts].map(([s, n]) => `${n} ${s}`).join(', ');

    const head = document.createElement('tr');
    for (const h of ['Job', ...swept, 'State', ...metrics]) {
      const th = document.createElement('th');
      th.textContent = h;
      head.appendChild(th);
    }
    const colors = new Map(children.map((c, i) => [c.job.id, COLORS[i % COLORS.length]]));
    const rows = rankChildren(children, metric, goal).map(c => {
      const tr = document.createElement('tr');
      tr.className = 'jp-LaunchSweep-row';
      tr.dataset.jobId = c.job.id;
      const idCell = document.createElement('td');
      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'jp-LaunchSweep-open';
      open.textContent = c.job.name || c.job.id;
      open.style.borderLeftColor = colors.get(c.job.id) ?? '';
      open.addEventListener('click', () => this._openJob(c.job.id, c.job));
      idCell.appendChild(open);
      tr.appendChild(idCell);
      const params = (c.job.spec.parameters ?? {}) as Record<string, unknown>;
      const values = [...swept.map(p => cell(params[p])), c.job.state,
        ...metrics.map(m => cell(c.series.get(m)?.slice(-1)[0]?.[1]))];
      values.forEach((v, i) => {
        const td = document.createElement('td');
        td.textContent = v;
        if (i === swept.length) {
          td.className = `jp-LaunchState jp-LaunchState-${c.job.state}`;
        }
        tr.appendChild(td);
      });
      return tr;
    });
    this._table.replaceChildren(head, ...rows);
    this._charts.replaceChildren(...metrics.map(m => this._chart(m, children, colors)));
  }

  /** One metric with every child's series overlaid on a shared scale. */
  private _chart(metric: string, children: IChild[], colors: Map<string, string>): HTMLElement {
    const figure = document.createElement('figure');
    figure.className = 'jp-LaunchSweep-chart';
    figure.dataset.metric = metric;
    const caption = document.createElement('figcaption');
    caption.textContent = metric;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `${metric} of each job of the sweep`);
    const bounds = boundsOf(children.map(c => c.series.get(metric) ?? []));
    for (const c of children) {
      const points = c.series.get(metric);
      if (!points?.length) {
        continue;
      }
      const line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('class', 'jp-LaunchSweep-series');
      line.setAttribute('data-job-id', c.job.id);
      line.setAttribute('fill', 'none');
      line.setAttribute('stroke', colors.get(c.job.id) ?? 'currentColor');
      line.setAttribute('points', seriesPath(points, bounds).path);
      svg.appendChild(line);
    }
    const h = HEIGHT - PAD.top - PAD.bottom;
    for (const [value, y] of [[bounds.max, PAD.top + 10], [bounds.min, PAD.top + h]] as Array<[number, number]>) {
      const label = document.createElementNS(SVG, 'text');
      label.setAttribute('x', '2');
      label.setAttribute('y', String(y));
      label.textContent = isNumber(value) ? String(Number(value.toPrecision(3))) : '';
      svg.appendChild(label);
    }
    figure.append(caption, svg);
    return figure;
  }

  private _api: LaunchAPI;
  private _openJob: (id: string, job?: IJob) => void;
  private _interval: number;
  private _sweepId: string;
  private _sweep: ISweep | null = null;
  private _children = new Map<string, { child: IChild; after: number }>();
  private _done = false;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _heading: HTMLHeadingElement;
  private _status: HTMLParagraphElement;
  private _table: HTMLTableElement;
  private _charts: HTMLDivElement;
}
