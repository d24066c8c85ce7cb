import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { IStatusBar } from '@jupyterlab/statusbar';

import { CredentialPanel } from './credentials';
import { ClusterPanel } from './panel';
import { CredentialStatus } from './status';

const COMMAND = 'casa:new-dask-cluster';
const SHOW_CREDENTIALS = 'casa:show-credentials';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'casa-hub-ext:plugin',
  description: 'GPU-aware Dask clusters and credential expiry for Casa Hub',
  autoStart: true,
  optional: [ICommandPalette, ILauncher, IStatusBar, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    statusBar: IStatusBar | null,
    restorer: ILayoutRestorer | null
  ) => {
    const tracker = new WidgetTracker<MainAreaWidget<ClusterPanel>>({ namespace: 'casa-dask' });
    app.commands.addCommand(COMMAND, {
      label: 'New Dask cluster',
      caption: 'Start a Dask cluster with your Casa credentials (local, HTCondor or dask-gateway)',
      execute: () => {
        let widget = tracker.currentWidget;
        if (!widget || widget.isDisposed) {
          widget = new MainAreaWidget({ content: new ClusterPanel() });
          widget.id = 'casa-dask-clusters';
          widget.title.label = 'Dask clusters';
          void tracker.add(widget);
          app.shell.add(widget, 'main');
        }
        app.shell.activateById(widget.id);
        return widget;
      }
    });
    palette?.addItem({ command: COMMAND, category: 'Dask' });
    launcher?.add({ command: COMMAND, category: 'Other', rank: 1 });
    if (restorer) {
      void restorer.restore(tracker, { command: COMMAND, name: () => 'casa-dask' });
    }
    let credentials: CredentialPanel | null = null;
    app.commands.addCommand(SHOW_CREDENTIALS, {
      label: 'Show Casa credentials',
      caption: 'Every credential mounted in this server: file, variable, audience/scopes, expiry',
      execute: () => {
        if (!credentials || credentials.isDisposed) {
          credentials = new CredentialPanel();
          app.shell.add(credentials, 'right', { rank: 1000 });
        }
        app.shell.activateById(credentials.id);
        void credentials.refresh();
        return credentials;
      }
    });
    palette?.addItem({ command: SHOW_CREDENTIALS, category: 'Casa' });
    statusBar?.registerStatusItem('casa-hub-ext:credentials', {
      item: new CredentialStatus(() => void app.commands.execute(SHOW_CREDENTIALS)),
      align: 'left',
      rank: 10
    });
  }
};

export default plugin;
