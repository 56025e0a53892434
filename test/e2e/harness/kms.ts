// A KMS component started in the test process against a harness server, on a fresh data folder.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, type KmsConfig } from '../../../src/config.js';
import { startKms, type RunningKms } from '../../../src/server.js';
import { silentLogger } from '../../../src/util/logger.js';
import type { XmppServer } from './servers.js';

export interface TestKms {
  kms: RunningKms;
  dataDir: string;
}

/**
 * Starts the KMS as kms.localhost on `server` (or on `componentPort`, e.g. a wiretap in front of
 * it), with its data in a new temporary folder; `tune` adjusts the validated config first.
 */
export async function startTestKms(
  server: XmppServer,
  o: { componentPort?: number; dataPrefix?: string; tune?: (c: KmsConfig) => void } = {},
): Promise<TestKms> {
  const dataDir = await mkdtemp(join(tmpdir(), o.dataPrefix ?? 'kms-e2e-'));
  const config = loadConfig({
    env: {
      KMS_DOMAIN: 'kms.localhost',
      KMS_XMPP_SERVICE: `xmpp://127.0.0.1:${o.componentPort ?? server.componentPort}`,
      KMS_XMPP_SECRET: server.componentSecret,
      KMS_DATA_DIR: dataDir,
      KMS_LOG_LEVEL: 'silent',
    },
  });
  o.tune?.(config);
  return { kms: await startKms(config, silentLogger()), dataDir };
}
