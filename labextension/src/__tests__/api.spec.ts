import { ITransport, LaunchAPI, LaunchAPIError, errorMessage, normalizeLogRead, parseLogFrame } from '../api';

interface ICall {
  path: string;
  init?: RequestInit;
}

function fakeTransport(reply: (call: ICall) => { status?: number; body: any }): { transport: ITransport; calls: ICall[] } {
  const calls: ICall[] = [];
  const transport: ITransport = {
    request: async (path, init) => {
      const call = { path, init };
      calls.push(call);
      const r = reply(call);
      const text = typeof r.body === 'string' ? r.body : JSON.stringify(r.body);
      const status = r.status ?? 200;
      return {
        ok: status >= 200 && status < 300,
        status,
        text: async () => text,
        blob: async () => new Blob([text])
      } as unknown as Response;
    },
    wsUrl: path => `ws://host/base/${path}`,
    httpUrl: path => `http://host/base/${path}`
  };
  return { transport, calls };
}

const QUEUE = {
  name: 'gpu',
  provider: 'local',
  config: { provider: { type: 'local', max_instances: 2 }, job_types: ['train'] },
  created_at: 1,
  updated_at: 1,
  counts: { running: 1, queued: 3 },
  agents: ['agent-1'],
  max_instances: 2,
  min_instances: 0
};

describe('LaunchAPI', () => {
  it('lists queues from {"queues": [...]} with counts, agents and job types', async () => {
    const { transport, calls } = fakeTransport(() => ({ body: { queues: [QUEUE] } }));
    const queues = await new LaunchAPI(transport).listQueues();
    expect(calls[0].path).toBe('launch/api/queues');
    expect(queues).toHaveLength(1);
    expect(queues[0]).toMatchObject({ name: 'gpu', provider: 'local', max_instances: 2, agents: ['agent-1'] });
    expect(queues[0].job_types).toEqual(['train']);
    expect(queues[0].counts.queued).toBe(3);
  });

  it('pages jobs with queue, limit and before, reading next_before', async () => {
    const { transport, calls } = fakeTransport(() => ({ body: { jobs: [{ id: 'a', seq: 9 }], next_before: 9 } }));
    const page = await new LaunchAPI(transport).listJobs({ queue: 'gpu q', limit: 1, before: 12 });
    expect(calls[0].path).toBe('launch/api/jobs?queue=gpu%20q&limit=1&before=12');
    expect(page.next).toBe(9);
    expect(page.jobs[0].id).toBe('a');
  });

  it('reads the whole log page after page for a download, as text', async () => {
    const pages: Record<number, any> = {
      0: { chunks: [{ offset: 0, stream: 'stdout', data: btoa('line 1\n') }], next_offset: 7, encoding: 'base64' },
      7: { chunks: [{ offset: 7, stream: 'stderr', data: btoa('\xc3\xa9t\xc3\xa9\n') }], next_offset: 12, encoding: 'base64' },
      12: { chunks: [], next_offset: 12, encoding: 'base64', done: true }
    };
    const { transport, calls } = fakeTransport(call => ({ body: pages[Number(/offset=(\d+)/.exec(call.path)?.[1] ?? 0)] }));
    expect(await new LaunchAPI(transport).logText('j1')).toBe('line 1\nété\n');
    expect(calls).toHaveLength(3);
  });

  it('deletes and archives a job by its id', async () => {
    const { transport, calls } = fakeTransport(call =>
      call.init?.method === 'DELETE' ? { body: { job_id: 'j 1', released: ['sha256:x'] } } : { body: { id: 'j 1', archived_at: 5 } }
    );
    const api = new LaunchAPI(transport);
    expect(await api.deleteJob('j 1')).toEqual(['sha256:x']);
    expect((await api.archiveJob('j 1')).archived_at).toBe(5);
    await api.archiveJob('j 1', false);
    expect(calls.map(c => [c.init?.method, c.path])).toEqual([
      ['DELETE', 'launch/api/jobs/j%201'],
      ['POST', 'launch/api/jobs/j%201/archive'],
      ['POST', 'launch/api/jobs/j%201/unarchive']
    ]);
  });

  it('says there is no next page when next_before is null', async () => {
    const { transport } = fakeTransport(() => ({ body: { jobs: [{ id: 'a', seq: 9 }], next_before: null } }));
    expect((await new LaunchAPI(transport).listJobs({ limit: 1 })).next).toBeNull();
  });

  it('posts the notebook by its path for the server to package, with the form as options', async () => {
    const { transport, calls } = fakeTransport(() => ({ status: 201, body: { id: 'j1', state: 'queued' } }));
    const job = await new LaunchAPI(transport).submit({
      notebook: 'a/b.ipynb',
      queue: 'gpu',
      resources: { gpu: 1 },
      parameters: { lr: 0.1 }
    });
    expect(job.id).toBe('j1');
    expect(calls.map(c => [c.path, c.init?.method])).toEqual([['launch/api/jobs', 'POST']]);
    expect(JSON.parse(calls[0].init?.body as string)).toEqual({
      queue: 'gpu',
      notebook: 'a/b.ipynb',
      options: { resources: { gpu: 1 }, parameters: { lr: 0.1 } }
    });
  });

  it('cancels and reruns by id', async () => {
    const { transport, calls } = fakeTransport(() => ({ status: 202, body: { id: 'j1', state: 'cancelled' } }));
    const api = new LaunchAPI(transport);
    expect((await api.cancel('j1')).state).toBe('cancelled');
    await api.rerun('j1');
    expect(calls.map(c => [c.path, c.init?.method])).toEqual([
      ['launch/api/jobs/j1/cancel', 'POST'],
      ['launch/api/jobs/j1/rerun', 'POST']
    ]);
  });

  it('turns a server refusal into a readable LaunchAPIError', async () => {
    const { transport } = fakeTransport(() => ({
      status: 404,
      body: { message: "unknown queue 'nope'", reason: 'Not Found' }
    }));
    const err = await new LaunchAPI(transport).submit({ notebook: 'x.ipynb', queue: 'nope' }).catch(e => e);
    expect(err).toBeInstanceOf(LaunchAPIError);
    expect(err.status).toBe(404);
    expect(err.message).toBe("unknown queue 'nope'");
  });

  it('explains an unauthenticated request', async () => {
    const { transport } = fakeTransport(() => ({ status: 403, body: { message: 'Forbidden', reason: null } }));
    const err = await new LaunchAPI(transport).listQueues().catch(e => e);
    expect(err.message).toMatch(/Not authenticated/);
  });

  it('explains a POST refused for its missing XSRF cookie (signed out) as unauthenticated', async () => {
    const { transport } = fakeTransport(() => ({
      status: 403,
      body: { message: "'_xsrf' argument missing from POST", reason: null }
    }));
    const err = await new LaunchAPI(transport).submit({ notebook: 'a.ipynb', queue: 'default' }).catch(e => e);
    expect(err.message).toMatch(/^Not authenticated/);
  });

  it('reports a network failure as an error, not a crash', async () => {
    const transport: ITransport = {
      request: async () => {
        throw new TypeError('Failed to fetch');
      },
      wsUrl: p => p,
      httpUrl: p => p
    };
    const err = await new LaunchAPI(transport).listQueues().catch(e => e);
    expect(err).toBeInstanceOf(LaunchAPIError);
    expect(err.message).toMatch(/Could not reach the Jupyter server: Failed to fetch/);
  });

  it('reads logs as base64 from an offset, and builds the live stream URL', async () => {
    const { transport, calls } = fakeTransport(() => ({
      body: { offset: 4, next_offset: 10, done: false, encoding: 'base64', chunks: [{ offset: 4, stream: 'stdout', data: btoa('héllo'.replace('é', 'e') + '!') }] }
    }));
    const api = new LaunchAPI(transport);
    const read = await api.readLog('j1', 4);
    expect(calls[0].path).toBe('launch/api/jobs/j1/logs?offset=4&encoding=base64');
    expect(new TextDecoder().decode(read.chunks[0].bytes)).toBe('hello!');
    expect(read.next).toBe(10);
    expect(api.logStreamUrl('j1', 7)).toBe('ws://host/base/launch/api/jobs/j1/logs/ws?offset=7');
  });

  it('reads metrics and outputs lists', async () => {
    const { transport } = fakeTransport(call =>
      call.path.includes('metrics')
        ? { body: { job_id: 'j1', metrics: [{ id: 1, step: 0, time: 1, data: { loss: 1 } }] } }
        : { body: { job_id: 'j1', outputs: [{ path: 'executed.ipynb', size: 10, digest: 'sha256:x' }] } }
    );
    const api = new LaunchAPI(transport);
    expect((await api.metrics('j1'))[0].data.loss).toBe(1);
    expect((await api.outputs('j1'))[0].path).toBe('executed.ipynb');
    expect(api.outputUrl('j1', 'out dir/a b.txt')).toBe('http://host/base/launch/api/jobs/j1/outputs/out%20dir/a%20b.txt');
  });
});

describe('errorMessage', () => {
  it('reads tornado/jupyter JSON, nested errors and plain text', () => {
    expect(errorMessage(422, JSON.stringify({ message: 'resources.memory: bad' })).message).toBe('resources.memory: bad');
    expect(errorMessage(400, JSON.stringify({ error: { message: 'x', field: 'cpu' } }))).toMatchObject({ message: 'x', field: 'cpu' });
    expect(errorMessage(500, '<html>oops</html>').message).toBe('<html>oops</html>');
    expect(errorMessage(500, '').message).toMatch(/answered 500/);
  });
});

describe('log decoding', () => {
  it('parses a binary frame: JSON header, newline, raw bytes', () => {
    const header = new TextEncoder().encode('{"offset": 12, "stream": "stderr", "attempt": 1}\n');
    const body = new TextEncoder().encode('line\nnext');
    const frame = new Uint8Array(header.length + body.length);
    frame.set(header);
    frame.set(body, header.length);
    const chunk = parseLogFrame(frame.buffer);
    expect(chunk.offset).toBe(12);
    expect(chunk.stream).toBe('stderr');
    expect(new TextDecoder().decode(chunk.bytes)).toBe('line\nnext');
  });

  it('computes the next offset from bytes when the page omits it', () => {
    const read = normalizeLogRead({ chunks: [{ offset: 0, data: 'é' }] }, 0);
    expect(read.next).toBe(2);
  });
});
