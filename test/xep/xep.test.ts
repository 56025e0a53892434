/**
 * Keeps the protocol document honest: its examples are real fixtures (well-formed, parsed by
 * @xmpp/xml, valid against the schema), the schema rejects what it should, the Markdown rendering
 * is current, and the XEP's error tables match the code's registries in both directions.
 */
import { validateXML } from 'xmllint-wasm';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { expect } from 'chai';
import xml, { type Element } from '@xmpp/xml';
import parse from '@xmpp/xml/lib/parse.js';
import { KMS_ERRORS } from '../../src/protocol/errors.js';
import { NS, NS_STANZAS } from '../../src/protocol/namespace.js';
import { STANZA_ERRORS, type StanzaErrorKey, isStanzaErrorKey, parseStanzaError, stanzaError } from '../../src/protocol/stanza-errors.js';
import { XEP_DIR, descendants, examplesOf, loadXep, normativeKeywords, renderMarkdown, requirementsOf, tableRows, textOf } from '../../xep/render.js';

const EXAMPLES_DIR = resolve(XEP_DIR, 'examples');
const SCHEMA = resolve(XEP_DIR, 'kms.xsd');
const XEP_SOURCE = readFileSync(resolve(XEP_DIR, 'kms.xml'), 'utf8');
const exampleFiles = readdirSync(EXAMPLES_DIR)
  .filter((f) => f.endsWith('.xml'))
  .sort();
const exampleText = (file: string) => readFileSync(join(EXAMPLES_DIR, file), 'utf8').replace(/\s+$/, '');

/** The repository's root: test files named in the XEP's Conformance table are relative to it. */
const REPO = resolve(XEP_DIR, '..');

/** One row of the Conformance table: its requirement, the anchors its Section cell links to, its Test cell. */
interface ConformanceRow {
  requirement: string;
  anchors: string[];
  test: string;
}

function conformanceTable(root: Element): { head: string[]; rows: ConformanceRow[] } {
  const table = descendants(root, 'table').find((t) => t.attrs.caption === 'Conformance');
  if (!table) throw new Error('no table with caption "Conformance"');
  const [head, ...rows] = table.getChildren('tr');
  return {
    head: head!.getChildElements().map((c) => textOf(c)),
    rows: rows.map((tr) => {
      const [requirement, section, test] = tr.getChildElements();
      const anchors = descendants(section!, 'link')
        .map((l) => l.attrs.url ?? '')
        .filter((u) => u.startsWith('#'))
        .map((u) => u.slice(1));
      return { requirement: textOf(requirement!), anchors, test: textOf(test!) };
    }),
  };
}

/**
 * A Test cell: "not tested: <reason>", or references `test/….test.ts › "<it() title>"` separated
 * by "; ", optionally after "not conforming: <what is missing>; " (then some of them are skipped).
 */
function parseTestCell(cell: string): { untested?: string; gap?: string; refs: { file: string; title: string }[] } {
  if (cell.startsWith('not tested: ')) return { untested: cell.slice('not tested: '.length), refs: [] };
  const gap = /^not conforming: ([^;]+); /.exec(cell);
  const rest = gap ? cell.slice(gap[0].length) : cell;
  const refs = rest.split(/(?<=");\s+(?=test\/)/).map((ref) => {
    const m = /^(test\/[\w./-]+\.test\.ts) › "(.+)"$/.exec(ref.trim());
    if (!m) throw new Error(`not a test reference (test/….test.ts › "title"): ${ref}`);
    return { file: m[1]!, title: m[2]! };
  });
  return { ...(gap ? { gap: gap[1]! } : {}), refs };
}

/** The it() titles of a test file; a template title's ${…} parts match anything. */
function itTitles(source: string): { matches: (title: string) => boolean; skipped: boolean }[] {
  const unescapeTitle = (s: string) => s.replace(/\\(.)/g, '$1');
  const literal = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const out: { matches: (title: string) => boolean; skipped: boolean }[] = [];
  for (const m of source.matchAll(/\bit(\.skip|\.only)?\(\s*(?:'((?:[^'\\\n]|\\.)*)'|"((?:[^"\\\n]|\\.)*)"|`((?:[^`\\]|\\.)*)`)/g)) {
    const skipped = m[1] === '.skip';
    if (m[4] !== undefined) {
      const pattern = new RegExp(
        `^${m[4]
          .split(/\$\{[^}]*\}/)
          .map((part) => literal(unescapeTitle(part)))
          .join('.+')}$`,
      );
      out.push({ matches: (t) => pattern.test(t), skipped });
    } else {
      const title = unescapeTitle(m[2] ?? m[3] ?? '');
      out.push({ matches: (t) => t === title, skipped });
    }
  }
  return out;
}

const XSD = readFileSync(SCHEMA, 'utf8');

/**
 * libxml2's xmllint, compiled to WebAssembly (xmllint-wasm from npm), so that the unit tests need
 * nothing but npm: a well-formedness check, or validation against xep/kms.xsd.
 */
async function xmllint(document: string, withSchema: boolean): Promise<{ ok: boolean; output: string }> {
  const xml = { fileName: 'document.xml', contents: document };
  const r = withSchema ? await validateXML({ xml, schema: { fileName: 'kms.xsd', contents: XSD } }) : await validateXML({ xml, normalization: 'c14n' });
  return { ok: r.valid, output: r.errors.map((e) => e.rawMessage).join('\n') };
}

/** The elements of our namespace that are not inside another one, each with its namespace declared. */
function kmsElements(el: Element): Element[] {
  if (el.getNS() === NS) {
    const copy = parse(el.toString());
    copy.attrs.xmlns = NS;
    return [copy];
  }
  return el.getChildElements().flatMap(kmsElements);
}

/** Validates a standalone document against xep/kms.xsd. */
function validate(document: string): Promise<{ ok: boolean; output: string }> {
  return xmllint(document, true);
}

// Hooks live inside this suite, not at the root, so that they do not run for the rest of the test suite.
describe('xep (the protocol document, its schema and its error tables)', function () {
  before(async function () {
    // The checker itself: a broken document must fail, or every "ok" below would mean nothing.
    expect((await xmllint('<a><b></a>', false)).ok).to.equal(false);
    expect((await xmllint('<a/>', false)).ok).to.equal(true);
  });

  describe('xep/examples', function () {
    it('are numbered 01, 02, ... without gaps and named', function () {
      expect(exampleFiles.length).to.be.greaterThan(10);
      exampleFiles.forEach((file, i) => {
        expect(file).to.match(new RegExp(`^${String(i + 1).padStart(2, '0')}-[a-z0-9]+(-[a-z0-9]+)*\\.xml$`));
      });
    });

    for (const file of exampleFiles) {
      it(`${file} is well-formed XML and parses with @xmpp/xml`, async function () {
        const lint = await xmllint(readFileSync(join(EXAMPLES_DIR, file), 'utf8'), false);
        expect(lint.ok, lint.output).to.equal(true);
        const el = parse(exampleText(file));
        expect(['iq', 'message', 'envelope']).to.include(el.getName());
      });
    }

    for (const file of exampleFiles) {
      it(`${file}: every element in ${NS} validates against kms.xsd`, async function () {
        for (const el of kmsElements(parse(exampleText(file)))) {
          const result = await validate(el.toString());
          expect(result.ok, `${el.getName()} in ${file}: ${result.output}`).to.equal(true);
        }
      });
    }

    it('exercise the schema: identity, kms, encrypted and error conditions occur in them', function () {
      const names = new Set(exampleFiles.flatMap((f) => kmsElements(parse(exampleText(f))).map((e) => e.getName())));
      for (const name of ['identity', 'kms', 'encrypted', 'unknown-payload', 'malformed-payload', 'too-many-messages', 'rate-limited']) {
        expect(names, name).to.include(name);
      }
    });

    it('error examples carry the type and condition that STANZA_ERRORS gives their key', function () {
      const errors = exampleFiles.filter((f) => f.includes('-error-'));
      expect(errors).to.not.be.empty;
      for (const file of errors) {
        const parsed = parseStanzaError(parse(exampleText(file)));
        expect(parsed, file).to.not.equal(undefined);
        const entry = STANZA_ERRORS[parsed!.key];
        expect({ type: parsed!.type, condition: parsed!.condition }, file).to.deep.equal({
          type: entry.type,
          condition: entry.condition,
        });
        expect(file).to.include(parsed!.key);
      }
    });
  });

  describe('xep/kms.xml', function () {
    const root = loadXep();

    it('has the header of a ProtoXEP named "Key Management Service over XMPP"', function () {
      const header = root.getChild('header')!;
      expect(textOf(header.getChild('title')!)).to.equal('Key Management Service over XMPP');
      expect(textOf(header.getChild('status')!)).to.equal('ProtoXEP');
      expect(textOf(header.getChild('shortname')!)).to.equal('kms');
      const specs = header
        .getChild('dependencies')!
        .getChildren('spec')
        .map((s) => textOf(s));
      for (const spec of [
        'XMPP Core',
        'XEP-0030',
        'XEP-0045',
        'XEP-0114',
        'XEP-0313',
        'XEP-0334',
        'XEP-0380',
        'XEP-0420',
        'RFC 7515',
        'RFC 7516',
        'RFC 7517',
        'RFC 7518',
        'draft-abiggs-saag-key-management-service-03',
        'draft-abiggs-saag-primitives-for-conf-group-comms-01',
      ]) {
        expect(specs).to.include(spec);
      }
    });

    it('has the sections of the XEP template, in order', function () {
      expect(root.getChildren('section1').map((s) => s.attrs.topic)).to.deep.equal([
        'Introduction',
        'Requirements',
        'Glossary',
        'Use Cases',
        'Business Rules',
        'Implementation Notes',
        'Security Considerations',
        'Conformance',
        'IANA Considerations',
        'XMPP Registrar Considerations',
        'XML Schema',
      ]);
    });

    it('links only to anchors it defines', function () {
      const anchors = new Set(['section1', 'section2', 'section3', 'section4'].flatMap((n) => descendants(root, n).map((s) => s.attrs.anchor)));
      for (const link of descendants(root, 'link')) {
        const url = link.attrs.url ?? '';
        if (url.startsWith('#')) expect(anchors, url).to.include(url.slice(1));
      }
    });

    it('contains exactly the example files as its examples, in order', function () {
      expect(examplesOf(root).map((e) => e.text)).to.deep.equal(exampleFiles.map(exampleText));
    });

    it('includes each example file verbatim in a CDATA section', function () {
      for (const file of exampleFiles) {
        expect(XEP_SOURCE.includes(`<![CDATA[\n${exampleText(file)}\n]]></example>`), file).to.equal(true);
      }
    });

    it('includes xep/kms.xsd verbatim as its schema', function () {
      const schema = descendants(root.getChildren('section1').find((s) => s.attrs.anchor === 'schema')!, 'code');
      expect(schema).to.have.length(1);
      expect(schema[0]!.getText().trim()).to.equal(readFileSync(SCHEMA, 'utf8').trim());
    });

    it('lists the same XMPP stanza errors as STANZA_ERRORS, in both directions', function () {
      const [head, ...rows] = tableRows(root, 'XMPP stanza errors');
      expect(head).to.deep.equal(['Application condition', 'Type', 'Defined condition', 'When']);
      const documented = Object.fromEntries(rows.map(([key, type, condition]) => [key, { type, condition }]));
      const registry = Object.fromEntries(Object.entries(STANZA_ERRORS).map(([key, e]) => [key, { type: e.type, condition: e.condition }]));
      expect(rows).to.have.length(Object.keys(registry).length);
      expect(documented).to.deep.equal(registry);
    });

    describe('Conformance', function () {
      const { head, rows } = conformanceTable(root);

      it('has a row per requirement, each stating one MUST, MUST NOT or REQUIRED and linking to the sections that state it', function () {
        expect(head).to.deep.equal(['Requirement', 'Section', 'Test']);
        expect(rows.length).to.be.greaterThan(50);
        for (const row of rows) {
          expect(normativeKeywords(row.requirement), row.requirement).to.have.length(1);
          expect(row.anchors, row.requirement).to.not.be.empty;
        }
      });

      it('accounts for every requirement of the document: for each section, its rows state the same MUSTs, MUST NOTs and REQUIREDs as its text', function () {
        const stated = new Map<string, string[]>();
        const contexts = new Map<string, string[]>();
        for (const r of requirementsOf(root)) {
          stated.set(r.anchor, [...(stated.get(r.anchor) ?? []), r.keyword]);
          contexts.set(r.anchor, [...(contexts.get(r.anchor) ?? []), `…${r.context}…`]);
        }
        expect([...stated.values()].flat().length, 'requirements found in the text').to.be.greaterThan(80);
        const listed = new Map<string, string[]>();
        for (const row of rows) {
          for (const anchor of new Set(row.anchors)) listed.set(anchor, [...(listed.get(anchor) ?? []), ...normativeKeywords(row.requirement)]);
        }
        const count = (words: string[] = []) => Object.fromEntries([...new Set(words)].sort().map((w) => [w, words.filter((x) => x === w).length]));
        const mismatches: Record<string, unknown> = {};
        for (const anchor of new Set([...stated.keys(), ...listed.keys()])) {
          const text = count(stated.get(anchor));
          const table = count(listed.get(anchor));
          if (JSON.stringify(text) !== JSON.stringify(table)) mismatches[anchor] = { text, table, requirements: contexts.get(anchor) ?? [] };
        }
        expect(mismatches, 'sections whose requirements and Conformance rows differ (add or remove a row)').to.deep.equal({});
      });

      it('names for each requirement tests that exist, skipped only where it says "not conforming", or says why it is not tested', function () {
        const sources = new Map<string, ReturnType<typeof itTitles>>();
        const problems: string[] = [];
        for (const row of rows) {
          const cell = parseTestCell(row.test);
          if (cell.untested !== undefined) {
            if (cell.untested.length < 20) problems.push(`${row.requirement}: say why it is not tested`);
            continue;
          }
          expect(cell.refs, row.requirement).to.not.be.empty;
          const skippedRefs: string[] = [];
          for (const { file, title } of cell.refs) {
            if (!existsSync(resolve(REPO, file))) {
              problems.push(`${file}: no such file`);
              continue;
            }
            if (!sources.has(file)) sources.set(file, itTitles(readFileSync(resolve(REPO, file), 'utf8')));
            const found = sources.get(file)!.filter((t) => t.matches(title));
            if (found.length === 0) problems.push(`${file}: no it() titled "${title}"`);
            else if (found.every((t) => t.skipped)) skippedRefs.push(title);
          }
          if (cell.gap === undefined && skippedRefs.length > 0)
            problems.push(`${row.requirement}: skipped test(s) ${skippedRefs.join(', ')} in a row that does not say "not conforming"`);
          if (cell.gap !== undefined && skippedRefs.length === 0)
            problems.push(`${row.requirement}: "not conforming" but no test of it is skipped (drop the words if it conforms now)`);
        }
        expect(problems).to.deep.equal([]);
      });
    });

    it('lists the same KMS error codes and statuses as KMS_ERRORS, in both directions', function () {
      const [head, ...rows] = tableRows(root, 'KMS error codes');
      expect(head).to.deep.equal(['Code', 'Status', 'Meaning']);
      const documented = Object.fromEntries(rows.map(([code, status]) => [code, Number(status)]));
      const registry = Object.fromEntries(Object.entries(KMS_ERRORS).map(([code, e]) => [code, e.status]));
      expect(rows).to.have.length(Object.keys(registry).length);
      expect(documented).to.deep.equal(registry);
    });
  });

  describe('xep/kms.md', function () {
    const markdown = readFileSync(resolve(XEP_DIR, 'kms.md'), 'utf8');

    it('is the current rendering of kms.xml (run node --import tsx xep/render.ts)', function () {
      expect(markdown === renderMarkdown(loadXep()), 'xep/kms.md is out of date').to.equal(true);
    });

    it('contains every example file verbatim', function () {
      for (const file of exampleFiles) expect(markdown.includes(`\n${exampleText(file)}\n`), file).to.equal(true);
    });
  });

  describe('xep/kms.xsd', function () {
    const JWE = 'eyJhbGciOiJkaXIifQ..aXZpdml2aXZpdg.Y2lwaGVy.dGFndGFn';

    it('accepts a minimal valid request (so that the rejections below mean something)', async function () {
      const result = await validate(`<kms xmlns='${NS}'><message>${JWE}</message><message>a.b.c</message></kms>`);
      expect(result.ok, result.output).to.equal(true);
    });

    const rejected: Array<[string, string]> = [
      ['a <kms/> with no <message/>', `<kms xmlns='${NS}'/>`],
      ['a <kms/> with an unknown child', `<kms xmlns='${NS}'><message>${JWE}</message><note>hi</note></kms>`],
      ['a <kms/> with a child in another namespace', `<kms xmlns='${NS}'><message xmlns='jabber:client'>${JWE}</message></kms>`],
      ['a <message/> with whitespace inside', `<kms xmlns='${NS}'><message> ${JWE} </message></kms>`],
      ['a <message/> with base64 (not base64url) characters', `<kms xmlns='${NS}'><message>ab+c.d/e.f=</message></kms>`],
      ['a <message/> with four parts', `<kms xmlns='${NS}'><message>a.b.c.d</message></kms>`],
      ['an empty <message/>', `<kms xmlns='${NS}'><message/></kms>`],
      ['an <encrypted/> without a gk', `<encrypted xmlns='${NS}' kms='kms.example.com' chain='kms://kms.example.com/blocks/1'>${JWE}</encrypted>`],
      [
        'an <encrypted/> holding a JWS',
        `<encrypted xmlns='${NS}' gk='kms://kms.example.com/gks/1' kms='kms.example.com' chain='kms://kms.example.com/blocks/1'>a.b.c</encrypted>`,
      ],
      ['an <identity/> with an unknown child', `<identity xmlns='${NS}'><key/></identity>`],
      ['an <x5c/> that is not base64', `<identity xmlns='${NS}'><x5c>not base64!</x5c></identity>`],
      ['an error condition with content', `<rate-limited xmlns='${NS}'>soon</rate-limited>`],
    ];
    for (const [what, document] of rejected) {
      it(`rejects ${what}`, async function () {
        expect((await validate(document)).ok).to.equal(false);
      });
    }
  });

  describe('src/protocol/stanza-errors', function () {
    const keys = Object.keys(STANZA_ERRORS) as StanzaErrorKey[];

    it('builds <error/> with the defined condition, a text, then the application condition', function () {
      const el = stanzaError('too-many-messages');
      expect(el.getName()).to.equal('error');
      expect(el.attrs.type).to.equal('modify');
      expect(el.getChildElements().map((c) => [c.getName(), c.getNS()])).to.deep.equal([
        ['policy-violation', NS_STANZAS],
        ['text', NS_STANZAS],
        ['too-many-messages', NS],
      ]);
      expect(el.getChildText('text', NS_STANZAS)).to.equal(STANZA_ERRORS['too-many-messages'].text);
    });

    it('uses a given text instead of the default', function () {
      expect(stanzaError('rate-limited', 'slow down').getChildText('text', NS_STANZAS)).to.equal('slow down');
    });

    it('builds errors that validate against kms.xsd in their application condition', async function () {
      for (const key of keys) {
        const result = await validate(stanzaError(key).getChild(key, NS)!.toString());
        expect(result.ok, `${key}: ${result.output}`).to.equal(true);
      }
    });

    for (const key of keys) {
      it(`round-trips ${key} through an IQ error reply`, function () {
        const iq = xml('iq', { type: 'error', id: 'x', from: 'kms.example.com' }, stanzaError(key, 'why'));
        const reparsed = parse(iq.toString());
        expect(parseStanzaError(reparsed)).to.deep.equal({
          key,
          type: STANZA_ERRORS[key].type,
          condition: STANZA_ERRORS[key].condition,
          text: 'why',
        });
        expect(parseStanzaError(reparsed.getChild('error')!)?.key).to.equal(key);
      });
    }

    it('returns undefined for an error without a condition of ours, or no error at all', function () {
      const serverError = parse(`<iq type='error' id='y'><error type='wait'><remote-server-timeout xmlns='${NS_STANZAS}'/></error></iq>`);
      expect(parseStanzaError(serverError)).to.equal(undefined);
      expect(parseStanzaError(parse(`<iq type='result' id='z'/>`))).to.equal(undefined);
    });

    it('recognises only its own keys', function () {
      expect(isStanzaErrorKey('rate-limited')).to.equal(true);
      expect(isStanzaErrorKey('toString')).to.equal(false);
      expect(isStanzaErrorKey('bad-request')).to.equal(false);
    });
  });
});
