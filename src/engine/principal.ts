/** Who sent a request, as established from its credential. */
export interface Principal {
  /** A bare JID for users; kms://<domain> for a trusted service (a federating KMS). */
  id: string;
  /** Users act for themselves; trusted services (jwk credential with an x5c chain) may act for others. */
  kind: 'user' | 'service';
  /** Until when the credential is good (the token's exp, the certificate's notAfter). */
  expiresAt?: number;
}
