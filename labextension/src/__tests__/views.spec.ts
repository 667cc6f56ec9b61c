import { LogView } from '../logview';
import { SubmitForm } from '../dialog';

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
        { name: 'default', provider: 'local', max_instances: 2, min_instances: 0, counts: { running: 1 }, agents: ['a'], job_types: [], config: {} },
        { name: 'gpu', provider: 'kubernetes', max_instances: null, min_instances: 0, counts: {}, agents: [], job_types: ['train'], config: {} }
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
