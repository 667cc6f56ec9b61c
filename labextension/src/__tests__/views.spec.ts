import { ServerConnection } from '@jupyterlab/services';

import { IJob, ISubmitRequest, LaunchAPI, LaunchAPIError } from '../api';
import { SubmitDialog, SubmitForm } from '../dialog';
import { LogView } from '../logview';

describe('LogView', () => {
  it('draws only the rows in sight, with colours and search marks', () => {
    const view = new LogView();
    document.body.appendChild(view.node);
    let text = '';
    for (let i = 0; i < 5000; i++) {
      text += i === 4990 ? '\x1b[31mERROR\x1b[0m at step 4990\n' : `step ${i}\n`;
    }
    view.append(text);
    view.render();
    const rows = view.node.querySelectorAll('.jp-LaunchLog-row');
    expect(rows.length).toBeLessThan(200);
    expect(view.node.querySelector('.jp-LaunchLog-count')!.textContent).toContain('5,000 lines');
    // Following: the last lines are drawn.
    expect(view.renderedRange[1]).toBe(5000);
    const red = view.node.querySelector('.jp-LaunchLog-fg1');
    expect(red?.textContent).toBe('ERROR');

    view.search('error');
    expect(view.matches).toEqual([4990]);
    expect(view.follow).toBe(false);
    view.render();
    expect(view.node.querySelector('mark.jp-LaunchLog-mark')?.textContent).toBe('ERROR');
    expect(view.node.querySelector('.jp-LaunchLog-matches')!.textContent).toBe('1 of 1');
    view.setFollow(true);
    expect(view.node.querySelector('.jp-LaunchLog-follow')!.getAttribute('aria-pressed')).toBe('true');
    view.dispose();
  });
});

describe('SubmitForm', () => {
  it('lists queues, pre-fills parameters and shows errors on the field', () => {
    const form = new SubmitForm({
      notebook: 'train.ipynb',
      queues: [
        { name: 'default', provider: 'local', shared: false, created_at: 0, updated_at: 0, max_instances: 2, min_instances: 0, counts: { running: 1 }, agents: ['a'], job_types: [], config: {} },
        { name: 'gpu', provider: 'kubernetes', shared: true, created_at: 0, updated_at: 0, max_instances: null, min_instances: 0, counts: {}, agents: [], job_types: ['train'], config: {} }
      ],
      parameters: [['lr', '0.1']]
    });
    const options = Array.from(form.node.querySelectorAll('select option')).map(o => o.textContent);
    expect(options).toEqual(['default (local, 1/2 running, 1 agent)', 'gpu (kubernetes, 0/∞ running, no agent)']);
    const values = form.values();
    expect(values.queue).toBe('default');
    expect(values.parameters).toEqual([['lr', '0.1']]);
    form.showError('CPU must be a count', 'resources.cpu');
    const alert = form.node.querySelector('[role=alert]') as HTMLElement;
    expect(alert.hidden).toBe(false);
    expect(alert.textContent).toBe('CPU must be a count');
    expect(form.node.querySelector('[data-field=cpu] input')!.getAttribute('aria-invalid')).toBe('true');
    form.clearError();
    expect(alert.hidden).toBe(true);
  });
});

describe('SubmitDialog', () => {
  const QUEUES = [
    { name: 'default', provider: 'local', shared: false, created_at: 0, updated_at: 0, max_instances: 2, min_instances: 0, counts: {}, agents: ['a'], job_types: [], config: {} }
  ];

  /** A dialog whose API answers `submit` with `outcome`; resolves once the submission settles. */
  async function launch(
    outcome: (request: ISubmitRequest) => Promise<IJob>,
    saveNotebook: () => Promise<void> = async () => undefined
  ): Promise<{ form: SubmitForm; dialog: SubmitDialog; error: HTMLElement; calls: ISubmitRequest[] }> {
    const calls: ISubmitRequest[] = [];
    const api = {
      submit: (request: ISubmitRequest) => {
        calls.push(request);
        return outcome(request);
      }
    } as unknown as LaunchAPI;
    const form = new SubmitForm({ notebook: 'nb/train.ipynb', queues: QUEUES, parameters: [['lr', '0.1']] });
    const dialog = new SubmitDialog({ api, form, saveNotebook });
    dialog.resolve();
    await new Promise(r => setTimeout(r, 0));
    return { form, dialog, error: form.node.querySelector('.jp-LaunchSubmit-error') as HTMLElement, calls };
  }

  it('saves the notebook, then submits it with the form values and keeps the accepted job', async () => {
    const order: string[] = [];
    const { form, calls } = await launch(
      async request => {
        order.push('submit');
        return { id: 'j1', queue: request.queue } as IJob;
      },
      async () => {
        order.push('save');
      }
    );
    expect(calls).toEqual([{ notebook: 'nb/train.ipynb', queue: 'default', parameters: { lr: 0.1 } }]);
    expect(order).toEqual(['save', 'submit']);
    expect(form.getValue()?.id).toBe('j1');
  });

  it("shows the server's refusal in the dialog, on the field it names", async () => {
    const { form, dialog, error } = await launch(async () => {
      throw new LaunchAPIError("unknown queue 'default'", 404, 'Not Found', 'queue');
    });
    expect(error.hidden).toBe(false);
    expect(error.textContent).toBe("unknown queue 'default'");
    expect(form.node.querySelector('[data-field=queue] select')!.getAttribute('aria-invalid')).toBe('true');
    expect(form.getValue()).toBeNull();
    expect(dialog.isDisposed).toBe(false);
  });

  it('checks the form before saving or sending anything', async () => {
    let saves = 0;
    const form = new SubmitForm({ notebook: 'a.ipynb', queues: QUEUES, parameters: [] });
    (form.node.querySelector('[data-field=memory] input') as HTMLInputElement).value = 'lots';
    const api = { submit: jest.fn() } as unknown as LaunchAPI;
    new SubmitDialog({ api, form, saveNotebook: async () => void saves++ }).resolve();
    await new Promise(r => setTimeout(r, 0));
    expect(form.node.querySelector('.jp-LaunchSubmit-error')!.textContent).toBe(
      'Memory must be a size like 8Gi or 512Mi, not "lots".'
    );
    expect(saves).toBe(0);
    expect(api.submit).not.toHaveBeenCalled();
  });

  it('explains a save refused for want of a login', async () => {
    const { error, calls } = await launch(
      async () => ({ id: 'never' }) as IJob,
      async () => {
        throw new ServerConnection.ResponseError({ status: 403 } as Response, 'Forbidden');
      }
    );
    expect(error.textContent).toMatch(/^Not authenticated: /);
    expect(calls).toEqual([]);
  });
});
