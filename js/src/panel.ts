import { Widget } from '@lumino/widgets';

import { casaRequest, ICluster, IField, IGpuInfo, jsonBody } from './api';

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  node.append(...children);
  return node;
}

/** The "New Dask cluster" form plus the list of running clusters. */
export class ClusterPanel extends Widget {
  private form = el('form', { class: 'casa-form' });
  private error = el('div', { class: 'casa-error', 'data-testid': 'casa-error' });
  private list = el('div', { class: 'casa-clusters', 'data-testid': 'casa-clusters' });
  private gpuMax: Record<string, number> = {};
  private timer = window.setInterval(() => void this.refresh().catch(() => undefined), 5000);

  constructor() {
    super();
    this.id = 'casa-dask-clusters';
    this.title.label = 'Dask clusters';
    this.title.closable = true;
    this.addClass('casa-panel');
    this.node.append(el('h2', {}, 'New Dask cluster'), this.form, this.error, el('h3', {}, 'Clusters'), this.list);
    this.form.addEventListener('submit', event => {
      event.preventDefault();
      void this.create();
    });
    void this.load();
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  async load(): Promise<void> {
    try {
      const info = await casaRequest<IGpuInfo>('gpus');
      this.gpuMax = info.options.gpus_per_worker_max;
      this.renderForm(info.options.fields.filter(f => f.name !== 'memory' && f.name !== 'cores'));
      await this.refresh();
    } catch (e) {
      this.showError(e);
    }
  }

  private renderForm(fields: IField[]): void {
    const rows = fields.map(f => {
      let input: HTMLInputElement | HTMLSelectElement;
      if (f.kind === 'select') {
        input = el('select', { name: f.name }, ...(f.options ?? []).map(o => el('option', { value: o }, o)));
        input.addEventListener('change', () => this.updateGpuMax());
      } else {
        input = el('input', { name: f.name, type: 'number', min: String(f.min ?? 0) });
        if (f.max !== null && f.max !== undefined) {
          input.max = String(f.max);
        }
      }
      input.value = String(f.default);
      input.setAttribute('data-testid', `casa-${f.name}`);
      return el('label', {}, f.label, input);
    });
    const submit = el('button', { type: 'submit', class: 'jp-mod-styled jp-mod-accept', 'data-testid': 'casa-create' });
    submit.textContent = 'Create';
    this.form.replaceChildren(...rows, submit);
    this.updateGpuMax();
  }

  private field(name: string): HTMLInputElement | HTMLSelectElement {
    return this.form.elements.namedItem(name) as HTMLInputElement | HTMLSelectElement;
  }

  private updateGpuMax(): void {
    const gpus = this.field('gpus_per_worker') as HTMLInputElement | null;
    const backend = this.field('backend');
    if (gpus && backend) {
      gpus.max = String(this.gpuMax[backend.value] ?? 0);
    }
  }

  private async create(): Promise<void> {
    const body: Record<string, string | number> = {};
    for (const name of ['backend', 'workers', 'gpus_per_worker']) {
      const input = this.field(name);
      if (input) {
        body[name] = name === 'backend' ? input.value : Number(input.value);
      }
    }
    this.showError(null);
    this.list.classList.add('casa-busy');
    try {
      await casaRequest<ICluster>('clusters', jsonBody('POST', body));
      await this.refresh();
    } catch (e) {
      this.showError(e);
    } finally {
      this.list.classList.remove('casa-busy');
    }
  }

  async refresh(): Promise<void> {
    const clusters = await casaRequest<ICluster[]>('clusters');
    this.list.replaceChildren(...clusters.map(c => this.renderCluster(c)));
    if (!clusters.length) {
      this.list.append(el('p', {}, 'No clusters.'));
    }
  }

  private renderCluster(c: ICluster): HTMLElement {
    const gpus = c.options.gpus_per_worker ? `, ${c.options.gpus_per_worker} GPU/worker` : '';
    const scale = el('input', { type: 'number', min: '0', value: String(c.requested_workers ?? c.workers.length) });
    const scaleButton = el('button', { class: 'jp-mod-styled', 'data-testid': 'casa-scale' }, 'Scale');
    const stop = el('button', { class: 'jp-mod-styled jp-mod-warn', 'data-testid': 'casa-shutdown' }, 'Shut down');
    scaleButton.onclick = () => this.act(c.id, jsonBody('PATCH', { workers: Number(scale.value) }));
    stop.onclick = () => this.act(c.id, { method: 'DELETE' });
    const link = c.dashboard_proxy ?? c.dashboard_link;
    return el(
      'div',
      { class: 'casa-cluster', 'data-testid': 'casa-cluster', 'data-cluster-id': c.id },
      el('b', {}, c.name),
      ` ${c.backend}: ${c.workers.length} worker(s)${gpus} `,
      el('code', { 'data-testid': 'casa-scheduler' }, c.scheduler_address ?? ''),
      ' ',
      link ? el('a', { href: link, target: '_blank', rel: 'noopener' }, 'Dashboard') : '',
      el('div', {}, scale, scaleButton, stop)
    );
  }

  private async act(id: string, init: RequestInit): Promise<void> {
    this.showError(null);
    try {
      await casaRequest(`clusters/${id}`, init);
      await this.refresh();
    } catch (e) {
      this.showError(e);
    }
  }

  private showError(e: unknown): void {
    this.error.textContent = e ? String((e as Error).message ?? e) : '';
  }
}
