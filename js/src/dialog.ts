import { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { CasaApiError, casaRequest, el, ICasaCluster, IClusterOptions, IOptionField, jsonBody } from './api';

/** Options the form lays out itself (not one row each from the ``fields`` list). */
const OWN_LAYOUT = new Set(['backend', 'workers', 'name', 'adapt']);
const INTEGER_TYPES = new Set(['int', 'integer', 'number', 'float']);
const CREATE_INDEX = 1; // [Cancel, Create]

let instances = 0;

function isGpuField(name: string): boolean {
  return /^gpus?_/.test(name) || name === 'mig';
}

function formatBytes(value: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = value;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit++;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[unit]}`;
}

/** How a bound or default is shown: sizes of a memory field in binary units, anything else as the server sent it. */
function shown(field: IOptionField, value: string | number | null | undefined): string {
  if (value === null || value === undefined) {
    return '';
  }
  return field.type === 'memory' && typeof value === 'number' ? formatBytes(value) : String(value);
}

function rangeText(field: IOptionField): string {
  const min = shown(field, field.min);
  const max = shown(field, field.max);
  if (min && max) {
    return `${min}–${max}`;
  }
  return max ? `at most ${max}` : min ? `at least ${min}` : '';
}

/** One labelled control with the server's limit beside it and room for the server's message about it. */
interface IRow {
  node: HTMLElement;
  input: HTMLInputElement | HTMLSelectElement;
  limit: HTMLElement;
  error: HTMLElement;
}

/**
 * The body of the "New Dask cluster" dialog: every option the server offers with its limit beside it. Nothing is
 * checked or converted here: the values go to the server exactly as typed and its message is shown next to the
 * option it names.
 */
export class ClusterOptionsForm extends Widget {
  /** The cluster the server started; the dialog's value once it closes with "Create". */
  created: ICasaCluster | null = null;

  private readonly prefix = `casa-opt-${++instances}`;
  private readonly rows = new Map<string, IRow>();
  private readonly general = el('div', {
    class: 'casa-option-error casa-general-error',
    'data-testid': 'casa-error',
    role: 'alert'
  });
  private readonly progress = el('div', {
    class: 'casa-progress',
    'data-testid': 'casa-progress',
    'aria-live': 'polite'
  });
  private readonly fixed: HTMLInputElement;
  private readonly adaptive: HTMLInputElement;
  private readonly fixedBlock = el('div', { class: 'casa-scaling-block' });
  private readonly adaptBlock = el('div', { class: 'casa-scaling-block' });
  private readonly gpuNote = el('div', { class: 'casa-gpu-note', 'data-testid': 'casa-gpu-note' });

  constructor(private readonly options: IClusterOptions) {
    super();
    this.addClass('casa-options-form');
    this.node.setAttribute('data-testid', 'casa-options-form');
    const form = el('form', { 'aria-label': 'Dask cluster options' });
    form.addEventListener('submit', event => event.preventDefault()); // Enter is the dialog's "Create"
    const fields = new Map(options.fields.map(f => [f.name, f]));

    const { limits } = options;
    if (limits.max_clusters !== null && limits.max_clusters !== undefined) {
      form.append(
        el(
          'p',
          { class: 'casa-limit-summary', 'data-testid': 'casa-limit-clusters' },
          `Clusters running: ${limits.clusters} of at most ${limits.max_clusters}.`
        )
      );
    }

    form.append(this.row({ name: 'name', label: 'Name (optional)', type: 'string', default: '' }).node);
    const backendField = fields.get('backend') ?? {
      name: 'backend',
      label: 'Backend',
      type: 'select',
      default: options.backends[0] ?? null
    };
    const backend = this.row({ ...backendField, choices: options.backends });
    backend.input.addEventListener('change', () => this.updateGpuLimit());
    form.append(backend.node);

    // fixed number of workers, or adaptive between a minimum and a maximum
    const workersField = fields.get('workers') ?? { name: 'workers', label: 'Workers', type: 'integer', default: 1 };
    const group = `${this.prefix}-scaling`;
    this.fixed = el('input', {
      type: 'radio',
      name: group,
      value: 'fixed',
      'data-testid': 'casa-scaling-fixed',
      'aria-label': 'Fixed number of workers'
    });
    this.adaptive = el('input', {
      type: 'radio',
      name: group,
      value: 'adaptive',
      'data-testid': 'casa-scaling-adaptive',
      'aria-label': 'Adaptive: between a minimum and a maximum number of workers'
    });
    this.fixed.checked = true;
    this.fixed.addEventListener('change', () => this.updateScaling());
    this.adaptive.addEventListener('change', () => this.updateScaling());
    this.fixedBlock.append(this.row(workersField).node);
    const bounds = { type: workersField.type, min: workersField.min, max: workersField.max };
    this.adaptBlock.append(
      this.row({ ...bounds, name: 'adapt.minimum', label: 'Minimum workers', default: workersField.min ?? 0 }).node,
      this.row({ ...bounds, name: 'adapt.maximum', label: 'Maximum workers', default: workersField.default }).node,
      this.errorOnly('adapt')
    );
    form.append(
      el(
        'div',
        { class: 'casa-scaling' },
        el(
          'div',
          { class: 'casa-option', role: 'radiogroup', 'aria-label': 'Scaling: a fixed number of workers, or adaptive' },
          el('span', {}, 'Scaling'),
          el(
            'span',
            { class: 'casa-radios' },
            el('label', { class: 'casa-radio' }, this.fixed, 'Fixed'),
            el('label', { class: 'casa-radio' }, this.adaptive, 'Adaptive')
          )
        ),
        this.fixedBlock,
        this.adaptBlock
      )
    );

    for (const field of options.fields) {
      if (!OWN_LAYOUT.has(field.name)) {
        form.append(this.row(field).node);
      }
    }
    form.append(this.gpuNote, this.general, this.progress);
    this.node.append(form);
    this.updateScaling();
    this.updateGpuLimit();
  }

  /** The dialog's value. */
  getValue(): ICasaCluster | null {
    return this.created;
  }

  /** The POST body: every enabled control's text exactly as typed (the server validates and converts). */
  request(): Record<string, unknown> {
    const body: Record<string, unknown> = {};
    for (const [name, row] of this.rows) {
      if (row.input.disabled || name.startsWith('adapt.') || name === 'workers') {
        continue;
      }
      if (name === 'name' && row.input.value === '') {
        continue; // the server names it
      }
      body[name] = row.input.value;
    }
    if (this.adaptive.checked) {
      body.adapt = {
        minimum: this.rows.get('adapt.minimum')!.input.value,
        maximum: this.rows.get('adapt.maximum')!.input.value
      };
    } else {
      body.workers = this.rows.get('workers')!.input.value;
    }
    return body;
  }

  /** Show the server's message next to the option it names (or above the buttons when it names none). */
  showError(error: unknown): void {
    this.clearErrors();
    const message = error instanceof Error ? error.message : String(error);
    const field = error instanceof CasaApiError ? error.field : null;
    let row = field ? this.rowFor(field) : undefined;
    if (row?.node.closest('[hidden]')) {
      // e.g. "workers" while adaptive: the adaptive bounds are what the message is about
      row = undefined;
      if (this.adaptive.checked) {
        this.node.querySelector<HTMLElement>('[data-testid="casa-error-adapt"]')!.textContent = message;
        return;
      }
    }
    if (row) {
      row.error.textContent = message;
      row.input.setAttribute('aria-invalid', 'true');
      row.node.classList.add('casa-invalid');
      row.input.focus();
    } else if (field && (field === 'adapt' || field.startsWith('adapt'))) {
      this.node.querySelector<HTMLElement>('[data-testid="casa-error-adapt"]')!.textContent = message;
    } else {
      this.general.textContent = message;
    }
  }

  clearErrors(): void {
    this.general.textContent = '';
    this.node.querySelectorAll('.casa-option-error').forEach(node => (node.textContent = ''));
    for (const row of this.rows.values()) {
      row.input.removeAttribute('aria-invalid');
      row.node.classList.remove('casa-invalid');
    }
  }

  /** While the server starts the cluster nothing can be changed. */
  setBusy(busy: boolean): void {
    this.node.classList.toggle('casa-busy', busy);
    this.node.setAttribute('aria-busy', String(busy));
    this.progress.textContent = busy ? 'Starting the cluster…' : '';
    this.node.querySelectorAll<HTMLInputElement | HTMLSelectElement>('input, select').forEach(input => {
      input.disabled = busy || (this.gpuUnavailable && isGpuField(input.name));
    });
    if (!busy) {
      this.updateScaling();
    }
  }

  private get gpuUnavailable(): boolean {
    return !this.options.gpu.available;
  }

  private rowFor(field: string): IRow | undefined {
    const aliases: Record<string, string> = { minimum: 'adapt.minimum', maximum: 'adapt.maximum' };
    return this.rows.get(field) ?? this.rows.get(aliases[field] ?? '') ?? this.rows.get(field.replace(/\//g, '.'));
  }

  private row(field: IOptionField): IRow {
    const id = `${this.prefix}-${field.name.replace(/\W/g, '-')}`;
    const testid = field.name.replace(/\./g, '-');
    let input: HTMLInputElement | HTMLSelectElement;
    if (field.choices && field.choices.length) {
      input = el('select', {}, ...field.choices.map(choice => el('option', { value: choice }, choice)));
    } else {
      // text, not type=number: a number input hides what was typed ("abc" reads as ""), and the server must see it
      input = el('input', { type: 'text', autocomplete: 'off', spellcheck: 'false' });
      if (INTEGER_TYPES.has(field.type)) {
        input.inputMode = field.step && !Number.isInteger(field.step) ? 'decimal' : 'numeric';
      }
    }
    input.id = id;
    input.name = field.name;
    input.value = shown(field, field.default);
    input.setAttribute('data-testid', `casa-option-${testid}`);
    const limit = el('span', { class: 'casa-option-limit', id: `${id}-limit`, 'data-testid': `casa-limit-${testid}` });
    limit.textContent = rangeText(field);
    const error = el('div', {
      class: 'casa-option-error',
      id: `${id}-error`,
      'data-testid': `casa-error-${testid}`,
      role: 'alert'
    });
    input.setAttribute('aria-describedby', `${id}-limit ${id}-error`);
    const node = el(
      'div',
      { class: 'casa-option', 'data-field': field.name },
      el('label', { for: id }, field.label),
      input,
      limit,
      error
    );
    if (isGpuField(field.name) && this.gpuUnavailable) {
      input.disabled = true;
      node.classList.add('casa-disabled');
    }
    const row = { node, input, limit, error };
    this.rows.set(field.name, row);
    return row;
  }

  private errorOnly(name: string): HTMLElement {
    return el('div', { class: 'casa-option-error', 'data-testid': `casa-error-${name}`, role: 'alert' });
  }

  private updateScaling(): void {
    const adaptive = this.adaptive.checked;
    this.fixedBlock.hidden = adaptive;
    this.adaptBlock.hidden = !adaptive;
  }

  /** GPU limits depend on the backend: show the chosen backend's, or why there are none. */
  private updateGpuLimit(): void {
    const { gpu, limits } = this.options;
    const backend = this.rows.get('backend')?.input.value ?? '';
    const row = this.rows.get('gpus_per_worker');
    const notes: string[] = [];
    if (!gpu.available) {
      notes.push(`GPU options are unavailable: ${gpu.reason ?? 'this server has no GPU allowance'}`);
    } else {
      const devices = gpu.inventory?.gpus ?? [];
      const names = [...new Set(devices.map(d => (d.mig ? `${d.name ?? 'GPU'} (MIG ${d.mig})` : (d.name ?? 'GPU'))))];
      if (devices.length) {
        notes.push(`GPUs here: ${devices.length} × ${names.join(', ')}`);
      }
      const cap = limits.gpus?.[backend];
      if (cap) {
        notes.push(`${cap.booked} of ${cap.max} GPUs booked on ${backend}`);
      }
    }
    this.gpuNote.textContent = notes.join('. ');
    this.gpuNote.classList.toggle('casa-unavailable', !gpu.available);
    if (row) {
      const field = this.options.fields.find(f => f.name === 'gpus_per_worker');
      const cap = limits.gpus?.[backend];
      const range = field ? rangeText(field) : '';
      row.limit.textContent = !gpu.available
        ? 'unavailable'
        : cap
          ? `${range} per worker; ${Math.max(0, cap.max - cap.booked)} free`
          : range;
    }
  }
}

/**
 * JupyterLab's Dialog that stays open while the cluster starts: "Create" posts the options, and only a cluster
 * the server started closes it; a refusal is shown in the form and the user can correct it.
 */
export class ClusterOptionsDialog extends Dialog<ICasaCluster | null> {
  private busy = false;

  constructor(private readonly form: ClusterOptionsForm) {
    super({
      title: 'New Dask cluster',
      body: form,
      buttons: [
        Dialog.cancelButton({ ariaLabel: 'Cancel: start nothing' }),
        Dialog.okButton({ label: 'Create', ariaLabel: 'Create the Dask cluster with these options' })
      ],
      focusNodeSelector: 'input, select',
      defaultButton: CREATE_INDEX
    });
    this.addClass('casa-options-dialog');
    this.node.setAttribute('data-testid', 'casa-options-dialog');
  }

  resolve(index?: number): void {
    if (this.busy) {
      return;
    }
    if ((index ?? CREATE_INDEX) === CREATE_INDEX) {
      void this.create();
      return;
    }
    super.resolve(index);
  }

  reject(): void {
    if (!this.busy) {
      super.reject();
    }
  }

  private async create(): Promise<void> {
    const request = this.form.request(); // before the controls are disabled: disabled ones are left out
    this.setBusy(true);
    this.form.clearErrors();
    try {
      this.form.created = await casaRequest<ICasaCluster>('clusters', jsonBody('POST', request));
    } catch (error) {
      this.form.showError(error);
      return;
    } finally {
      this.setBusy(false);
    }
    super.resolve(CREATE_INDEX);
  }

  private setBusy(busy: boolean): void {
    this.busy = busy;
    this.form.setBusy(busy);
    this.node.querySelectorAll<HTMLButtonElement>('.jp-Dialog-button').forEach(button => (button.disabled = busy));
  }
}

/** Ask the server what may be started, then show the dialog; resolves with the started cluster, or null. */
export async function showClusterOptionsDialog(): Promise<ICasaCluster | null> {
  const options = await casaRequest<IClusterOptions>('options');
  const result = await new ClusterOptionsDialog(new ClusterOptionsForm(options)).launch();
  return result.button.accept ? result.value : null;
}
