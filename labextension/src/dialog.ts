/**
 * The submit dialog: queue, job type, resources, parameters (pre-filled from the notebook's `parameters` cell), env
 * and secrets by name. "Launch" saves the notebook, submits, and keeps the dialog open with the server's message
 * when it refuses (unknown queue, invalid resources, not authenticated).
 */

import { Dialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { IJob, IQueue, LaunchAPI, LaunchAPIError, errorMessage } from './api';
import { FormError, IFormValues, buildSubmitRequest } from './params';
import { ScheduleFields, checkCron, parsePriority } from './schedules';

let counter = 0;

export interface ISubmitFormOptions {
  notebook: string;
  queues: IQueue[];
  parameters: Array<[string, string]>;
  /** Shown when the queue list could not be read. */
  queueError?: string;
}

/** The dialog's body: the form fields, and the place for the server's error. */
export class SubmitForm extends Widget {
  constructor(options: ISubmitFormOptions) {
    super();
    this.addClass('jp-LaunchSubmit');
    const uid = `jp-launch-submit-${++counter}`;
    this._queues = options.queues;

    const form = document.createElement('form');
    form.className = 'jp-LaunchSubmit-form';
    form.addEventListener('submit', e => e.preventDefault());

    const field = (label: string, control: HTMLElement, name: string, hint?: string): HTMLElement => {
      const row = document.createElement('div');
      row.className = 'jp-LaunchSubmit-field';
      row.dataset.field = name;
      const l = document.createElement('label');
      control.id = `${uid}-${name}`;
      l.htmlFor = control.id;
      l.textContent = label;
      row.append(l, control);
      if (hint) {
        const h = document.createElement('small');
        h.className = 'jp-LaunchSubmit-hint';
        h.id = `${uid}-${name}-hint`;
        h.textContent = hint;
        control.setAttribute('aria-describedby', h.id);
        row.appendChild(h);
      }
      return row;
    };
    const input = (name: string, placeholder = '', value = ''): HTMLInputElement => {
      const i = document.createElement('input');
      i.className = 'jp-mod-styled';
      i.name = name;
      i.placeholder = placeholder;
      i.value = value;
      return i;
    };

    this._notebook = input('notebook', '', options.notebook);
    this._notebook.readOnly = true;

    this._queue = document.createElement('select');
    this._queue.className = 'jp-mod-styled';
    this._queue.name = 'queue';
    this._queue.required = true;
    for (const q of options.queues) {
      const o = document.createElement('option');
      o.value = q.name;
      const running = (q.counts.running ?? 0) + (q.counts.starting ?? 0) + (q.counts.claimed ?? 0);
      const agents = q.agents.length ? `${q.agents.length} agent${q.agents.length > 1 ? 's' : ''}` : 'no agent';
      o.textContent = `${q.name} (${q.provider}, ${running}/${q.max_instances ?? '∞'} running, ${agents})`;
      this._queue.appendChild(o);
    }
    this._queue.addEventListener('change', () => this._fillJobTypes());

    this._jobType = input('job_type', 'any');
    this._jobTypes = document.createElement('datalist');
    this._jobTypes.id = `${uid}-job-types`;
    this._jobType.setAttribute('list', this._jobTypes.id);

    this._cpu = input('cpu', 'e.g. 2 or 500m');
    this._gpu = input('gpu', '0');
    this._gpu.type = 'number';
    this._gpu.min = '0';
    this._gpu.step = '1';
    this._memory = input('memory', 'e.g. 8Gi');

    const resources = document.createElement('fieldset');
    resources.className = 'jp-LaunchSubmit-resources';
    const legend = document.createElement('legend');
    legend.textContent = 'Resources';
    resources.append(
      legend,
      field('CPU', this._cpu, 'cpu'),
      field('GPU', this._gpu, 'gpu'),
      field('Memory', this._memory, 'memory')
    );

    const params = document.createElement('fieldset');
    params.className = 'jp-LaunchSubmit-parameters';
    params.dataset.field = 'parameters';
    const plegend = document.createElement('legend');
    plegend.textContent = options.parameters.length
      ? 'Parameters (from the notebook’s parameters cell)'
      : 'Parameters';
    this._paramRows = document.createElement('div');
    this._paramRows.className = 'jp-LaunchSubmit-paramRows';
    const add = document.createElement('button');
    add.type = 'button';
    add.className = 'jp-mod-styled jp-LaunchSubmit-addParam';
    add.textContent = '+ Add parameter';
    add.addEventListener('click', () => this._addParam('', '').querySelector('input')?.focus());
    params.append(plegend, this._paramRows, add);
    for (const [k, v] of options.parameters) {
      this._addParam(k, v);
    }

    this._env = document.createElement('textarea');
    this._env.className = 'jp-mod-styled';
    this._env.name = 'env';
    this._env.rows = 2;
    this._env.placeholder = 'NAME=value, one a line';
    this._secrets = input('secrets', 'e.g. WANDB_API_KEY, HF_TOKEN');

    this.when = new ScheduleFields(uid);
    this._error = document.createElement('div');
    this._error.className = 'jp-LaunchSubmit-error';
    this._error.id = `${uid}-error`;
    this._error.setAttribute('role', 'alert');
    this._error.hidden = true;

    if (options.queueError) {
      this.showError(options.queueError);
    }

    form.append(
      field('Notebook', this._notebook, 'notebook', 'Sent as saved; the job runs in a folder with just this notebook.'),
      field('Queue', this._queue, 'queue'),
      field('Job type', this._jobType, 'job_type', 'Only agents accepting this job type take the job.'),
      this._jobTypes,
      resources,
      params,
      field('Environment', this._env, 'env'),
      field('Secrets', this._secrets, 'secrets', 'Names only: the agent supplies the values from its environment.'),
      this.when.node,
      this._error
    );
    this.node.appendChild(form);
    this._fillJobTypes();
  }

  /** Priority and "Run on a schedule". */
  readonly when: ScheduleFields;

  /** The job the server accepted (what the dialog resolves with). */
  job: IJob | null = null;

  getValue(): IJob | null {
    return this.job;
  }

  values(): IFormValues {
    const parameters: Array<[string, string]> = [];
    this._paramRows.querySelectorAll('.jp-LaunchSubmit-param').forEach(row => {
      const [k, v] = Array.from(row.querySelectorAll('input')) as HTMLInputElement[];
      parameters.push([k.value, v.value]);
    });
    return {
      notebook: this._notebook.value,
      queue: this._queue.value,
      jobType: this._jobType.value,
      cpu: this._cpu.value,
      gpu: this._gpu.value,
      memory: this._memory.value,
      parameters,
      env: this._env.value,
      secrets: this._secrets.value
    };
  }

  /** Show a message; mark the field it is about when known (`cpu`, `queue`, `resources.memory`, ...). */
  showError(message: string, field?: string | null): void {
    this._error.textContent = message;
    this._error.hidden = false;
    // The message sits below the fields: bring it into sight when the form scrolls (jsdom has no scrollIntoView).
    this._error.scrollIntoView?.({ block: 'nearest' });
    this.node.querySelectorAll('[aria-invalid]').forEach(el => el.removeAttribute('aria-invalid'));
    if (field) {
      const name = field.split('.').pop() as string;
      const control = this.node.querySelector(`[data-field="${CSS.escape(name)}"] input, [data-field="${CSS.escape(name)}"] select, [data-field="${CSS.escape(name)}"] textarea`) as HTMLElement | null;
      if (control) {
        control.setAttribute('aria-invalid', 'true');
        control.setAttribute('aria-errormessage', this._error.id || '');
      }
    }
  }

  clearError(): void {
    this._error.hidden = true;
    this._error.textContent = '';
    this.node.querySelectorAll('[aria-invalid]').forEach(el => el.removeAttribute('aria-invalid'));
  }

  setBusy(busy: boolean): void {
    this.toggleClass('jp-mod-busy', busy);
    this.node.setAttribute('aria-busy', String(busy));
  }

  private _fillJobTypes(): void {
    const q = this._queues.find(q => q.name === this._queue.value);
    this._jobTypes.replaceChildren(
      ...(q?.job_types || []).map(t => {
        const o = document.createElement('option');
        o.value = t;
        return o;
      })
    );
  }

  private _addParam(name: string, value: string): HTMLElement {
    const row = document.createElement('div');
    row.className = 'jp-LaunchSubmit-param';
    const k = document.createElement('input');
    k.className = 'jp-mod-styled';
    k.value = name;
    k.placeholder = 'name';
    k.setAttribute('aria-label', 'Parameter name');
    const v = document.createElement('input');
    v.className = 'jp-mod-styled';
    v.value = value;
    v.placeholder = 'value';
    v.setAttribute('aria-label', name ? `Value of ${name}` : 'Parameter value');
    k.addEventListener('input', () => v.setAttribute('aria-label', k.value ? `Value of ${k.value}` : 'Parameter value'));
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'jp-mod-styled jp-LaunchSubmit-removeParam';
    remove.textContent = '×';
    remove.setAttribute('aria-label', 'Remove parameter');
    remove.addEventListener('click', () => row.remove());
    row.append(k, v, remove);
    this._paramRows.appendChild(row);
    return row;
  }

  private _queues: IQueue[];
  private _notebook: HTMLInputElement;
  private _queue: HTMLSelectElement;
  private _jobType: HTMLInputElement;
  private _jobTypes: HTMLDataListElement;
  private _cpu: HTMLInputElement;
  private _gpu: HTMLInputElement;
  private _memory: HTMLInputElement;
  private _paramRows: HTMLDivElement;
  private _env: HTMLTextAreaElement;
  private _secrets: HTMLInputElement;
  private _error: HTMLDivElement;
}

export interface ISubmitDialogOptions {
  api: LaunchAPI;
  form: SubmitForm;
  /** Runs after the form checks out and before the request goes: saves the notebook, which the server packages. */
  saveNotebook: () => Promise<void>;
}

const ACCEPT = 1;

/** A dialog that stays open, showing the reason, when the submission fails. */
export class SubmitDialog extends Dialog<IJob | null> {
  constructor(options: ISubmitDialogOptions) {
    super({
      title: 'Launch notebook',
      body: options.form,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Launch', ariaLabel: 'Launch the notebook' })],
      defaultButton: ACCEPT,
      focusNodeSelector: 'select'
    });
    this.addClass('jp-LaunchSubmitDialog');
    this._api = options.api;
    this._form = options.form;
    this._saveNotebook = options.saveNotebook;
  }

  resolve(index?: number): void {
    const i = index ?? ACCEPT;
    if (i !== ACCEPT) {
      super.resolve(i);
      return;
    }
    if (!this._submitting) {
      void this._submit();
    }
  }

  private async _submit(): Promise<void> {
    this._submitting = true;
    this._form.clearError();
    this._form.setBusy(true);
    try {
      const request = buildSubmitRequest(this._form.values());
      const when = this._form.when.values();
      const priority = parsePriority(when.priority);
      if (priority !== undefined) {
        request.priority = priority;
      }
      const cron = when.scheduled ? checkCron(when.cron) : null;
      await this._saveNotebook();
      if (cron !== null) {
        await this._api.createSchedule({ ...request, cron, tz: when.tz.trim() || 'UTC' });
      } else {
        this._form.job = await this._api.submit(request);
      }
      super.resolve(ACCEPT);
    } catch (err) {
      if (err instanceof FormError) {
        this._form.showError(err.message, err.field);
      } else if (err instanceof LaunchAPIError) {
        this._form.showError(err.message, err.field);
      } else if (err instanceof ServerConnection.ResponseError) {
        // Saving or reading the notebook through JupyterLab's contents service, which says just "Forbidden".
        this._form.showError(errorMessage(err.response.status, JSON.stringify({ message: err.message })).message);
      } else {
        this._form.showError((err as Error).message || String(err));
      }
    } finally {
      this._submitting = false;
      if (!this.isDisposed) {
        this._form.setBusy(false);
      }
    }
  }

  private _api: LaunchAPI;
  private _form: SubmitForm;
  private _saveNotebook: () => Promise<void>;
  private _submitting = false;
}
