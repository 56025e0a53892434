/**
 * The client library (`xmpp-kms/client`): what an XMPP client needs to use a KMS over XMPP and to
 * chat in end-to-end encrypted rooms. Start with KmsClient.connect and EncryptedRoom.
 *
 * @module xmpp-kms/client
 */
export { KmsClient, type KmsClientOptions, type ChainView } from './kms-client.js';
export { isTransient, retrying, type RetryOptions } from './retry.js';
export {
  EncryptedRoom,
  type RoomConnection,
  type RoomOptions,
  type RoomMessage,
  type Undecryptable,
  type SharedFile,
  type SendFileOptions,
} from './room.js';
export {
  encryptFile,
  decryptFile,
  fileMessage,
  readFile,
  safeFileName,
  discoverUpload,
  requestSlot,
  putSlot,
  fetchEncryptedFile,
  FILE_MEDIA_TYPE,
  FILE_FALLBACK_BODY,
  NS_UPLOAD,
  type FileRef,
  type UploadSlot,
} from './files.js';
export {
  encryptRoomMessage,
  readEncrypted,
  openRoomMessage,
  UndecryptableError,
  FALLBACK_BODY,
  type EncryptedRef,
  type OpenedMessage,
} from './muc.js';
export { KmsSession, type Transport, type CredentialSource, type KmsResponse, type EphemeralKeyInfo, type SessionOptions } from './session.js';
export { discoverKms, fetchKmsIdentity, xmppTransport, type KmsIdentityInfo, type XmppEntity } from './xmpp.js';
export { xmlConnection, type XmlConnection } from './connection.js';
export {
  createEntityKey,
  entityKeyFromJwk,
  registrationProof,
  openGk,
  type EntityKey,
  type EntityKeyOptions,
  type GroupKey,
} from './keys.js';
export { signBlock, verifyChain, blockHash, type Operation, type VerifiedChain, type SigningKey } from './chain.js';
export type { JWK } from './webcrypto.js';
export type { TrustAnchor } from './x509.js';
export {
  KmsResponseError,
  KmsStanzaError,
  KmsTimeoutError,
  BadResponseError,
  ChainVerificationError,
  IdentityValidationError,
} from './errors.js';
export {
  KmsError,
  KMS_ERRORS,
  CLIENT_ERRORS,
  isRetryable,
  type KmsErrorCode,
  type KmsServerCode,
  type KmsClientCode,
} from '../protocol/errors.js';
