import { JupyterFrontEnd } from '@jupyterlab/application';
import { CommandToolbarButton, Toolbar } from '@jupyterlab/ui-components';
import { PanelLayout, Widget } from '@lumino/widgets';

/** dask-labextension's sidebar (left area) and the command of its "+NEW" button. */
export const DASK_SIDEBAR_ID = 'dask-dashboard-launcher';
const DASK_LAUNCH_COMMAND = 'dask:launch-cluster';

/**
 * The public surface of dask-labextension's ``DaskClusterManager`` that Casa uses. dask-labextension exports no
 * token, so its widget is found in the shell and checked for these members before use.
 */
export interface IDaskClusterManager extends Widget {
  refresh(): Promise<void>;
  setActiveCluster(id: string): void;
}

interface IDaskSidebar extends Widget {
  clusterManager: IDaskClusterManager;
}

function isDaskSidebar(widget: Widget): widget is IDaskSidebar {
  const manager = (widget as Widget & { clusterManager?: Partial<IDaskClusterManager> }).clusterManager;
  return (
    widget.id === DASK_SIDEBAR_ID &&
    !!manager &&
    typeof manager.refresh === 'function' &&
    typeof manager.setActiveCluster === 'function'
  );
}

/** dask-labextension's sidebar, when it is installed and has been added to the shell. */
export function findDaskSidebar(app: JupyterFrontEnd): IDaskSidebar | null {
  for (const widget of app.shell.widgets('left')) {
    if (isDaskSidebar(widget)) {
      return widget;
    }
  }
  return null;
}

/**
 * Put a button for ``command`` right after the sidebar's own "+NEW", in the cluster manager's toolbar (the first
 * widget of its layout). Returns false when the sidebar is not there (yet); true once the button is in place.
 */
export function addSidebarButton(app: JupyterFrontEnd, command: string): boolean {
  const sidebar = findDaskSidebar(app);
  const layout = sidebar?.clusterManager.layout;
  const toolbar = layout instanceof PanelLayout ? layout.widgets[0] : undefined;
  if (!(toolbar instanceof Toolbar)) {
    return false;
  }
  if (Array.from(toolbar.names()).includes(command)) {
    return true;
  }
  const button = new CommandToolbarButton({ commands: app.commands, id: command, args: { toolbar: true } });
  button.addClass('casa-sidebar-new');
  if (!toolbar.insertAfter(DASK_LAUNCH_COMMAND, command, button)) {
    toolbar.addItem(command, button);
  }
  return true;
}
