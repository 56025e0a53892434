// Counts the IQs one XMPP connection sends to the KMS and the replies it gets, by id: for tests and
// scripts that check that no reply is lost, duplicated or misrouted under load or faults.
import type { Client } from '@xmpp/client';
import type { Element } from '@xmpp/xml';

/** IQs one connection sends to `kms` and the replies it gets, by id: a reply twice, or to an id never sent, is a fault. */
export class IqLedger {
  readonly sent = new Set<string>();
  readonly replies = new Map<string, number>();
  /** Replies to an id this connection never sent. */
  misrouted = 0;

  constructor(xmpp: Client, kms: string) {
    xmpp.on('send', (el: Element) => {
      if (el.name === 'iq' && el.attrs.to === kms && (el.attrs.type === 'get' || el.attrs.type === 'set')) this.sent.add(el.attrs.id as string);
    });
    xmpp.on('stanza', (el: Element) => {
      if (el.name !== 'iq' || el.attrs.from !== kms || (el.attrs.type !== 'result' && el.attrs.type !== 'error')) return;
      const id = el.attrs.id as string;
      if (!this.sent.has(id)) this.misrouted++;
      this.replies.set(id, (this.replies.get(id) ?? 0) + 1);
    });
  }

  /** Ids sent that got no reply (yet). */
  get lost(): number {
    return [...this.sent].filter((id) => !this.replies.has(id)).length;
  }

  /** Ids answered more than once. */
  get duplicated(): number {
    return [...this.replies.values()].filter((n) => n > 1).length;
  }
}
