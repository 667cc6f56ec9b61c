import { IJob, ITransport, LaunchAPI } from '../api';
import { applySgr, DEFAULT_STATE, parseAnsi, stripAnsi } from '../ansi';
import { LogBuffer } from '../logbuffer';
import { JobListModel, LogFollower, MetricsModel, formatAgo, formatDuration, jobDuration } from '../models';

function job(seq: number, state = 'queued'): IJob {
  return { id: `job${seq}`, seq, state, queue: 'q', submitted_at: 1000 + seq } as unknown as IJob;
}

function apiServing(pages: (url: string) => any): { api: LaunchAPI; urls: string[] } {
  const urls: string[] = [];
  const transport: ITransport = {
    request: async path => {
      urls.push(path);
      const body = JSON.stringify(pages(path));
      return { ok: true, status: 200, text: async () => body } as unknown as Response;
    },
    wsUrl: p => `ws://h/${p}`,
    httpUrl: p => `http://h/${p}`
  };
  return { api: new LaunchAPI(transport), urls };
}

describe('ansi', () => {
  it('splits a line into coloured spans', () => {
    const { spans, state } = parseAnsi('plain \x1b[1;31mred bold\x1b[0m back');
    expect(spans.map(s => s.text)).toEqual(['plain ', 'red bold', ' back']);
    expect(spans[1]).toMatchObject({ fg: 1, bold: true });
    expect(spans[2]).toMatchObject({ fg: null, bold: false });
    expect(state).toEqual(DEFAULT_STATE);
  });

  it('reads 256-colour and truecolour codes', () => {
    expect(applySgr(DEFAULT_STATE, '38;5;9').fg).toBe(9);
    expect(applySgr(DEFAULT_STATE, '38;5;196').fg).toBe('rgb(255,0,0)');
    expect(applySgr(DEFAULT_STATE, '48;2;1;2;3').bg).toBe('rgb(1,2,3)');
    expect(applySgr(DEFAULT_STATE, '92').fg).toBe(10);
  });

  it('drops non-colour escapes and resolves carriage returns', () => {
    expect(stripAnsi('\x1b[2K\x1b[1Gdone \x1b]0;title\x07ok')).toBe('done ok');
    expect(stripAnsi(' 10%\r 50%\r100%')).toBe('100%');
  });
});

describe('LogBuffer', () => {
  it('keeps a growing last line across appends', () => {
    const b = new LogBuffer();
    b.append('one\ntw');
    expect(b.length).toBe(2);
    expect(b.line(1)).toBe('tw');
    b.append('o\nthree\n');
    expect(b.length).toBe(3);
    expect([b.line(0), b.line(1), b.line(2)]).toEqual(['one', 'two', 'three']);
  });

  it('carries colour state into the next line', () => {
    const b = new LogBuffer();
    b.append('\x1b[32mgreen starts\nstill green\n\x1b[0mplain\n');
    expect(b.stateAt(1).fg).toBe(2);
    expect(parseAnsi(b.line(1), b.stateAt(1)).spans[0].fg).toBe(2);
    expect(b.stateAt(2).fg).toBe(2);
    expect(b.stateAt(3)).toEqual(DEFAULT_STATE);
  });

  it('searches case-insensitively, ignoring escapes', () => {
    const b = new LogBuffer();
    b.append('alpha\n\x1b[31mERR\x1b[0mor here\nbeta\nerror again\n');
    expect(b.search('error')).toEqual([1, 3]);
    expect(b.search('error', 2)).toEqual([3]);
    expect(b.search('')).toEqual([]);
  });

  it('drops the oldest lines past maxLines and says how many', () => {
    const b = new LogBuffer(100);
    for (let i = 0; i < 150; i++) {
      b.append(`line ${i}\n`);
    }
    expect(b.length).toBeLessThanOrEqual(100);
    expect(b.trimmed + b.length).toBe(150);
    expect(b.line(b.length - 1)).toBe('line 149');
  });

  it('takes 100,000 lines quickly', () => {
    const b = new LogBuffer();
    const t0 = Date.now();
    for (let k = 0; k < 100; k++) {
      let chunk = '';
      for (let i = 0; i < 1000; i++) {
        chunk += `step ${k * 1000 + i} loss=0.${i}\n`;
      }
      b.append(chunk);
    }
    expect(b.length).toBe(100000);
    expect(b.search('step 99999 ')).toEqual([99999]);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('normalises CRLF', () => {
    const b = new LogBuffer();
    b.append('a\r\nb\r\n');
    expect([b.length, b.line(0), b.line(1)]).toEqual([2, 'a', 'b']);
  });
});

describe('JobListModel', () => {
  it('loads newest first, pages with before, and merges refreshes without losing older pages', async () => {
    let states: Record<number, string> = {};
    const all = [6, 5, 4, 3, 2, 1];
    const { api, urls } = apiServing(url => {
      const before = /before=(\d+)/.exec(url);
      const limit = Number(/limit=(\d+)/.exec(url)![1]);
      const pool = all.filter(s => !before || s < Number(before[1]));
      const jobs = pool.slice(0, limit).map(s => job(s, states[s] || 'queued'));
      return { jobs, next_before: jobs.length === limit ? jobs[jobs.length - 1].seq : null };
    });
    const model = new JobListModel(api, 'q', 2);
    let emitted = 0;
    model.changed.connect(() => emitted++);
    await model.refresh();
    expect(model.jobs.map(j => j.seq)).toEqual([6, 5]);
    expect(model.hasMore).toBe(true);
    await model.loadMore();
    expect(model.jobs.map(j => j.seq)).toEqual([6, 5, 4, 3]);
    expect(urls[1]).toContain('before=5');
    // A new job and a state change arrive: both show, older pages stay, and the cursor still points past them.
    all.unshift(7);
    states = { 6: 'running' };
    await model.refresh();
    expect(model.jobs.map(j => j.seq)).toEqual([7, 6, 5, 4, 3]);
    expect(model.jobs[1].state).toBe('running');
    await model.loadMore();
    expect(model.jobs.map(j => j.seq)).toEqual([7, 6, 5, 4, 3, 2, 1]);
    // The server cannot know a full page was the last one; the next read is empty and ends the list.
    await model.loadMore();
    expect(model.jobs).toHaveLength(7);
    expect(model.hasMore).toBe(false);
    const before = emitted;
    await model.refresh();
    expect(emitted).toBe(before); // nothing changed, no redraw
  });

  it('keeps the error message when the server refuses', async () => {
    const transport: ITransport = {
      request: async () =>
        ({ ok: false, status: 404, text: async () => JSON.stringify({ message: "unknown queue 'q'" }) }) as unknown as Response,
      wsUrl: p => p,
      httpUrl: p => p
    };
    const model = new JobListModel(new LaunchAPI(transport), 'q');
    await model.refresh();
    expect(model.error).toBe("unknown queue 'q'");
  });
});

describe('MetricsModel', () => {
  it('builds a series per numeric key and takes each record once', () => {
    const m = new MetricsModel();
    m.add([
      { id: 1, step: 0, time: 1, data: { loss: 1, acc: 0.5, note: 'x' } },
      { id: 2, step: 1, time: 2, data: { loss: 0.5 } }
    ]);
    m.add([{ id: 2, step: 1, time: 2, data: { loss: 0.5 } }]);
    const loss = m.series.find(s => s.key === 'loss')!;
    expect(loss.points).toEqual([
      [0, 1],
      [1, 0.5]
    ]);
    expect(m.series.map(s => s.key).sort()).toEqual(['acc', 'loss']);
    expect(m.lastId).toBe(2);
  });
});

class FakeSocket {
  static last: FakeSocket;
  static urls: string[] = [];
  binaryType = 'blob';
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: (() => void) | null = null;
  constructor(readonly url: string) {
    FakeSocket.last = this;
    FakeSocket.urls.push(url);
  }
  close(): void {
    /* the follower closes us at the end */
  }
}

function frame(offset: number, text: string | Uint8Array): ArrayBuffer {
  const header = new TextEncoder().encode(JSON.stringify({ offset, stream: 'stdout', attempt: 1 }) + '\n');
  const body = typeof text === 'string' ? new TextEncoder().encode(text) : text;
  const out = new Uint8Array(header.length + body.length);
  out.set(header);
  out.set(body, header.length);
  return out.buffer;
}

describe('LogFollower', () => {
  it('emits each byte once across a reconnect, decoding split UTF-8, and ends on the end event', async () => {
    const { api } = apiServing(() => ({}));
    const follower = new LogFollower({ api, jobId: 'j1', WebSocket: FakeSocket as unknown as typeof WebSocket });
    const got: string[] = [];
    const states: string[] = [];
    let ended = false;
    follower.received.connect((_, t) => got.push(t));
    follower.stateChanged.connect((_, e) => states.push(e.state));
    follower.ended.connect(() => (ended = true));
    follower.start();
    const first = FakeSocket.last;
    expect(first.url).toBe('ws://h/launch/api/jobs/j1/logs/ws?offset=0');
    expect(first.binaryType).toBe('arraybuffer');
    first.onopen!();
    const euro = new TextEncoder().encode('€\n'); // 3 bytes + newline, split across frames
    first.onmessage!({ data: frame(0, 'hello\n') });
    first.onmessage!({ data: frame(6, euro.subarray(0, 2)) });
    first.onmessage!({ data: JSON.stringify({ event: 'state', state: 'running', reason: 'running' }) });
    // The connection drops; the follower reconnects from offset 8 and the server repeats from 6.
    first.onclose!();
    await new Promise(r => setTimeout(r, 150));
    const second = FakeSocket.last;
    expect(second).not.toBe(first);
    expect(second.url).toContain('offset=8');
    second.onopen!();
    second.onmessage!({ data: frame(6, euro) });
    second.onmessage!({ data: frame(10, 'bye\n') });
    second.onmessage!({ data: JSON.stringify({ event: 'end', state: 'succeeded', reason: 'completed', offset: 14 }) });
    expect(got.join('')).toBe('hello\n€\nbye\n');
    expect(states).toEqual(['running', 'succeeded']);
    expect(ended).toBe(true);
    expect(follower.offset).toBe(14);
  });

  it('falls back to HTTP pages when no WebSocket is available', async () => {
    let call = 0;
    const { api } = apiServing(() => {
      call++;
      return call === 1
        ? { offset: 0, next_offset: 3, done: false, encoding: 'base64', chunks: [{ offset: 0, stream: 'stdout', data: btoa('ab\n') }] }
        : { offset: 3, next_offset: 3, done: true, encoding: 'base64', chunks: [] };
    });
    const follower = new LogFollower({ api, jobId: 'j1', WebSocket: undefined, pollInterval: 5 });
    (follower as any)._WebSocket = undefined;
    const got: string[] = [];
    const done = new Promise<void>(resolve => follower.ended.connect(() => resolve()));
    follower.received.connect((_, t) => got.push(t));
    follower.start();
    await done;
    expect(got.join('')).toBe('ab\n');
  });
});

describe('formatting', () => {
  it('formats durations and ages', () => {
    expect(formatDuration(0.25)).toBe('250 ms');
    expect(formatDuration(5)).toBe('5.0 s');
    expect(formatDuration(125)).toBe('2 m 5 s');
    expect(formatDuration(7260)).toBe('2 h 1 m');
    expect(formatDuration(null)).toBe('—');
    expect(formatAgo(100, 102)).toBe('just now');
    expect(formatAgo(100, 160)).toBe('1 m ago');
    expect(jobDuration({ started_at: 10, finished_at: 25 } as IJob)).toBe(15);
    expect(jobDuration({ started_at: 10, finished_at: null } as IJob, 40)).toBe(30);
  });
});
