import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { casaDownload, casaRequest, el, human, ICredential, ICredentials } from './api';

function when(iso: string): string {
  return new Date(iso).toLocaleString();
}

function expiry(c: ICredential): string {
  if (!c.present) {
    return 'missing';
  }
  if (c.seconds_left === null || c.expires_at === null) {
    return 'does not expire';
  }
  const at = when(c.expires_at);
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

/** Renewal, in the user guide's words ("When your credentials are about to expire"). */
const RENEWAL_TEXT =
  'The hub renews these credentials automatically while your server runs: same files, new contents, ' +
  'about half an hour before the first one expires. You need to do nothing.';
const RENEWAL_FAILED_TEXT =
  'If they have expired anyway, stop and start your server (File > Hub Control Panel): before it starts, the hub ' +
  'renews them; if it cannot, it asks you to log in again.';

/** Side panel listing every mounted credential: what it is, where it is, which variable points at it, what it
 * may be used for, when it expires and when the hub last renewed it. Opened from the status bar item. */
export class CredentialPanel extends Widget {
  private readonly list = el('ul', {
    class: 'casa-credential-list',
    'data-testid': 'casa-credential-list',
    'aria-label': 'Mounted credentials'
  });
  private readonly info = el('p', { class: 'casa-credential-info', 'data-testid': 'casa-credential-info' });
  private readonly bundleError = el('div', {
    class: 'casa-option-error',
    'data-testid': 'casa-bundle-error',
    role: 'alert'
  });
  private readonly poll: Poll;

  constructor() {
    super();
    this.id = 'casa-credentials';
    this.title.label = 'Credentials';
    this.title.caption = 'Your Casa credentials';
    this.title.closable = true;
    this.addClass('casa-panel');
    this.addClass('casa-credential-panel');
    this.node.setAttribute('data-testid', 'casa-credential-panel');
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Casa credentials');
    const download = el(
      'button',
      {
        type: 'button',
        class: 'jp-mod-styled jp-mod-accept casa-bundle-download',
        'data-testid': 'casa-bundle-download',
        'aria-label': 'Download laptop bundle: your Dask client certificates and settings as a zip file'
      },
      'Download laptop bundle'
    );
    download.addEventListener('click', () => void this.downloadBundle(download));
    this.node.append(
      el('h2', {}, 'Casa credentials'),
      this.info,
      el('p', { class: 'casa-renewal', 'data-testid': 'casa-renewal' }, RENEWAL_TEXT),
      el('p', { class: 'casa-renewal-failed', 'data-testid': 'casa-renewal-failed' }, RENEWAL_FAILED_TEXT),
      this.list,
      el('h3', {}, 'Working from your laptop'),
      el(
        'p',
        {},
        'The laptop bundle holds what a Dask client outside this server needs to reach your clusters. ' +
          'It expires with your credentials.'
      ),
      download,
      this.bundleError
    );
    // seconds left change while the panel is open; nothing is fetched while it or the page is hidden
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: 30000, backoff: false },
      standby: () => !this.isVisible || 'when-hidden',
      name: 'casa-hub-ext:credential-panel'
    });
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  protected onAfterShow(): void {
    void this.poll.refresh();
  }

  async refresh(): Promise<void> {
    let data: ICredentials;
    try {
      data = await casaRequest<ICredentials>('credentials');
    } catch (e) {
      this.info.textContent = `No Casa credentials: ${e instanceof Error ? e.message : String(e)}`;
      this.list.replaceChildren();
      return;
    }
    const renewed = data.renewed_at ?? data.issued_at;
    this.info.textContent =
      `Mounted in ${data.directory} for ${data.user}.` + (renewed ? ` Last renewed ${when(renewed)}.` : '');
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
    const renewed = c.renewed_at ?? c.issued_at;
    const node = el(
      'li',
      { class: 'casa-credential', 'data-testid': 'casa-credential', 'data-name': c.name },
      el('b', { 'data-testid': 'casa-credential-label' }, c.label),
      field('kind', 'kind', c.name),
      field('file', 'file', c.file),
      field('env', 'variable', c.env ? `$${c.env}` : '—'),
      field('use', 'for', audienceAndScopes(c) || '—'),
      field('expiry', 'expires', expiry(c))
    );
    if (renewed) {
      node.append(field('renewed', 'last renewed', when(renewed)));
    }
    node.classList.toggle('casa-expired', c.expired || !c.present);
    return node;
  }

  /** Fetch ``casa/client-bundle`` with this server's auth and hand it to the browser as a download. */
  private async downloadBundle(button: HTMLButtonElement): Promise<void> {
    this.bundleError.textContent = '';
    button.disabled = true;
    try {
      const { blob, filename } = await casaDownload('client-bundle', 'casa-client-bundle.zip');
      const url = URL.createObjectURL(blob);
      const link = el('a', { href: url, download: filename, hidden: '' });
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      this.bundleError.textContent = `The laptop bundle could not be made: ${e instanceof Error ? e.message : String(e)}`;
    } finally {
      button.disabled = false;
    }
  }
}
