import { FormError, IFormValues, buildSubmitRequest, parametersCellSource, parseParameterValue, parseParametersCell } from '../params';

const base: IFormValues = {
  notebook: 'nb/train.ipynb',
  queue: 'gpu',
  jobType: '',
  cpu: '',
  gpu: '',
  memory: '',
  parameters: [],
  env: '',
  secrets: ''
};

describe('parameters cell', () => {
  it('finds the cell tagged parameters', () => {
    const cells = [
      { cell_type: 'markdown', source: 'x = 1', metadata: { tags: ['parameters'] } },
      { cell_type: 'code', source: 'import os', metadata: {} },
      { cell_type: 'code', source: ['lr = 0.1\n', 'epochs = 3'], metadata: { tags: ['parameters'] } }
    ];
    expect(parametersCellSource(cells)).toBe('lr = 0.1\nepochs = 3');
    expect(parametersCellSource([])).toBeNull();
  });

  it('reads assignments, annotations, comments and multi-line values', () => {
    const src = [
      '# training knobs',
      'lr = 0.01  # learning rate',
      'name: str = "run #1"',
      "optimizer = 'adam'",
      'layers = [',
      '  64, 32,',
      ']',
      'if x == 1: pass',
      'flag = True'
    ].join('\n');
    expect(parseParametersCell(src)).toEqual([
      ['lr', '0.01'],
      ['name', '"run #1"'],
      ['optimizer', "'adam'"],
      ['layers', '[\n  64, 32,\n]'],
      ['flag', 'True']
    ]);
  });

  it('turns Python-ish values into JSON values', () => {
    expect(parseParameterValue('0.01')).toBe(0.01);
    expect(parseParameterValue('-3')).toBe(-3);
    expect(parseParameterValue('True')).toBe(true);
    expect(parseParameterValue('None')).toBeNull();
    expect(parseParameterValue("'adam'")).toBe('adam');
    expect(parseParameterValue('"run #1"')).toBe('run #1');
    expect(parseParameterValue('[1, 2]')).toEqual([1, 2]);
    expect(parseParameterValue("{'a': True}")).toEqual({ a: true });
    expect(parseParameterValue('some text')).toBe('some text');
  });
});

describe('buildSubmitRequest', () => {
  it('builds the full request', () => {
    const req = buildSubmitRequest({
      ...base,
      jobType: 'train',
      cpu: '500m',
      gpu: '1',
      memory: '8Gi',
      parameters: [
        ['lr', '0.1'],
        ['', 'ignored']
      ],
      env: 'A=1\n# comment\nB=x=y\n',
      secrets: 'WANDB_API_KEY, HF_TOKEN'
    });
    expect(req).toEqual({
      notebook: 'nb/train.ipynb',
      queue: 'gpu',
      job_type: 'train',
      resources: { cpu: '500m', gpu: 1, memory: '8Gi' },
      parameters: { lr: 0.1 },
      env: { A: '1', B: 'x=y' },
      secrets: ['WANDB_API_KEY', 'HF_TOKEN']
    });
  });

  it('sends only what was filled in', () => {
    expect(buildSubmitRequest({ ...base, cpu: '2' })).toEqual({ notebook: 'nb/train.ipynb', queue: 'gpu', resources: { cpu: 2 } });
  });

  it.each([
    [{ queue: '' }, 'queue', /Choose a queue/],
    [{ cpu: 'lots' }, 'cpu', /CPU must be/],
    [{ gpu: '1.5' }, 'gpu', /whole number/],
    [{ memory: '8 gigs' }, 'memory', /8Gi/],
    [{ env: 'NOEQUALS' }, 'env', /line 1/],
    [{ secrets: 'bad-name' }, 'secrets', /not a valid secret/],
    [{ parameters: [['1x', '2']] as Array<[string, string]> }, 'parameters', /not a valid parameter/]
  ])('refuses %j naming the field', (patch, field, message) => {
    let err: unknown;
    try {
      buildSubmitRequest({ ...base, ...patch });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FormError);
    expect((err as FormError).field).toBe(field);
    expect((err as FormError).message).toMatch(message);
  });
});
