/**
 * Schedules and priorities in the panel: the schedules list (next run, pause or resume, delete), and the dialog's
 * "Priority" and "Run on a schedule" fields. A schedule made here is the one `jupyter launch schedule create` makes:
 * the server packages the notebook once, and any agent or server on the store fires it.
 */

import { IJob, ISchedule, LaunchAPI } from './api';
import { FormError } from './params';

/** The dialog's extra fields, read by `values()`. */
export interface IScheduleValues {
  priority: string;
  scheduled: boolean;
  cron: string;
  tz: string;
}

/** "Priority" and "Run on a schedule" (cron, time zone) for the submit form. */
export class ScheduleFields {
  constructor(uid: string) {
    this.node = document.createElement('fieldset');
    this.node.className = 'jp-LaunchSubmit-schedule';
    const legend = document.createElement('legend');
    legend.textContent = 'When';
    const row = (label: string, control: HTMLElement, name: string, hint?: string): HTMLElement => {
      const div = document.createElement('div');
      div.className = 'jp-LaunchSubmit-field';
      div.dataset.field = name;
      const l = document.createElement('label');
      control.id = `${uid}-${name}`;
      l.htmlFor = control.id;
      l.textContent = label;
      div.append(l, control);
      if (hint) {
        const h = document.createElement('small');
        h.className = 'jp-LaunchSubmit-hint';
        h.textContent = hint;
        div.appendChild(h);
      }
      return div;
    };
    this._priority = document.createElement('input');
    this._priority.className = 'jp-mod-styled';
    this._priority.name = 'priority';
    this._priority.type = 'number';
    this._priority.placeholder = '0';
    this._scheduled = document.createElement('input');
    this._scheduled.type = 'checkbox';
    this._scheduled.name = 'scheduled';
    this._cron = document.createElement('input');
    this._cron.className = 'jp-mod-styled';
    this._cron.name = 'cron';
    this._cron.placeholder = 'e.g. 0 6 * * mon-fri';
    this._tz = document.createElement('input');
    this._tz.className = 'jp-mod-styled';
    this._tz.name = 'tz';
    this._tz.value = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    const cronRow = row('Cron', this._cron, 'cron', 'minute hour day-of-month month day-of-week');
    const tzRow = row('Time zone', this._tz, 'tz');
    const toggle = (): void => {
      cronRow.hidden = tzRow.hidden = !this._scheduled.checked;
    };
    this._scheduled.addEventListener('change', toggle);
    toggle();
    this.node.append(
      legend,
      row('Priority', this._priority, 'priority', 'Higher runs first; the same priority runs in order.'),
      row('Run on a schedule', this._scheduled, 'scheduled'),
      cronRow,
      tzRow
    );
  }

  values(): IScheduleValues {
    return {
      priority: this._priority.value,
      scheduled: this._scheduled.checked,
      cron: this._cron.value,
      tz: this._tz.value
    };
  }

  readonly node: HTMLFieldSetElement;
  private _priority: HTMLInputElement;
  private _scheduled: HTMLInputElement;
  private _cron: HTMLInputElement;
  private _tz: HTMLInputElement;
}

/** The priority to send (undefined: the default), or a FormError naming the field. */
export function parsePriority(text: string): number | undefined {
  if (!text.trim()) {
    return undefined;
  }
  if (!/^\s*-?\d+\s*$/.test(text) || Math.abs(parseInt(text, 10)) > 1000) {
    throw new FormError(`Priority must be a whole number from -1000 to 1000, not "${text}".`, 'priority');
  }
  return parseInt(text, 10);
}

/** The cron expression to send, checked for its five fields (the server checks each field and says which). */
export function checkCron(text: string): string {
  const fields = text.trim().split(/\s+/).filter(Boolean);
  if (fields.length !== 5 && !/^@\w+$/.test(text.trim())) {
    throw new FormError('Cron needs five fields: minute hour day-of-month month day-of-week, e.g. 0 6 * * *.', 'cron');
  }
  return text.trim();
}

function formatWhen(ts: number | null | undefined, tz: string): string {
  if (!ts) {
    return '–';
  }
  try {
    return new Date(ts * 1000).toLocaleString(undefined, { timeZone: tz, dateStyle: 'medium', timeStyle: 'short' });
  } catch {
    return new Date(ts * 1000).toLocaleString();
  }
}

/** The panel's "Schedules" list: each schedule's name, cron and zone, next run; Pause or Resume, and Delete. */
export class SchedulesSection {
  constructor(api: LaunchAPI, onChange: () => void) {
    this._api = api;
    this._onChange = onChange;
    this.node = document.createElement('section');
    this.node.className = 'jp-LaunchSchedules';
    const h = document.createElement('h3');
    h.textContent = 'Schedules';
    this._status = document.createElement('p');
    this._status.className = 'jp-LaunchSchedules-status';
    this._list = document.createElement('ul');
    this._list.className = 'jp-LaunchSchedules-list';
    this._list.setAttribute('aria-label', 'Schedules');
    this.node.append(h, this._status, this._list);
  }

  get schedules(): ReadonlyArray<ISchedule> {
    return this._schedules;
  }

  async refresh(): Promise<void> {
    try {
      this._schedules = await this._api.listSchedules();
      this._status.textContent = this._schedules.length
        ? ''
        : 'No schedules. Tick "Run on a schedule" when you launch a notebook.';
      this._status.classList.remove('jp-mod-error');
    } catch (err) {
      this._status.textContent = (err as Error).message;
      this._status.classList.add('jp-mod-error');
    }
    this._render();
  }

  private _render(): void {
    this._list.replaceChildren(
      ...this._schedules.map(s => {
        const li = document.createElement('li');
        li.className = 'jp-LaunchSchedule';
        li.dataset.schedule = s.id;
        li.classList.toggle('jp-mod-paused', s.paused);
        const name = document.createElement('span');
        name.className = 'jp-LaunchSchedule-name';
        name.textContent = s.name;
        const when = document.createElement('span');
        when.className = 'jp-LaunchSchedule-when';
        when.textContent = `${s.cron} (${s.tz}) · ${s.queue}`;
        const next = document.createElement('span');
        next.className = 'jp-LaunchSchedule-next';
        next.textContent = s.paused ? 'paused' : `next ${formatWhen(s.next_run_at, s.tz)}`;
        const pause = document.createElement('button');
        pause.type = 'button';
        pause.className = 'jp-mod-styled jp-LaunchSchedule-pause';
        pause.textContent = s.paused ? 'Resume' : 'Pause';
        pause.setAttribute('aria-label', `${s.paused ? 'Resume' : 'Pause'} schedule ${s.name}`);
        pause.addEventListener('click', () => void this._act(() => this._api.setSchedulePaused(s.id, !s.paused)));
        const remove = document.createElement('button');
        remove.type = 'button';
        remove.className = 'jp-mod-styled jp-mod-warn jp-LaunchSchedule-delete';
        remove.textContent = 'Delete';
        remove.setAttribute('aria-label', `Delete schedule ${s.name}`);
        remove.addEventListener('click', () => void this._act(() => this._api.deleteSchedule(s.id)));
        li.append(name, when, next, pause, remove);
        return li;
      })
    );
  }

  private async _act(action: () => Promise<unknown>): Promise<void> {
    try {
      await action();
    } catch (err) {
      this._status.textContent = (err as Error).message;
      this._status.classList.add('jp-mod-error');
    }
    await this.refresh();
    this._onChange();
  }

  readonly node: HTMLElement;
  private _api: LaunchAPI;
  private _onChange: () => void;
  private _status: HTMLParagraphElement;
  private _list: HTMLUListElement;
  private _schedules: ISchedule[] = [];
}

/** A job row's extra buttons: "Move to front" on a queued job, "Sweep" on a child of a sweep. */
export function jobRowActions(
  job: IJob,
  api: LaunchAPI,
  refresh: () => void,
  openSweep?: (id: string) => void
): HTMLElement[] {
  const out: HTMLElement[] = [];
  if (job.state === 'queued') {
    const move = document.createElement('button');
    move.type = 'button';
    move.className = 'jp-mod-styled jp-LaunchJobRow-front';
    move.textContent = '⤒';
    move.title = 'Move to the front of its queue';
    move.setAttribute('aria-label', `Move job ${job.name || job.id} to the front`);
    move.addEventListener('click', () => void api.moveToFront(job.id).then(refresh, refresh));
    out.push(move);
  }
  if (job.parent_id && openSweep) {
    const sweep = document.createElement('button');
    sweep.type = 'button';
    sweep.className = 'jp-mod-styled jp-LaunchJobRow-sweep';
    sweep.textContent = 'Sweep';
    sweep.setAttribute('aria-label', `Open the sweep of job ${job.name || job.id}`);
    const parent = job.parent_id;
    sweep.addEventListener('click', () => openSweep(parent));
    out.push(sweep);
  }
  return out;
}
