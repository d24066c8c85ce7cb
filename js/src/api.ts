import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IField {
  name: string;
  kind: string;
  label: string;
  default: string | number;
  min?: number;
  max?: number | null;
  options?: string[];
}

export interface IGpuInfo {
  inventory: { count: number; source: string };
  options: { fields: IField[]; gpus_per_worker_max: Record<string, number> };
}

export interface IWorker {
  name: string;
  address: string;
  resources: Record<string, number>;
}

export interface ICluster {
  id: string;
  name: string;
  backend: string;
  options: Record<string, number | string>;
  scheduler_address: string | null;
  dashboard_link: string | null;
  dashboard_proxy: string | null;
  requested_workers: number | null;
  workers: IWorker[];
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
}

export interface ICredentials {
  user: string;
  directory: string;
  issued_at: string | null;
  seconds_left: number | null;
  credentials: ICredential[];
}

/** Call the Casa REST API; a 4xx/5xx becomes an Error carrying the server's message. */
export async function casaRequest<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'casa', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error((data && data.message) || response.statusText);
  }
  return data as T;
}

export function jsonBody(method: string, body: unknown): RequestInit {
  return { method, body: JSON.stringify(body) };
}
