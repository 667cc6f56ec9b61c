import { ITransport, LaunchAPI } from '../api';
import { JobEndNotifier } from '../notifier';

describe('JobEndNotifier', () => {
  it('tells each watched job that ends once, including one submitted here that ended between polls', async () => {
    const states: Record<string, string> = { a: 'running', b: 'queued' };
    const transport: ITransport = {
      request: async path => {
        const id = /jobs\/(\w+)$/.exec(path)?.[1];
        const body = id
          ? { id, state: states[id] }
          : { jobs: Object.keys(states).filter(k => !['succeeded', 'failed', 'cancelled'].includes(states[k])).map(k => ({ id: k, state: states[k] })), next_before: null, next_offset: null };
        return { ok: true, status: 200, text: async () => JSON.stringify(body) } as unknown as Response;
      },
      wsUrl: p => p,
      httpUrl: p => p
    };
    const ended: string[] = [];
    const notifier = new JobEndNotifier({ api: new LaunchAPI(transport), onEnded: j => ended.push(`${j.id} ${j.state}`) });
    await notifier.poll();
    expect(Array.from(notifier.watched).sort()).toEqual(['a', 'b']);
    states.a = 'failed';
    states.fast = 'succeeded'; // submitted here and done before the next poll
    notifier.watch('fast');
    await notifier.poll();
    expect(ended.sort()).toEqual(['a failed', 'fast succeeded']);
    await notifier.poll();
    expect(ended).toHaveLength(2);
  });
});
