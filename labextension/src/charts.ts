/**
 * Live metric charts: one small SVG line chart per metric key, redrawn at most once a frame from a MetricsModel.
 */

import { Widget } from '@lumino/widgets';

import { ISeries, MetricsModel } from './models';

const SVG = 'http://www.w3.org/2000/svg';
export const WIDTH = 320;
export const HEIGHT = 120;
export const PAD = { left: 44, right: 8, top: 8, bottom: 18 };
/** Points drawn per series at most; longer series are thinned evenly (the last point always kept). */
const MAX_POINTS = 600;

export function niceNumber(v: number): string {
  if (v === 0) {
    return '0';
  }
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) {
    return v.toExponential(1);
  }
  return Number(v.toPrecision(3)).toString();
}

/** The ranges a chart's box spans. */
export interface IBounds {
  min: number;
  max: number;
  xmin: number;
  xmax: number;
}

/** The ranges spanning all these series, so several can share one box. */
export function boundsOf(series: ReadonlyArray<ReadonlyArray<[number, number]>>): IBounds {
  const b = { min: Infinity, max: -Infinity, xmin: Infinity, xmax: -Infinity };
  for (const points of series) {
    for (const [x, y] of points) {
      b.min = Math.min(b.min, y);
      b.max = Math.max(b.max, y);
      b.xmin = Math.min(b.xmin, x);
      b.xmax = Math.max(b.xmax, x);
    }
  }
  return b;
}

/** The polyline points for a series in the chart's box (scaled to ``bounds`` when given, else to its own). */
export function seriesPath(points: ReadonlyArray<[number, number]>, bounds?: IBounds): {
  path: string;
  min: number;
  max: number;
  xmin: number;
  xmax: number;
} {
  const stride = Math.max(1, Math.ceil(points.length / MAX_POINTS));
  const shown: Array<[number, number]> = [];
  for (let i = 0; i < points.length; i += stride) {
    shown.push(points[i]);
  }
  if (points.length && shown[shown.length - 1] !== points[points.length - 1]) {
    shown.push(points[points.length - 1]);
  }
  const { min, max, xmin, xmax } = bounds ?? boundsOf([points]);
  const w = WIDTH - PAD.left - PAD.right;
  const h = HEIGHT - PAD.top - PAD.bottom;
  const dx = xmax - xmin || 1;
  const dy = max - min || 1;
  const path = shown
    .map(([x, y]) => {
      const px = PAD.left + ((x - xmin) / dx) * w;
      const py = PAD.top + h - ((y - min) / dy) * h;
      return `${px.toFixed(1)},${py.toFixed(1)}`;
    })
    .join(' ');
  return { path, min, max, xmin, xmax };
}

export class MetricsView extends Widget {
  constructor(readonly model: MetricsModel) {
    super();
    this.addClass('jp-LaunchMetrics');
    this._empty = document.createElement('p');
    this._empty.className = 'jp-LaunchMetrics-empty';
    this._empty.textContent = 'No metrics yet. A job records them with jupyter_launch.log({"loss": 0.1}).';
    this.node.appendChild(this._empty);
    model.changed.connect(this._schedule, this);
  }

  dispose(): void {
    this.model.changed.disconnect(this._schedule, this);
    super.dispose();
  }

  protected onAfterShow(): void {
    this._schedule();
  }

  protected onAfterAttach(): void {
    this._schedule();
  }

  private _schedule(): void {
    if (this._pending) {
      return;
    }
    this._pending = true;
    requestAnimationFrame(() => {
      this._pending = false;
      this._render();
    });
  }

  private _render(): void {
    const series = this.model.series;
    this._empty.hidden = series.length > 0;
    for (const s of series) {
      let chart = this._charts.get(s.key);
      if (!chart) {
        chart = this._createChart(s.key);
        this._charts.set(s.key, chart);
        this.node.appendChild(chart.figure);
      }
      this._draw(chart, s);
    }
  }

  private _createChart(key: string): IChart {
    const figure = document.createElement('figure');
    figure.className = 'jp-LaunchMetrics-chart';
    const caption = document.createElement('figcaption');
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
    svg.setAttribute('role', 'img');
    const axes = document.createElementNS(SVG, 'path');
    axes.setAttribute('class', 'jp-LaunchMetrics-axes');
    axes.setAttribute(
      'd',
      `M${PAD.left},${PAD.top} V${HEIGHT - PAD.bottom} H${WIDTH - PAD.right}`
    );
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('class', 'jp-LaunchMetrics-line');
    const labels = [0, 1, 2, 3].map(i => {
      const t = document.createElementNS(SVG, 'text');
      t.setAttribute('class', 'jp-LaunchMetrics-label');
      if (i < 2) {
        t.setAttribute('x', String(PAD.left - 4));
        t.setAttribute('y', String(i === 0 ? PAD.top + 8 : HEIGHT - PAD.bottom));
        t.setAttribute('text-anchor', 'end');
      } else {
        t.setAttribute('y', String(HEIGHT - 4));
        t.setAttribute('x', String(i === 2 ? PAD.left : WIDTH - PAD.right));
        t.setAttribute('text-anchor', i === 2 ? 'start' : 'end');
      }
      svg.appendChild(t);
      return t;
    });
    svg.append(axes, line);
    figure.append(caption, svg);
    return { figure, caption, svg, line, labels };
  }

  private _draw(chart: IChart, s: ISeries): void {
    const { path, min, max, xmin, xmax } = seriesPath(s.points);
    chart.line.setAttribute('points', path);
    const last = s.points[s.points.length - 1][1];
    chart.caption.textContent = `${s.key}: ${niceNumber(last)}`;
    chart.svg.setAttribute(
      'aria-label',
      `${s.key}, ${s.points.length} points, last ${niceNumber(last)}, range ${niceNumber(min)} to ${niceNumber(max)}`
    );
    chart.labels[0].textContent = niceNumber(max);
    chart.labels[1].textContent = niceNumber(min);
    chart.labels[2].textContent = niceNumber(xmin);
    chart.labels[3].textContent = niceNumber(xmax);
  }

  private _charts = new Map<string, IChart>();
  private _empty: HTMLParagraphElement;
  private _pending = false;
}

interface IChart {
  figure: HTMLElement;
  caption: HTMLElement;
  svg: SVGSVGElement;
  line: SVGPolylineElement;
  labels: SVGTextElement[];
}
