// Moved to src/auth/form-client.ts (kms demo uses it); kept while tests move over.
export { FormClient as Browser } from '../../src/auth/form-client.js';
