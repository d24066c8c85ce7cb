import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One bounded option the facility offers (``GET casa/options``, ``fields``). */
export interface IOptionField {
  name: string;
  label: string;
  type: string;
  default: string | number | null;
  min?: number | string | null;
  max?: number | string | null;
  step?: number | null;
  choices?: string[] | null;
}

export interface IGpuLimit {
  max: number;
  booked: number;
}

export interface IGpuDevice {
  index?: number;
  id?: string;
  name?: string;
  memory_bytes?: number | null;
  mig?: string | null;
}

/** What ``GET casa/options`` answers: what this server may start, and how much of it is already in use. */
export interface IClusterOptions {
  backends: string[];
  fields: IOptionField[];
  limits: {
    max_clusters: number | null;
    clusters: number;
    gpus: Record<string, IGpuLimit>;
  };
  gpu: {
    available: boolean;
    reason: string | null;
    inventory: { count?: number; source?: string; gpus?: IGpuDevice[] } | null;
  };
}

/** dask-labextension's cluster model, plus what Casa started it with. */
export interface ICasaCluster {
  id: string;
  name: string;
  scheduler_address: string;
  dashboard_link: string;
  workers: number;
  adapt: { minimum: number; maximum: number } | null;
  casa?: Record<string, unknown> & { gpus_booked?: number };
}

/** One mounted credential as the hub's manifest describes it (never its secret). */
export interface ICredential {
  name: string;
  label: string;
  file: string;
  env: string | null;
  audience: string | string[] | null;
  scopes: string[] | null;
  present: boolean;
  expires_at: string | null;
  seconds_left: number | null;
  expired: boolean;
  issued_at?: string | null;
  renewed_at?: string | null;
}

export interface ICredentials {
  user: string;
  directory: string;
  issued_at: string | null;
  renewed_at?: string | null;
  seconds_left: number | null;
  credentials: ICredential[];
}

/** A 4xx/5xx from the Casa API: the server's message, its error class and the option it is about (if any). */
export class CasaApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly error: string | null = null,
    readonly field: string | null = null
  ) {
    super(message);
    this.name = 'CasaApiError';
  }
}

interface IErrorBody {
  message?: unknown;
  error?: unknown;
  field?: unknown;
}

function casaUrl(path: string): { url: string; settings: ServerConnection.ISettings } {
  const settings = ServerConnection.makeSettings();
  return { url: URLExt.join(settings.baseUrl, 'casa', path), settings };
}

/** Turn a failed response into a CasaApiError carrying the server's own words. */
async function failure(response: Response): Promise<CasaApiError> {
  const text = await response.text();
  let body: IErrorBody = {};
  try {
    body = text ? (JSON.parse(text) as IErrorBody) : {};
  } catch {
    // not JSON (a proxy's HTML page): fall back to the status line
  }
  const message = typeof body.message === 'string' && body.message ? body.message : response.statusText;
  return new CasaApiError(
    message || `HTTP ${response.status}`,
    response.status,
    typeof body.error === 'string' ? body.error : null,
    typeof body.field === 'string' ? body.field : null
  );
}

/** Call the Casa REST API; a 4xx/5xx becomes a CasaApiError carrying the server's message. */
export async function casaRequest<T>(path: string, init: RequestInit = {}): Promise<T> {
  const { url, settings } = casaUrl(path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  if (!response.ok) {
    throw await failure(response);
  }
  const text = await response.text();
  return (text ? JSON.parse(text) : null) as T;
}

/** Fetch a file from the Casa API (with the server's auth) as a Blob and its suggested file name. */
export async function casaDownload(path: string, fallbackName: string): Promise<{ blob: Blob; filename: string }> {
  const { url, settings } = casaUrl(path);
  const response = await ServerConnection.makeRequest(url, {}, settings);
  if (!response.ok) {
    throw await failure(response);
  }
  const disposition = response.headers.get('Content-Disposition') ?? '';
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const filename = match ? decodeURIComponent(match[1]) : fallbackName;
  return { blob: await response.blob(), filename };
}

export function jsonBody(method: string, body: unknown): RequestInit {
  return { method, body: JSON.stringify(body) };
}

/** "2h 5m", "12m", "expired": how long until ``seconds`` have passed. */
export function human(seconds: number): string {
  if (seconds <= 0) {
    return 'expired';
  }
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return h ? `${h}h ${m}m` : `${m}m`;
}

/** A DOM element with attributes and children; text goes in as text nodes, so nothing from the server is parsed
 * as HTML. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  node.append(...children);
  return node;
}
