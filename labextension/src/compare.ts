/**
 * "Compare runs": the metrics of several jobs overlaid, one chart per metric key with a line per job on one scale, and
 * a legend naming each job. Opened from the History view's picked rows; one tab, reused.
 */

import { Widget } from '@lumino/widgets';

import { IJob, IMetricRecord, LaunchAPI } from './api';
import { HEIGHT, PAD, WIDTH, boundsOf, niceNumber, seriesPath } from './charts';
import { MetricsModel, jobTitle } from './models';

const SVG = 'http://www.w3.org/2000/svg';
export const COMPARE_ID = 'jp-launch-compare';
/** Lines get these many distinct colours (jp-LaunchCompare-run0 …), then repeat. */
const COLOURS = 6;

/** One job's line on one chart. */
export interface IRunLine {
  job: IJob;
  /** The job's place in the comparison: its colour. */
  index: number;
  points: Array<[number, number]>;
}

/** Each metric key with one line per job that recorded it, keys in the order they first appear. */
export function overlaySeries(runs: ReadonlyArray<{ job: IJob; records: IMetricRecord[] }>): Map<string, IRunLine[]> {
  const byKey = new Map<string, IRunLine[]>();
  runs.forEach(({ job, records }, index) => {
    const model = new MetricsModel();
    model.add(records);
    for (const s of model.series) {
      const lines = byKey.get(s.key) ?? [];
      lines.push({ job, index, points: s.points });
      byKey.set(s.key, lines);
    }
  });
  return byKey;
}

export class CompareView extends Widget {
  constructor(readonly api: LaunchAPI) {
    super();
    this.id = COMPARE_ID;
    this.addClass('jp-LaunchCompare');
    this.title.label = 'Compare runs';
    this.title.closable = true;
    this._legend = document.createElement('ul');
    this._legend.className = 'jp-LaunchCompare-legend';
    this._legend.setAttribute('aria-label', 'Runs compared');
    this._status = document.createElement('p');
    this._status.className = 'jp-LaunchPanel-status';
    this._status.setAttribute('role', 'status');
    this._charts = document.createElement('div');
    this._charts.className = 'jp-LaunchCompare-charts';
    this.node.append(this._legend, this._status, this._charts);
  }

  /** Read these jobs' metrics and draw them overlaid. */
  async compare(jobs: ReadonlyArray<IJob>): Promise<void> {
    this.title.caption = `Metrics of ${jobs.map(j => jobTitle(j)).join(', ')}`;
    this._legend.replaceChildren(
      ...jobs.map((job, i) => {
        const li = document.createElement('li');
        li.className = `jp-LaunchCompare-run${i % COLOURS}`;
        li.dataset.jobId = job.id;
        li.textContent = `${jobTitle(job)} · ${job.id}`; // whole: ids submitted in one second share 8 characters
        return li;
      })
    );
    this._status.textContent = 'Reading metrics…';
    this._charts.replaceChildren();
    try {
      const runs = await Promise.all(jobs.map(async job => ({ job, records: await this.api.metrics(job.id) })));
      const byKey = overlaySeries(runs);
      this._status.textContent = byKey.size ? '' : 'None of these jobs recorded metrics (jupyter_launch.log({...})).';
      this._charts.replaceChildren(...Array.from(byKey, ([key, lines]) => chart(key, lines)));
    } catch (err) {
      this._status.textContent = (err as Error).message;
    }
  }

  private _legend: HTMLUListElement;
  private _status: HTMLParagraphElement;
  private _charts: HTMLDivElement;
}

/** One metric's chart: a line per job, all on the ranges they span together. */
function chart(key: string, lines: IRunLine[]): HTMLElement {
  const figure = document.createElement('figure');
  figure.className = 'jp-LaunchMetrics-chart jp-LaunchCompare-chart';
  figure.dataset.key = key;
  const caption = document.createElement('figcaption');
  caption.textContent = key;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute('role', 'img');
  const bounds = boundsOf(lines.map(l => l.points));
  svg.setAttribute(
    'aria-label',
    `${key} of ${lines.length} runs: ` +
      lines.map(l => `${jobTitle(l.job)} last ${niceNumber(l.points[l.points.length - 1][1])}`).join(', ')
  );
  const axes = document.createElementNS(SVG, 'path');
  axes.setAttribute('class', 'jp-LaunchMetrics-axes');
  axes.setAttribute('d', `M${PAD.left},${PAD.top} V${HEIGHT - PAD.bottom} H${WIDTH - PAD.right}`);
  svg.appendChild(axes);
  for (const line of lines) {
    const poly = document.createElementNS(SVG, 'polyline');
    poly.setAttribute('class', `jp-LaunchCompare-line jp-LaunchCompare-run${line.index % COLOURS}`);
    poly.setAttribute('points', seriesPath(line.points, bounds).path);
    poly.dataset.jobId = line.job.id;
    svg.appendChild(poly);
  }
  const label = (text: string, x: number, y: number, anchor: string) => {
    const t = document.createElementNS(SVG, 'text');
    t.setAttribute('class', 'jp-LaunchMetrics-label');
    t.setAttribute('x', String(x));
    t.setAttribute('y', String(y));
    t.setAttribute('text-anchor', anchor);
    t.textContent = text;
    svg.appendChild(t);
  };
  label(niceNumber(bounds.max), PAD.left - 4, PAD.top + 8, 'end');
  label(niceNumber(bounds.min), PAD.left - 4, HEIGHT - PAD.bottom, 'end');
  label(niceNumber(bounds.xmin), PAD.left, HEIGHT - 4, 'start');
  label(niceNumber(bounds.xmax), WIDTH - PAD.right, HEIGHT - 4, 'end');
  figure.append(caption, svg);
  return figure;
}
