/**
 * A very small form-filling HTTP client for the development identity provider's own pages
 * (src/auth/idp.ts): fetch with a cookie jar, redirects followed by hand (so that cookies set on
 * the way are kept), and a page's form read and submitted (hidden inputs plus the fields given).
 * `kms demo` signs its demo users in with it; tests use it where a person would click. It reads
 * only the IdP's simple markup, not arbitrary HTML.
 */
export interface Page {
  url: string;
  status: number;
  html: string;
}

export class FormClient {
  readonly #cookies = new Map<string, string>();

  /** GET or POST `url`, following redirects; stops at `stopAt` (a redirect whose target starts with it) without loading it. */
  async go(url: string, init: { method?: string; form?: Record<string, string>; stopAt?: string } = {}): Promise<Page> {
    let method = init.method ?? (init.form ? 'POST' : 'GET');
    let body: string | undefined = init.form ? new URLSearchParams(init.form).toString() : undefined;
    let current = url;
    for (let hops = 0; hops < 20; hops++) {
      const headers: Record<string, string> = {};
      if (this.#cookies.size) headers.cookie = [...this.#cookies].map(([k, v]) => `${k}=${v}`).join('; ');
      if (body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
      const res = await fetch(current, { method, headers, redirect: 'manual', ...(body !== undefined ? { body } : {}) });
      for (const c of res.headers.getSetCookie()) this.#setCookie(c);
      const location = res.headers.get('location');
      if (res.status >= 300 && res.status < 400 && location) {
        await res.arrayBuffer();
        current = new URL(location, current).href;
        if (init.stopAt && current.startsWith(init.stopAt)) return { url: current, status: res.status, html: '' };
        method = 'GET';
        body = undefined;
        continue;
      }
      return { url: current, status: res.status, html: await res.text() };
    }
    throw new Error(`too many redirects from ${url}`);
  }

  /** Submits the page's first form (or the one whose id is given) with its hidden inputs and `fields`. */
  async submit(page: Page, fields: Record<string, string> = {}, formId?: string): Promise<Page> {
    const forms = [...page.html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)];
    const form = formId ? forms.find((f) => f[1]!.includes(`id="${formId}"`)) : forms[0];
    if (!form) throw new Error(`no form on ${page.url}: ${page.html.slice(0, 300)}`);
    const action = /action="([^"]*)"/.exec(form[1]!)?.[1] ?? page.url;
    const values: Record<string, string> = {};
    for (const input of form[2]!.matchAll(/<input\b([^>]*)>/gi)) {
      const name = /name="([^"]*)"/.exec(input[1]!)?.[1];
      const value = /value="([^"]*)"/.exec(input[1]!)?.[1];
      if (name && value !== undefined) values[name] = unescapeHtml(value);
    }
    return this.go(new URL(unescapeHtml(action), page.url).href, { form: { ...values, ...fields } });
  }

  #setCookie(header: string): void {
    const [pair = '', ...attrs] = header.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const expired = attrs.some((a) => {
      const [k = '', v = ''] = a.trim().split('=');
      return (k.toLowerCase() === 'max-age' && Number(v) <= 0) || (k.toLowerCase() === 'expires' && Date.parse(v) < Date.now());
    });
    if (expired || value === '') this.#cookies.delete(name);
    else this.#cookies.set(name, value);
  }
}

function unescapeHtml(s: string): string {
  return s
    .replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n)))
    .replace(/&amp;/g, '&')
    .replace(/&quot;/g, '"')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>');
}

/**
 * Approves a device sign-in (RFC 8628) at the development identity provider as `username`, the way
 * a person does in a browser: the verification page with the code filled in, its confirmation,
 * the login form. Resolves when the IdP says the device is signed in.
 */
export async function approveDevice(verificationUriComplete: string, username: string, password: string): Promise<void> {
  const b = new FormClient();
  const posted = await b.submit(await b.go(verificationUriComplete));
  const login = await b.submit(posted, {}, 'op.deviceConfirmForm');
  const done = await b.submit(login, { username, password });
  if (!done.html.includes('The device is signed in')) {
    const reason = /class="error">([^<]*)</.exec(done.html)?.[1] ?? `HTTP ${done.status} at ${done.url}`;
    throw new Error(`the identity provider did not sign the device in as ${username}: ${reason}`);
  }
}
