/**
 * The address of the admin HTTP listener (admin.listen, KMS_ADMIN_LISTEN): a port alone (on
 * loopback), host:port, or [IPv6]:port. Port 0 takes any free port (the log line names it).
 */
import { isIPv6 } from 'node:net';

export interface ListenAddress {
  host: string;
  port: number;
}

/** The address `value` names, or why it names none. */
export function parseListen(value: string): ListenAddress | { error: string } {
  const v = value.trim();
  const bare = /^(\d+)$/.exec(v);
  const v6 = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(v);
  const named = /^([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(\d+)$/.exec(v);
  let host: string;
  let portText: string;
  if (bare) [host, portText] = ['127.0.0.1', bare[1]!];
  else if (v6 && isIPv6(v6[1]!)) [host, portText] = [v6[1]!, v6[2]!];
  else if (named) [host, portText] = [named[1]!, named[2]!];
  else return { error: `must be a port (on loopback), host:port or [IPv6]:port, e.g. 127.0.0.1:9464; got "${value}"` };
  const port = portText.length <= 5 ? Number(portText) : Number.NaN;
  if (!(port >= 0 && port <= 65535)) return { error: `the port must be a number from 0 to 65535, got "${portText}"` };
  return { host, port };
}
