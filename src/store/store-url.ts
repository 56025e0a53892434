/**
 * The `store.url` setting (`kms run --store`, KMS_STORE): etcd://host[:port],host[:port],... names
 * the client endpoints of an etcd cluster that several KMS instances share (src/store/etcd.ts).
 */

/** etcd's client port when the URL leaves it out. */
const ETCD_PORT = 2379;

/** The endpoints of an etcd:// URL (http://, or https:// with `tls`), or why it is not one. */
export function parseStoreUrl(url: string, tls: boolean): { endpoints: string[] } | { error: string } {
  const m = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/i.exec(url.trim());
  if (!m) return { error: `must look like etcd://host1:2379,host2:2379,host3:2379, got "${url}"` };
  if (m[1]!.toLowerCase() !== 'etcd')
    return { error: `must use etcd:// (the only shared store; leave store.url unset for LevelDB in the data folder), got "${m[1]}://"` };
  const rest = m[2]!.replace(/\/$/, '');
  if (rest === '') return { error: 'names no host: etcd://host1:2379,host2:2379,...' };
  const endpoints: string[] = [];
  for (const part of rest.split(',')) {
    const hp = /^(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::([^:/]*))?$/i.exec(part.trim());
    if (!hp) return { error: `"${part}" is not host or host:port (hosts are separated by commas, with no path)` };
    let port = ETCD_PORT;
    if (hp[2] !== undefined) {
      port = /^\d{1,5}$/.test(hp[2]) ? Number(hp[2]) : NaN;
      if (!(port >= 1 && port <= 65535)) return { error: `port must be a number from 1 to 65535, got "${hp[2]}" in "${part}"` };
    }
    endpoints.push(`${tls ? 'https' : 'http'}://${hp[1]}:${port}`);
  }
  if (new Set(endpoints).size !== endpoints.length) return { error: `names a host twice: "${url}"` };
  return { endpoints };
}
