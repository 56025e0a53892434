/**
 * The admin listener's operator routes, the `kms` command's way into a running KMS (LevelDB lets
 * one process open the store):
 *   POST /rekey   reads the keyring from its files again and re-seals in the background (202);
 *                 nothing crosses the wire but this request: no key is sent or returned
 *   GET  /rekey   the re-seal's state (key ids only)
 *   GET  /backup  a backup (src/store/backup.ts) from one snapshot of the store: sealed values,
 *                 never the master key; `kms backup` and `kms inspect` read it
 * Loopback clients only (src/admin/server.ts).
 */
import type { KvStore } from '../store/kv.js';
import { writeBackup } from '../store/backup.js';
import type { RekeyRunner } from '../store/rekey.js';
import { json, type AdminRoute } from './server.js';

export function operatorRoutes(o: { rekey: RekeyRunner; kv: KvStore; dataDir: string }): Record<string, AdminRoute> {
  return {
    'POST /rekey': async (_req, res) => {
      try {
        json(res, 202, await o.rekey.reload());
      } catch (e) {
        json(res, 409, { error: (e as Error).message });
      }
    },
    'GET /rekey': async (_req, res) => json(res, 200, o.rekey.status),
    'GET /backup': async (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
      await writeBackup(o.kv, o.dataDir, (line) => {
        // A client gone stops the backup (and frees its snapshot).
        if (res.destroyed) throw new Error('the client went away');
        if (res.write(line)) return undefined;
        return new Promise<void>((r) => {
          res.once('drain', r);
          res.once('close', r);
        });
      }).catch((e: unknown) => {
        if (!res.destroyed) res.destroy(e as Error);
      });
      res.end();
    },
  };
}
