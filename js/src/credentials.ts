import { Widget } from '@lumino/widgets';

import { casaRequest, ICredential, ICredentials } from './api';

/** "2h 5m", "12m", "expired": how long until ``seconds`` have passed. */
export function human(seconds: number): string {
  if (seconds <= 0) {
    return 'expired';
  }
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return h ? `${h}h ${m}m` : `${m}m`;
}

function el(tag: string, attrs: Record<string, string> = {}, ...children: (string | Node)[]): HTMLElement {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  node.append(...children); // text goes in as text nodes: nothing from the server is parsed as HTML
  return node;
}

function expiry(c: ICredential): string {
  if (!c.present) {
    return 'missing';
  }
  if (c.seconds_left === null || c.expires_at === null) {
    return 'does not expire';
  }
  const at = new Date(c.expires_at).toLocaleString();
  return c.seconds_left <= 0 ? `expired (${at})` : `in ${human(c.seconds_left)} (${at})`;
}

function audienceAndScopes(c: ICredential): string {
  const parts: string[] = [];
  if (c.audience !== null) {
    parts.push(`audience: ${Array.isArray(c.audience) ? c.audience.join(', ') : c.audience}`);
  }
  if (c.scopes !== null && c.scopes.length) {
    parts.push(`scopes: ${c.scopes.join(' ')}`);
  }
  return parts.join('; ');
}

/** Side panel listing every mounted credential: what it is, where it is, which variable points at it, what it
 * may be used for, and when it expires. Opened by clicking the credentials item of the status bar. */
export class CredentialPanel extends Widget {
  private list = el('div', { class: 'casa-credential-list', 'data-testid': 'casa-credential-list' });
  private info = el('p', { class: 'casa-credential-info' });

  constructor() {
    super();
    this.id = 'casa-credentials';
    this.title.label = 'Credentials';
    this.title.caption = 'Your Casa credentials';
    this.title.closable = true;
    this.addClass('casa-panel');
    this.addClass('casa-credential-panel');
    this.node.setAttribute('data-testid', 'casa-credential-panel');
    this.node.append(el('h2', {}, 'Casa credentials'), this.info, this.list);
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  async refresh(): Promise<void> {
    let data: ICredentials;
    try {
      data = await casaRequest<ICredentials>('credentials');
    } catch (e) {
      this.info.textContent = `No Casa credentials: ${(e as Error).message ?? e}`;
      this.list.replaceChildren();
      return;
    }
    this.info.textContent = `Mounted in ${data.directory} for ${data.user}.`;
    this.list.replaceChildren(...data.credentials.map(c => this.row(c)));
  }

  private row(c: ICredential): HTMLElement {
    const field = (name: string, label: string, value: string) =>
      el(
        'div',
        { class: 'casa-credential-field' },
        el('span', {}, `${label}: `),
        el('code', { 'data-testid': `casa-credential-${name}` }, value)
      );
    const node = el(
      'div',
      { class: 'casa-credential', 'data-testid': 'casa-credential', 'data-name': c.name },
      el('b', { 'data-testid': 'casa-credential-label' }, c.label),
      field('file', 'file', c.file),
      field('env', 'variable', c.env ? `$${c.env}` : '—'),
      field('use', 'for', audienceAndScopes(c) || '—'),
      field('expiry', 'expires', expiry(c))
    );
    node.classList.toggle('casa-expired', c.expired || !c.present);
    return node;
  }
}
