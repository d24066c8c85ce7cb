import { Notification } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { casaRequest, ICredentials } from './api';
import { human } from './credentials';

/** Status-bar item: time until the first Casa credential lapses; warns once when it gets close. Clicking it
 * calls ``onOpen`` (the extension shows the credentials panel). */
export class CredentialStatus extends Widget {
  private warned = false;
  private timer = 0;

  constructor(private onOpen: () => void = () => undefined, private warnSeconds = 1800, private pollMs = 60000) {
    super();
    this.addClass('casa-credential-status');
    this.node.setAttribute('data-testid', 'casa-credential-status');
    this.node.setAttribute('role', 'button');
    this.node.addEventListener('click', () => this.onOpen());
    void this.update_();
    this.timer = window.setInterval(() => void this.update_(), this.pollMs);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  private async update_(): Promise<void> {
    let data: ICredentials;
    try {
      data = await casaRequest<ICredentials>('credentials');
    } catch {
      this.node.textContent = 'Credentials: none';
      this.node.title = 'No Casa credentials are mounted in this server';
      return;
    }
    const left = data.seconds_left;
    const first = data.credentials
      .filter(c => c.seconds_left !== null)
      .sort((a, b) => (a.seconds_left ?? 0) - (b.seconds_left ?? 0))[0];
    this.node.textContent = left === null ? 'Credentials: ok' : `Credentials: ${human(left)}`;
    this.node.title = (first ? `${first.label} expires first. ` : '') + 'Click for the list of your credentials.';
    const low = left !== null && left < this.warnSeconds;
    this.node.classList.toggle('casa-warn', low);
    if (low && !this.warned) {
      this.warned = true;
      Notification.warning(
        `Your ${first?.label ?? 'credentials'} ${left! <= 0 ? 'expired' : `expire in ${human(left!)}`}: ` +
          'restart your server from the hub to renew them.',
        { autoClose: false }
      );
    }
  }
}
