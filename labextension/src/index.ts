/**
 * The jupyter-launch JupyterLab plugin: the "Launch" side panel, job views in the main area, and the submit command
 * in the palette, the notebook toolbar and the file browser's context menu.
 */

import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, Notification, ToolbarButton, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Contents, ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';

import { FINAL_STATES, IJob, ITransport, LaunchAPI } from './api';
import { SubmitDialog, SubmitForm } from './dialog';
import { CompareView } from './compare';
import { HistoryView } from './history';
import { JobEndNotifier } from './notifier';
import { JobView } from './jobview';
import { PANEL_ID, LaunchPanel } from './panel';
import { jobTitle } from './models';
import { INotebookCellLike, parseParametersCell, parametersCellSource } from './params';

export const CommandIDs = {
  submit: 'jupyter-launch:submit',
  submitFile: 'jupyter-launch:submit-file',
  openJob: 'jupyter-launch:open-job',
  openPanel: 'jupyter-launch:open-panel'
};

/** Where "open executed notebook" saves a job's notebook so JupyterLab can open it. */
export const OUTPUTS_DIR = 'launch-outputs';

export const launchIcon = new LabIcon({
  name: 'jupyter-launch:launch',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16"><path class="jp-icon3" fill="#616161" d="M12 2c3.5 1.6 5.5 5 5.5 9.2l2.3 2.6c.3.3.3.8 0 1.1L17 17.7H7L4.2 14.9a.8.8 0 0 1 0-1.1L6.5 11.2C6.5 7 8.5 3.6 12 2zm0 6.2a1.8 1.8 0 1 0 0 3.6 1.8 1.8 0 0 0 0-3.6zM9 19h6l-1.2 3h-3.6z"/></svg>'
});

/** The API's transport over JupyterLab's server connection (base URL, token, XSRF handled there). */
export function serverTransport(settings: ServerConnection.ISettings): ITransport {
  const split = (path: string): [string, string] => {
    const q = path.indexOf('?');
    return q < 0 ? [path, ''] : [path.slice(0, q), path.slice(q)];
  };
  return {
    request: (path, init = {}) => {
      const [p, q] = split(path);
      return ServerConnection.makeRequest(URLExt.join(settings.baseUrl, p) + q, init, settings);
    },
    wsUrl: path => {
      const [p, q] = split(path);
      let url = URLExt.join(settings.wsUrl, p) + q;
      if (settings.token) {
        url += `${q ? '&' : '?'}token=${encodeURIComponent(settings.token)}`;
      }
      return url;
    },
    httpUrl: path => {
      const [p, q] = split(path);
      return URLExt.join(settings.baseUrl, p) + q;
    },
    WebSocket: settings.WebSocket
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-launch:plugin',
  description: 'Queues, live job logs and metrics, and a submit dialog for jupyter-launch.',
  autoStart: true,
  requires: [],
  optional: [ICommandPalette, ILayoutRestorer, INotebookTracker, IDefaultFileBrowser, IDocumentManager],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null,
    fileBrowser: IDefaultFileBrowser | null,
    docManager: IDocumentManager | null
  ) => {
    const api = new LaunchAPI(serverTransport(app.serviceManager.serverSettings));
    const contents = app.serviceManager.contents;
    const views = new Map<string, JobView>();

    /** Each of the user's jobs that ends, in Lab's notification center: "Open", and the executed notebook. */
    const notifyEnded = async (job: IJob): Promise<void> => {
      const actions: Notification.IAction[] = [{ label: 'Open', callback: () => void openJob(job.id, job) }];
      if (job.state === 'succeeded' && job.kind !== 'command') {
        try {
          const executed = (await api.outputs(job.id)).find(o => o.path.endsWith('.ipynb'));
          if (executed) {
            actions.push({
              label: 'Open executed notebook',
              callback: () => void openNotebook(job.id, executed.path).catch(err => showErrorMessage('Launch', err))
            });
          }
        } catch {
          // the outputs could not be read now: the job's view lists them
        }
      }
      const message = `${jobTitle(job)} ${job.state}${job.state === 'succeeded' || !job.message ? '' : `: ${job.message}`}`;
      const options = { autoClose: job.state === 'succeeded' ? (5000 as const) : (false as const), actions };
      if (job.state === 'succeeded') {
        Notification.success(message, options);
      } else if (job.state === 'failed') {
        Notification.error(message, options);
      } else {
        Notification.info(message, options);
      }
    };
    const notifier = new JobEndNotifier({ api, onEnded: job => void notifyEnded(job) });
    notifier.start();

    const openNotebook = async (jobId: string, path: string): Promise<void> => {
      const blob = await api.outputBlob(jobId, path);
      const content = JSON.parse(await blob.text());
      const dir = `${OUTPUTS_DIR}/${jobId}`;
      const target = `${dir}/${path}`;
      let made = '';
      for (const part of target.split('/').slice(0, -1)) {
        made = made ? `${made}/${part}` : part;
        try {
          await contents.get(made, { content: false });
        } catch {
          await contents.save(made, { type: 'directory' });
        }
      }
      await contents.save(target, { type: 'notebook', format: 'json', content });
      if (docManager) {
        docManager.openOrReveal(target);
      } else {
        await app.commands.execute('docmanager:open', { path: target });
      }
    };

    /**
     * One tab per job: opening a job again shows its tab, and a rerun takes over the tab of the job it reruns (if
     * open) instead of adding one, so rerunning keeps one tab for the line of runs.
     */
    const openJob = (id: string, job?: IJob): JobView => {
      if (job && !FINAL_STATES.includes(job.state)) {
        notifier.watch(id); // submitted or rerun here: told when it ends, however soon
      }
      let view = views.get(id);
      if (!view || view.isDisposed) {
        view = new JobView({ api, jobId: id, job, openJob: (jid, j) => void openJob(jid, j), openNotebook });
        view.title.icon = launchIcon;
        views.set(id, view);
        view.disposed.connect(() => views.delete(id));
        const replaced = job?.rerun_of ? views.get(job.rerun_of) : undefined;
        if (replaced && !replaced.isDisposed && replaced.isAttached) {
          app.shell.add(view, 'main', { ref: replaced.id, mode: 'tab-after' });
          replaced.close();
        } else {
          app.shell.add(view, 'main');
        }
      }
      app.shell.activateById(view.id);
      return view;
    };

    /** The notebook panel open for a path, if any. */
    const openPanelFor = (path: string): NotebookPanel | null => {
      let found: NotebookPanel | null = null;
      notebooks?.forEach(p => {
        if (contents.localPath(p.context.path) === path) {
          found = p;
        }
      });
      return found;
    };

    const cellsOf = async (path: string): Promise<INotebookCellLike[]> => {
      const panel = openPanelFor(path);
      if (panel?.content.model) {
        return panel.content.model.sharedModel.cells.map(c => ({
          cell_type: c.cell_type,
          source: c.getSource(),
          metadata: c.getMetadata() as INotebookCellLike['metadata']
        }));
      }
      const model: Contents.IModel = await contents.get(path, { type: 'notebook', content: true });
      return (model.content?.cells ?? []) as INotebookCellLike[];
    };

    /** The notebook file's bytes as saved on the server (what the job runs). */
    const submitNotebook = async (path: string): Promise<void> => {
      let parameters: Array<[string, string]> = [];
      try {
        const source = parametersCellSource(await cellsOf(path));
        parameters = source ? parseParametersCell(source) : [];
      } catch (err) {
        console.warn('jupyter-launch: could not read the parameters cell', err);
      }
      let queueError: string | undefined;
      let queues = [] as Awaited<ReturnType<LaunchAPI['listQueues']>>;
      try {
        queues = await api.listQueues();
      } catch (err) {
        queueError = (err as Error).message;
      }
      const form = new SubmitForm({ notebook: path, queues, parameters, queueError });
      const dialog = new SubmitDialog({
        api,
        form,
        saveNotebook: async () => {
          const panel = openPanelFor(path);
          if (panel && panel.context.model.dirty) {
            await panel.context.save();
          }
        }
      });
      const result = await dialog.launch();
      if (result.button.accept && result.value) {
        openJob(result.value.id, result.value);
        void panel.refresh();
      }
    };

    /** The notebook a submit without a path is about: the current notebook, else the file browser's selection. */
    const currentNotebookPath = (): string | null => {
      const current = app.shell.currentWidget;
      if (notebooks?.currentWidget && (current === notebooks.currentWidget || !current || !fileBrowser)) {
        return contents.localPath(notebooks.currentWidget.context.path);
      }
      if (fileBrowser) {
        for (const item of fileBrowser.selectedItems()) {
          if (item.type === 'notebook') {
            return item.path;
          }
        }
      }
      return notebooks?.currentWidget ? contents.localPath(notebooks.currentWidget.context.path) : null;
    };

    app.commands.addCommand(CommandIDs.submit, {
      label: args => (args.fromToolbar ? 'Launch' : 'Launch Notebook on a Queue…'),
      caption: 'Save the notebook and submit it to a jupyter-launch queue',
      icon: args => (args.fromToolbar || args.isPalette ? undefined : launchIcon),
      execute: async args => {
        const path = (args.path as string) || currentNotebookPath();
        if (!path) {
          await showErrorMessage('Launch', 'Open a notebook or select one in the file browser first.');
          return;
        }
        await submitNotebook(path);
      }
    });
    // The file browser's menu submits the file right-clicked (its selection), never the notebook in the active tab.
    app.commands.addCommand(CommandIDs.submitFile, {
      label: 'Launch Notebook on a Queue…',
      caption: 'Submit this notebook to a jupyter-launch queue',
      icon: launchIcon,
      isVisible: () => Boolean(fileBrowser),
      execute: async () => {
        const item = fileBrowser ? Array.from(fileBrowser.selectedItems()).find(i => i.type === 'notebook') : undefined;
        if (!item) {
          await showErrorMessage('Launch', 'Select a notebook in the file browser first.');
          return;
        }
        await submitNotebook(item.path);
      }
    });
    app.commands.addCommand(CommandIDs.openJob, {
      label: 'Open Launch Job',
      execute: args => {
        openJob(args.id as string);
      }
    });
    app.commands.addCommand(CommandIDs.openPanel, {
      label: 'Show Launch Panel',
      execute: () => app.shell.activateById(PANEL_ID)
    });

    if (palette) {
      palette.addItem({ command: CommandIDs.submit, category: 'Launch' });
      palette.addItem({ command: CommandIDs.openPanel, category: 'Launch' });
    }

    app.contextMenu.addItem({
      command: CommandIDs.submitFile,
      selector: '.jp-DirListing-item[data-file-type="notebook"]',
      rank: 10
    });

    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (nb: NotebookPanel) => {
        const button = new ToolbarButton({
          className: 'jp-LaunchToolbarButton',
          icon: launchIcon,
          label: 'Launch',
          tooltip: 'Save this notebook and submit it to a jupyter-launch queue',
          onClick: () => {
            void app.commands.execute(CommandIDs.submit, { path: contents.localPath(nb.context.path) });
          }
        });
        nb.toolbar.addItem('jupyter-launch', button);
        return button;
      }
    });

    const panel = new LaunchPanel({
      api,
      openJob: (id, job) => void openJob(id, job),
      submit: () => void app.commands.execute(CommandIDs.submit)
    });
    let compareView: CompareView | null = null;
    const history = new HistoryView({
      api,
      openJob: (id, job) => void openJob(id, job),
      compare: jobs => {
        if (!compareView || compareView.isDisposed) {
          compareView = new CompareView(api);
          compareView.title.icon = launchIcon;
          app.shell.add(compareView, 'main');
        }
        app.shell.activateById(compareView.id);
        void compareView.compare(jobs);
      },
      queues: () => panel.queues,
      confirmDelete: async job => {
        const answer = await showDialog({
          title: 'Delete job',
          body: `Delete ${jobTitle(job)} (${job.id}) with its log, metrics and outputs? This cannot be undone; Archive hides a job and keeps it.`,
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
        });
        return answer.button.accept;
      }
    });
    panel.addView({ id: 'history', label: 'History', widget: history, refresh: () => history.refresh() });
    panel.title.icon = launchIcon;
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, PANEL_ID);
  }
};

export default plugin;
