// A throw-away certificate authority and server certificates for the federation harness, made with
// the openssl command line (EC P-256, valid for a day).
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TestCa {
  certPem: string;
  keyPem: string;
  certFile: string;
  keyFile: string;
}

export interface ServerCert {
  certFile: string;
  keyFile: string;
  /** Certificate followed by its key (ejabberd's certfiles format). */
  bundleFile: string;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await run('openssl', args, { cwd });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`openssl ${args[0]} failed: ${e.message}\n${e.stderr ?? ''}`);
  }
}

/** A self-signed CA named `name`, written to `dir`/`name`-ca.{crt,key}. */
export async function makeCa(dir: string, name: string): Promise<TestCa> {
  const keyFile = join(dir, `${name}-ca.key`);
  const certFile = join(dir, `${name}-ca.crt`);
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', keyFile], dir);
  await openssl(
    [
      'req',
      '-x509',
      '-new',
      '-key',
      keyFile,
      '-out',
      certFile,
      '-days',
      '1',
      '-subj',
      `/CN=${name} test CA`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  return { certFile, keyFile, certPem: await readFile(certFile, 'utf8'), keyPem: await readFile(keyFile, 'utf8') };
}

/** A server certificate for `names` (the first is the CN), usable as TLS server and client (s2s). */
export async function issueCert(ca: TestCa, dir: string, names: string[]): Promise<ServerCert> {
  const base = join(dir, names[0] as string);
  const keyFile = `${base}.key`;
  const csrFile = `${base}.csr`;
  const certFile = `${base}.crt`;
  const extFile = `${base}.ext`;
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', keyFile], dir);
  await openssl(['req', '-new', '-key', keyFile, '-out', csrFile, '-subj', `/CN=${names[0]}`], dir);
  await writeFile(
    extFile,
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth,clientAuth',
      `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`,
      '',
    ].join('\n'),
  );
  await openssl(
    ['x509', '-req', '-in', csrFile, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-CAcreateserial', '-days', '1', '-extfile', extFile, '-out', certFile],
    dir,
  );
  const bundleFile = `${base}.pem`;
  await writeFile(bundleFile, (await readFile(certFile, 'utf8')) + (await readFile(keyFile, 'utf8')), { mode: 0o600 });
  return { certFile, keyFile, bundleFile };
}
