import { FormError } from '../params';
import { checkCron, parsePriority } from '../schedules';
import { rankChildren } from '../sweepview';

describe('schedule and priority fields', () => {
  it('reads a priority as a bounded whole number, or none', () => {
    expect(parsePriority('')).toBeUndefined();
    expect(parsePriority(' 7 ')).toBe(7);
    expect(parsePriority('-1000')).toBe(-1000);
    for (const bad of ['1.5', 'high', '1001', '-2000']) {
      expect(() => parsePriority(bad)).toThrow(FormError);
    }
  });

  it('asks for five cron fields or a macro, and leaves each field to the server', () => {
    expect(checkCron(' 0 6 * * mon-fri ')).toBe('0 6 * * mon-fri');
    expect(checkCron('@daily')).toBe('@daily');
    expect(checkCron('0 25 * * *')).toBe('0 25 * * *');
    expect(() => checkCron('0 6 * *')).toThrow(/five fields/);
  });
});

describe('sweep ranking', () => {
  const child = (id: string, loss?: number): any => ({
    job: { id },
    series: new Map(loss === undefined ? [] : [['loss', [[0, 9], [1, loss]]]])
  });

  it('puts the best last value first by the goal, children without the metric last', () => {
    const children = [child('a', 0.5), child('b'), child('c', 0.1), child('d', 0.3)];
    expect(rankChildren(children, 'loss', 'minimize').map(c => c.job.id)).toEqual(['c', 'd', 'a', 'b']);
    expect(rankChildren(children, 'loss', 'maximize').map(c => c.job.id)).toEqual(['a', 'd', 'c', 'b']);
    expect(rankChildren(children, null, 'minimize').map(c => c.job.id)).toEqual(['a', 'b', 'c', 'd']);
  });
});
