import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification, showErrorMessage } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { IStatusBar } from '@jupyterlab/statusbar';

import { CredentialPanel } from './credentials';
import { showClusterOptionsDialog } from './dialog';
import { settingsIcon } from '@jupyterlab/ui-components';

import { casaDaskIcon } from './icons';
import { addSidebarButton, DASK_SIDEBAR_ID, findDaskSidebar } from './sidebar';
import { CredentialStatus } from './status';

const NEW_CLUSTER = 'casa:new-dask-cluster';
const SHOW_CREDENTIALS = 'casa:show-credentials';

/** Open Casa's options dialog; a started cluster is selected in dask-labextension's sidebar, where it is managed. */
async function newCluster(app: JupyterFrontEnd): Promise<void> {
  let cluster;
  try {
    cluster = await showClusterOptionsDialog();
  } catch (e) {
    // the options could not be read: nothing was started
    await showErrorMessage('New Dask cluster', e instanceof Error ? e.message : String(e));
    return;
  }
  if (!cluster) {
    return;
  }
  const sidebar = findDaskSidebar(app);
  if (!sidebar) {
    Notification.info(
      `Dask cluster "${cluster.name}" started (${cluster.scheduler_address}). This JupyterLab has no Dask ` +
        'sidebar, where clusters are listed and managed: ask your facility to install dask-labextension.',
      { autoClose: false }
    );
    return;
  }
  const manager = sidebar.clusterManager;
  await manager.refresh();
  manager.setActiveCluster(cluster.id);
  app.shell.activateById(sidebar.id);
  Notification.success(`Dask cluster "${cluster.name}" started`, { autoClose: 5000 });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'casa-hub-ext:plugin',
  description: 'Casa options for dask-labextension clusters (GPUs, backends) and credential expiry',
  autoStart: true,
  optional: [ICommandPalette, ILauncher, IStatusBar, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    statusBar: IStatusBar | null,
    labShell: ILabShell | null
  ) => {
    app.commands.addCommand(NEW_CLUSTER, {
      // in the sidebar's toolbar an icon only: a label does not fit beside "+NEW" in the default sidebar width;
      // the caption is its tooltip and accessible name
      label: args => (args.toolbar ? '' : 'Dask cluster (Casa)'),
      caption: 'New Dask cluster with options: backend, workers or adaptive, cores, memory, GPUs',
      icon: args => (args.toolbar ? settingsIcon : casaDaskIcon),
      execute: async args => {
        if (!args.toolbar && findDaskSidebar(app)) {
          app.shell.activateById(DASK_SIDEBAR_ID); // where the new cluster will be listed
        }
        await newCluster(app);
      }
    });
    palette?.addItem({ command: NEW_CLUSTER, category: 'Dask' });
    launcher?.add({ command: NEW_CLUSTER, category: 'Other', rank: 1 });

    // dask-labextension adds its sidebar while the application starts; add the button once it is there
    if (!addSidebarButton(app, NEW_CLUSTER) && labShell) {
      const retry = () => {
        if (addSidebarButton(app, NEW_CLUSTER)) {
          labShell.layoutModified.disconnect(retry);
        }
      };
      labShell.layoutModified.connect(retry);
      void app.restored.then(retry);
    }

    let credentials: CredentialPanel | null = null;
    app.commands.addCommand(SHOW_CREDENTIALS, {
      label: 'Show Casa credentials',
      caption: 'Every credential mounted in this server: file, variable, audience/scopes, expiry, renewal',
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
