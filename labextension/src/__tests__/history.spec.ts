import { IJob, ITransport, LaunchAPI } from '../api';
import { boundsOf, seriesPath } from '../charts';
import { overlaySeries } from '../compare';
import { HistoryModel, HistoryView, dayStart, historyQuery, NO_FILTERS } from '../history';
import { LaunchPanel } from '../panel';

interface ICall {
  path: string;
  method: string;
}

function job(id: string, state: string, extra: Partial<IJob> = {}): IJob {
  return {
    id,
    seq: 1,
    queue: 'default',
    job_type: null,
    kind: 'notebook',
    name: `job ${id}`,
    state,
    reason: null,
    message: null,
    spec: {},
    artifact: null,
    owner: 'ada',
    attempt: 1,
    retries: 0,
    fence: 1,
    agent_id: null,
    lease_expires: null,
    cancel_requested: false,
    exit_code: null,
    gpus: 0,
    log_size: 0,
    rerun_of: null,
    submitted_at: 1000,
    claimed_at: null,
    started_at: null,
    finished_at: null,
    progress: null,
    claim_token: null,
    archived_at: null,
    done: false,
    duration: null,
    ...extra
  } as IJob;
}

/** A fake server: answers each call with `reply`, or fails it as an unreachable server while `down` is set. */
function fakeServer(reply: (call: ICall) => { status?: number; body: any }) {
  const calls: ICall[] = [];
  const state = { down: false };
  const transport: ITransport = {
    request: async (path, init) => {
      const call = { path, method: init?.method ?? 'GET' };
      calls.push(call);
      if (state.down) {
        throw new TypeError('Failed to fetch');
      }
      const r = reply(call);
      const text = JSON.stringify(r.body);
      const status = r.status ?? 200;
      return { ok: status < 300, status, text: async () => text } as unknown as Response;
    },
    wsUrl: p => `ws://h/${p}`,
    httpUrl: p => `http://h/${p}`
  };
  return { api: new LaunchAPI(transport), calls, state };
}

describe('history filters', () => {
  it('turns the bar into the server query arguments, dates as local days', () => {
    const from = dayStart('2026-12-01')!;
    expect(new Date(from * 1000).getDate()).toBe(1);
    expect(dayStart('2026-12-01', 1)! - from).toBeGreaterThanOrEqual(23 * 3600); // the whole "to" day
    expect(dayStart('not a day')).toBeNull();
    expect(historyQuery({ ...NO_FILTERS, q: ' train ', state: 'failed', from: '2026-12-01', to: '2026-12-01', archived: true }, 'name')).toEqual({
      q: 'train',
      state: 'failed',
      queue: undefined,
      owner: undefined,
      submitted_after: from,
      submitted_before: dayStart('2026-12-02'),
      archived: 'true',
      sort: 'name'
    });
    expect(historyQuery(NO_FILTERS, '-submitted').sort).toBeUndefined();
  });

  it('asks the server for each filter and sort, and pages by offset', async () => {
    const { api, calls } = fakeServer(() => ({ body: { jobs: [job('a', 'failed')], next_before: null, next_offset: 1 } }));
    const model = new HistoryModel(api, 1);
    await model.setFilters({ state: 'failed', q: 'résumé' });
    expect(calls.pop()!.path).toBe('launch/api/jobs?q=r%C3%A9sum%C3%A9&state=failed&limit=1');
    await model.sortBy('name');
    expect(calls.pop()!.path).toContain('sort=name');
    await model.sortBy('name');
    expect(model.sort).toBe('-name');
    await model.sortBy('finished');
    expect(model.sort).toBe('-finished'); // times start newest first
    expect(model.hasMore).toBe(true);
    await model.loadMore();
    expect(calls.pop()!.path).toContain('limit=2'); // a poll keeps every loaded row current
  });
});

describe('HistoryView', () => {
  it('shows actions by state: cancel while it runs; rerun, archive and delete once ended', async () => {
    const jobs = [job('run1', 'running'), job('done1', 'succeeded', { finished_at: 1100 })];
    const { api, calls } = fakeServer(call =>
      call.method === 'DELETE' ? { body: { job_id: 'done1', released: [] } } : { body: { jobs, next_before: null, next_offset: null } }
    );
    const asked: string[] = [];
    const view = new HistoryView({
      api,
      openJob: () => undefined,
      confirmDelete: async j => {
        asked.push(j.id);
        return true;
      }
    });
    await view.refresh();
    const actions = (id: string) =>
      Array.from(view.node.querySelectorAll(`[data-job-id="${id}"] .jp-LaunchHistory-action`)).map(b => b.textContent);
    expect(actions('run1')).toEqual(['Cancel']);
    expect(actions('done1')).toEqual(['Rerun', 'Archive', 'Delete']);
    (view.node.querySelector('[data-job-id="done1"] .jp-mod-delete') as HTMLButtonElement).click();
    await new Promise(r => setTimeout(r, 0));
    await new Promise(r => setTimeout(r, 0));
    expect(asked).toEqual(['done1']);
    expect(calls.some(c => c.method === 'DELETE' && c.path === 'launch/api/jobs/done1')).toBe(true);
    view.dispose();
  });
});

describe('LaunchPanel', () => {
  it('says it is disconnected while the server does not answer, keeps its rows, and recovers quietly', async () => {
    const { api, state } = fakeServer(() => ({ body: { queues: [{ name: 'default', provider: 'local', counts: {}, agents: [] }] } }));
    const panel = new LaunchPanel({ api, openJob: () => undefined });
    await panel.refresh();
    expect(panel.node.querySelectorAll('.jp-LaunchQueue')).toHaveLength(1);
    state.down = true;
    await panel.refresh();
    expect(panel.disconnected).toBe(true);
    const banner = panel.node.querySelector('.jp-LaunchPanel-connection') as HTMLElement;
    expect(banner.hidden).toBe(false);
    expect(banner.textContent).toContain('retrying');
    expect(panel.node.querySelectorAll('.jp-LaunchQueue')).toHaveLength(1);
    expect(panel.node.querySelector('.jp-LaunchPanel-status.jp-mod-error')).toBeNull();
    state.down = false;
    await panel.refresh();
    expect(panel.disconnected).toBe(false);
    expect(banner.hidden).toBe(true);
    panel.dispose();
  });
});

describe('overlaySeries', () => {
  it('gives each metric key a line per job that recorded it, on one scale', () => {
    const a = job('a', 'succeeded');
    const b = job('b', 'succeeded');
    const lines = overlaySeries([
      { job: a, records: [{ id: 1, step: 0, time: 1, data: { loss: 1.0, acc: 0.5 } }, { id: 2, step: 1, time: 2, data: { loss: 0.5 } }] },
      { job: b, records: [{ id: 1, step: 0, time: 1, data: { loss: 4.0 } }] }
    ]);
    expect(Array.from(lines.keys())).toEqual(['loss', 'acc']);
    expect(lines.get('loss')!.map(l => [l.job.id, l.index, l.points])).toEqual([
      ['a', 0, [[0, 1.0], [1, 0.5]]],
      ['b', 1, [[0, 4.0]]]
    ]);
    const bounds = boundsOf(lines.get('loss')!.map(l => l.points));
    expect(bounds).toEqual({ min: 0.5, max: 4.0, xmin: 0, xmax: 1 });
    // On the shared scale a's last point (0.5) sits at the bottom, b's (4.0) at the top.
    const ya = Number(seriesPath([[1, 0.5]], bounds).path.split(',')[1]);
    const yb = Number(seriesPath([[0, 4.0]], bounds).path.split(',')[1]);
    expect(ya).toBeGreaterThan(yb);
  });
});
