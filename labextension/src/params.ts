/**
 * The submit form's plain-data side: reading a notebook's `parameters` cell (papermill's convention), and turning
 * the form's text fields (parameters, env, secrets, resources) into a submit request, with one message per mistake.
 */

import { IResources, ISubmitRequest } from './api';

export interface INotebookCellLike {
  cell_type: string;
  source: string | string[];
  metadata?: { tags?: string[] } & Record<string, any>;
}

/** The source of the first cell tagged `parameters`, or null. */
export function parametersCellSource(cells: ReadonlyArray<INotebookCellLike>): string | null {
  for (const cell of cells) {
    const tags = cell.metadata?.tags;
    if (cell.cell_type === 'code' && Array.isArray(tags) && tags.indexOf('parameters') >= 0) {
      return Array.isArray(cell.source) ? cell.source.join('') : cell.source;
    }
  }
  return null;
}

/**
 * `name = value` assignments at the top level of a parameters cell, values kept as the Python text the user wrote
 * (`0.01`, `"adam"`, `[1, 2]`). Comments, annotations (`lr: float = 0.1`) and continuation lines are handled; other
 * statements are skipped.
 */
export function parseParametersCell(source: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const lines = source.split('\n');
  const assign = /^([A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*[^=]+?)?\s*=(?!=)\s*(.*)$/;
  for (let i = 0; i < lines.length; i++) {
    const m = assign.exec(lines[i]);
    if (!m) {
      continue;
    }
    let value = stripComment(m[2]);
    // A value that opens brackets continues until they close.
    while (depth(value) > 0 && i + 1 < lines.length) {
      i++;
      value += '\n' + stripComment(lines[i]);
    }
    out.push([m[1], value.trim()]);
  }
  return out;
}

function stripComment(text: string): string {
  let quote: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === '\\') {
        i++;
      } else if (c === quote) {
        quote = null;
      }
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === '#') {
      return text.slice(0, i).trimEnd();
    }
  }
  return text.trimEnd();
}

function depth(text: string): number {
  let d = 0;
  let quote: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === '\\') {
        i++;
      } else if (c === quote) {
        quote = null;
      }
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if ('([{'.indexOf(c) >= 0) {
      d++;
    } else if (')]}'.indexOf(c) >= 0) {
      d--;
    }
  }
  return d;
}

/**
 * A parameter value as typed in the form, as JSON: numbers, booleans (`True`/`true`), `None`/`null`, quoted strings
 * and JSON lists/objects become those values; anything else is sent as the string it is.
 */
export function parseParameterValue(text: string): unknown {
  const t = text.trim();
  if (t === '') {
    return '';
  }
  if (t === 'True' || t === 'true') {
    return true;
  }
  if (t === 'False' || t === 'false') {
    return false;
  }
  if (t === 'None' || t === 'null') {
    return null;
  }
  if (/^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/.test(t)) {
    return Number(t);
  }
  if (t.length >= 2 && (t[0] === "'" || t[0] === '"') && t[t.length - 1] === t[0]) {
    const inner = t.slice(1, -1);
    if (t[0] === '"') {
      try {
        return JSON.parse(t);
      } catch {
        return inner;
      }
    }
    return inner.replace(/\\'/g, "'").replace(/\\\\/g, '\\');
  }
  if (t[0] === '[' || t[0] === '{') {
    try {
      return JSON.parse(t);
    } catch {
      // Python literals that are not JSON (tuples, single quotes) go as text; the runner's translator reads them.
      try {
        return JSON.parse(t.replace(/'/g, '"').replace(/\bTrue\b/g, 'true').replace(/\bFalse\b/g, 'false').replace(/\bNone\b/g, 'null'));
      } catch {
        return t;
      }
    }
  }
  return t;
}

export interface IFormValues {
  notebook: string;
  queue: string;
  jobType: string;
  cpu: string;
  gpu: string;
  memory: string;
  /** Rows of [name, value text]. */
  parameters: Array<[string, string]>;
  /** `KEY=VALUE`, one a line. */
  env: string;
  /** Names, separated by commas, spaces or newlines. */
  secrets: string;
}

export class FormError extends Error {
  constructor(
    message: string,
    readonly field: string
  ) {
    super(message);
  }
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const CPU = /^\s*(\d+(\.\d+)?|\.\d+)\s*m?\s*$/;
const MEMORY = /^\s*(\d+(\.\d+)?|\.\d+)\s*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?\s*$/;

/** The submit request for the form's values; throws FormError naming the field for the first mistake. */
export function buildSubmitRequest(v: IFormValues): ISubmitRequest {
  if (!v.queue) {
    throw new FormError('Choose a queue.', 'queue');
  }
  const resources: IResources = {};
  if (v.cpu.trim()) {
    if (!CPU.test(v.cpu)) {
      throw new FormError(`CPU must be a count like 2, 0.5 or 500m, not "${v.cpu}".`, 'cpu');
    }
    resources.cpu = /m\s*$/.test(v.cpu) ? v.cpu.trim() : Number(v.cpu);
  }
  if (v.gpu.trim()) {
    if (!/^\s*\d+\s*$/.test(v.gpu)) {
      throw new FormError(`GPUs must be a whole number, not "${v.gpu}".`, 'gpu');
    }
    resources.gpu = parseInt(v.gpu, 10);
  }
  if (v.memory.trim()) {
    if (!MEMORY.test(v.memory)) {
      throw new FormError(`Memory must be a size like 8Gi or 512Mi, not "${v.memory}".`, 'memory');
    }
    resources.memory = v.memory.trim();
  }
  const parameters: Record<string, unknown> = {};
  for (const [name, value] of v.parameters) {
    if (!name.trim()) {
      continue;
    }
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name.trim())) {
      throw new FormError(`"${name}" is not a valid parameter name.`, 'parameters');
    }
    parameters[name.trim()] = parseParameterValue(value);
  }
  const env: Record<string, string> = {};
  v.env.split('\n').forEach((line, i) => {
    if (!line.trim() || line.trim().startsWith('#')) {
      return;
    }
    const eq = line.indexOf('=');
    const key = (eq < 0 ? line : line.slice(0, eq)).trim();
    if (eq < 0 || !ENV_NAME.test(key)) {
      throw new FormError(`Environment line ${i + 1}: write NAME=value (got "${line.trim()}").`, 'env');
    }
    env[key] = line.slice(eq + 1);
  });
  const secrets = v.secrets
    .split(/[\s,]+/)
    .map(s => s.trim())
    .filter(Boolean);
  for (const s of secrets) {
    if (!ENV_NAME.test(s)) {
      throw new FormError(`"${s}" is not a valid secret name (letters, digits and _).`, 'secrets');
    }
  }
  const request: ISubmitRequest = { notebook: v.notebook, queue: v.queue };
  if (v.jobType.trim()) {
    request.job_type = v.jobType.trim();
  }
  if (Object.keys(resources).length) {
    request.resources = resources;
  }
  if (Object.keys(parameters).length) {
    request.parameters = parameters;
  }
  if (Object.keys(env).length) {
    request.env = env;
  }
  if (secrets.length) {
    request.secrets = secrets;
  }
  return request;
}
