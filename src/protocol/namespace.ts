/** The XML namespace of the KMS binding to XMPP (xep/kms.xml): IQ payloads, encrypted messages, error conditions. */
export const NS = 'urn:xmpp:kms:0';

/** The namespace of XMPP stanza error conditions and text (RFC 6120 §8.3). */
export const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
