import { Notification } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { casaRequest, human, ICredentials } from './api';

/** What to do when renewal did not happen: the same words as the user guide and the server's messages. */
export const RENEWAL_ADVICE = 'restart your server from the hub to renew them';

/** Status-bar item: time until the first Casa credential lapses; warns once when it gets close. Clicking it (or
 * Enter/Space on it) calls ``onOpen`` (the extension shows the credentials panel). */
export class CredentialStatus extends Widget {
  private warned = false;
  private readonly poll: Poll;

  constructor(
    private readonly onOpen: () => void = () => undefined,
    private readonly warnSeconds = 1800,
    pollMs = 60000
  ) {
    super({ node: document.createElement('button') });
    this.addClass('casa-credential-status');
    this.node.setAttribute('data-testid', 'casa-credential-status');
    this.node.setAttribute('type', 'button');
    this.node.setAttribute('aria-label', 'Casa credentials: show the list');
    this.node.addEventListener('click', () => this.onOpen());
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: pollMs, backoff: false },
      standby: 'when-hidden',
      name: 'casa-hub-ext:credential-status'
    });
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  private async refresh(): Promise<void> {
    let data: ICredentials;
    try {
      data = await casaRequest<ICredentials>('credentials');
    } catch {
      this.node.textContent = 'Credentials: none';
      this.node.title = 'No Casa credentials are mounted in this server';
      this.node.setAttribute('aria-label', 'Casa credentials: none mounted; show why');
      return;
    }
    const left = data.seconds_left;
    const first = data.credentials
      .filter(c => c.seconds_left !== null)
      .sort((a, b) => (a.seconds_left ?? 0) - (b.seconds_left ?? 0))[0];
    const text = left === null ? 'Credentials: ok' : `Credentials: ${human(left)}`;
    this.node.textContent = text;
    this.node.title = (first ? `${first.label} expires first. ` : '') + 'Click for the list of your credentials.';
    this.node.setAttribute('aria-label', `${text}; show the list of your Casa credentials`);
    const low = left !== null && left < this.warnSeconds;
    this.node.classList.toggle('casa-warn', low);
    if (low && !this.warned) {
      this.warned = true;
      Notification.warning(
        `Your ${first?.label ?? 'credentials'} ${left <= 0 ? 'expired' : `expire in ${human(left)}`}: ` +
          `${RENEWAL_ADVICE}.`,
        { autoClose: false }
      );
    }
  }
}
