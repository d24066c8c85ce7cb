import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { IStatusBar } from '@jupyterlab/statusbar';

import { ClusterPanel } from './panel';
import { CredentialStatus } from './status';

const COMMAND = 'casa:new-dask-cluster';

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
    statusBar?.registerStatusItem('casa-hub-ext:credentials', {
      item: new CredentialStatus(),
      align: 'left',
      rank: 10
    });
  }
};

export default plugin;
