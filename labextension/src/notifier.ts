/**
 * Tells the user when one of their jobs ends, wherever they are in Lab: it polls the unfinished jobs the server shows
 * this user (one `GET /jobs` a few seconds apart: their own, or every job for an admin, as on a personal server), and
 * a job that leaves that list is read once; if it ended, `onEnded` gets it (the plugin posts it to Lab's notification
 * center with "Open" and "Open executed notebook"). Jobs submitted from Lab are watched from the submit on, so one
 * that ends before the next poll is told too.
 */

import { FINAL_STATES, IJob, LaunchAPI } from './api';

const UNFINISHED = 'queued,claimed,starting,running';
/** More unfinished jobs than this are not all watched: the newest are. */
const WATCH_LIMIT = 500;

export interface IJobEndNotifierOptions {
  api: LaunchAPI;
  onEnded: (job: IJob) => void;
  /** ms between polls. */
  interval?: number;
}

export class JobEndNotifier {
  constructor(options: IJobEndNotifierOptions) {
    this._api = options.api;
    this._onEnded = options.onEnded;
    this._interval = options.interval ?? 3000;
  }

  /** Jobs seen unfinished at the last poll. */
  get watched(): ReadonlySet<string> {
    return this._watched;
  }

  /** Watch a job from now on (one just submitted or rerun here). */
  watch(id: string): void {
    this._watched.add(id);
  }

  /** One poll: read the unfinished jobs, and what became of those that left the list. */
  async poll(): Promise<void> {
    const page = await this._api.listJobs({ state: UNFINISHED, limit: WATCH_LIMIT });
    const now = new Set(page.jobs.map(j => j.id));
    const left = Array.from(this._watched).filter(id => !now.has(id));
    this._watched = now;
    for (const id of left) {
      let job: IJob;
      try {
        job = await this._api.getJob(id);
      } catch {
        continue; // deleted meanwhile: nothing to tell
      }
      if (FINAL_STATES.includes(job.state)) {
        this._onEnded(job);
      }
    }
  }

  start(): void {
    if (this._timer !== null) {
      return;
    }
    const tick = async () => {
      try {
        await this.poll();
      } catch {
        // The server does not answer: the panel says so; the next poll tries again.
      }
      this._timer = setTimeout(() => void tick(), this._interval);
    };
    this._timer = setTimeout(() => void tick(), 0);
  }

  stop(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _api: LaunchAPI;
  private _onEnded: (job: IJob) => void;
  private _interval: number;
  private _watched = new Set<string>();
  private _timer: ReturnType<typeof setTimeout> | null = null;
}
