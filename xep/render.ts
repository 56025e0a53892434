/**
 * Reads the XEP (xep/kms.xml, in the XSF's XML format) and renders it as Markdown (xep/kms.md) for
 * readers on GitHub. Also the one place that knows how to parse the XEP: the tests use `loadXep`,
 * `examplesOf` and `tableRows` to check the document against the code.
 *
 *   node --import tsx xep/render.ts          writes xep/kms.md
 *   node --import tsx xep/render.ts --check  exits 1 if xep/kms.md is out of date
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Element, Node } from '@xmpp/xml';
import parse from '@xmpp/xml/lib/parse.js';

/** The directory of this file: xep/. */
export const XEP_DIR = fileURLToPath(new URL('.', import.meta.url));

/**
 * The entities of the XSF's xep.ent that kms.xml uses, by name. Reference entities become a link
 * (the XSF's footnote with the same link is left out); a new reference in the XEP needs a line here.
 */
const XSF_REFERENCES: Record<string, [title: string, url: string]> = {
  xep0030: ['Service Discovery (XEP-0030)', 'https://xmpp.org/extensions/xep-0030.html'],
  xep0045: ['Multi-User Chat (XEP-0045)', 'https://xmpp.org/extensions/xep-0045.html'],
  xep0114: ['Jabber Component Protocol (XEP-0114)', 'https://xmpp.org/extensions/xep-0114.html'],
  xep0128: ['Service Discovery Extensions (XEP-0128)', 'https://xmpp.org/extensions/xep-0128.html'],
  xep0199: ['XMPP Ping (XEP-0199)', 'https://xmpp.org/extensions/xep-0199.html'],
  xep0313: ['Message Archive Management (XEP-0313)', 'https://xmpp.org/extensions/xep-0313.html'],
  xep0334: ['Message Processing Hints (XEP-0334)', 'https://xmpp.org/extensions/xep-0334.html'],
  xep0363: ['HTTP File Upload (XEP-0363)', 'https://xmpp.org/extensions/xep-0363.html'],
  xep0359: ['Unique and Stable Stanza IDs (XEP-0359)', 'https://xmpp.org/extensions/xep-0359.html'],
  xep0380: ['Explicit Message Encryption (XEP-0380)', 'https://xmpp.org/extensions/xep-0380.html'],
  xep0420: ['Stanza Content Encryption (XEP-0420)', 'https://xmpp.org/extensions/xep-0420.html'],
  rfc5280: ['RFC 5280', 'https://www.rfc-editor.org/rfc/rfc5280'],
  rfc6120: ['RFC 6120', 'https://www.rfc-editor.org/rfc/rfc6120'],
  rfc6125: ['RFC 6125', 'https://www.rfc-editor.org/rfc/rfc6125'],
};

const registry = (page: string) => `&lt;<link url='https://xmpp.org/registrar/${page}'>https://xmpp.org/registrar/${page}</link>&gt;`;

/** The other xep.ent entities kms.xml uses, as XML. */
const XSF_TEXT: Record<string, string> = {
  LEGALNOTICE: '<legal/>',
  NSVER:
    '<p>If the protocol defined in this specification undergoes a revision that is not fully backwards-compatible with an older version, the XMPP Registrar shall increment the protocol version number found at the end of the XML namespaces defined herein, as described in Section 4 of <cite>XEP-0053</cite>.</p>',
  NAMESPACES: registry('namespaces.html'),
  DISCOFEATURES: registry('disco-features.html'),
  DISCOCATEGORIES: registry('disco-categories.html'),
  FORMTYPES: registry('formtypes.html'),
};

const PREDEFINED = new Set(['lt', 'gt', 'amp', 'quot', 'apos']);

/** The general entities declared in the document's internal DTD subset, by name. */
function localEntities(source: string): Map<string, string> {
  const doctype = /<!DOCTYPE[\s\S]*?\]>/.exec(source)?.[0] ?? '';
  const entities = new Map<string, string>();
  for (const m of doctype.matchAll(/<!ENTITY\s+([A-Za-z_][\w.-]*)\s+(?:"([^"]*)"|'([^']*)')\s*>/g)) {
    entities.set(m[1]!, m[2] ?? m[3] ?? '');
  }
  return entities;
}

/** Expands the XSF and local entities outside CDATA sections and comments, as an XSF build would. */
function expandEntities(text: string, entities: Map<string, string>, depth = 0): string {
  if (depth > 8) throw new Error('entities nested too deeply');
  return text.replace(/&([A-Za-z_][\w.-]*);/g, (ref, name: string) => {
    if (PREDEFINED.has(name)) return ref;
    const local = entities.get(name);
    if (local !== undefined) return expandEntities(local, entities, depth + 1);
    const reference = XSF_REFERENCES[name];
    if (reference) return `<span class='ref'><link url='${reference[1]}'>${reference[0]}</link></span>`;
    const xsf = XSF_TEXT[name];
    if (xsf !== undefined) return xsf;
    throw new Error(`unknown entity ${ref}: declare it in kms.xml or add it to XSF_REFERENCES in xep/render.ts`);
  });
}

/** Parses the XEP's source into an element tree, with entities expanded and CDATA as text. */
export function parseXep(source: string): Element {
  const entities = localEntities(source);
  const body = source
    .replace(/^<\?xml[^>]*\?>/, '')
    .replace(/<!DOCTYPE[\s\S]*?\]>/, '')
    .replace(/<\?xml-stylesheet[^>]*\?>/, '')
    .trim();
  // Expand only outside CDATA sections and comments.
  const parts = body.split(/(<!\[CDATA\[[\s\S]*?\]\]>|<!--[\s\S]*?-->)/);
  const expanded = parts.map((part, i) => (i % 2 === 1 ? part : expandEntities(part, entities))).join('');
  return parse(expanded);
}

/** Reads and parses xep/kms.xml (or another XEP file). */
export function loadXep(path = resolve(XEP_DIR, 'kms.xml')): Element {
  return parseXep(readFileSync(path, 'utf8'));
}

/** Every element below `el` (depth first, document order) with this name. */
export function descendants(el: Element, name: string): Element[] {
  const found: Element[] = [];
  for (const child of el.getChildElements()) {
    if (child.getName() === name) found.push(child);
    found.push(...descendants(child, name));
  }
  return found;
}

/** All text below an element, whitespace collapsed. */
export function textOf(node: Node): string {
  const raw = (n: Node): string => (typeof n === 'string' ? n : n.children.map(raw).join(''));
  return raw(node).replace(/\s+/g, ' ').trim();
}

/** The body of an example or code block: its CDATA without the surrounding blank lines. */
function blockText(el: Element): string {
  return el
    .getText()
    .replace(/^\s*\n/, '')
    .replace(/\s+$/, '');
}

/** The XEP's examples in document order, each with its caption and text. */
export function examplesOf(root: Element): Array<{ caption: string; text: string }> {
  return descendants(root, 'example').map((el) => ({ caption: el.attrs.caption ?? '', text: blockText(el) }));
}

/** The rows of the table with this caption, each a list of cell texts; the header row first. */
export function tableRows(root: Element, caption: string): string[][] {
  const table = descendants(root, 'table').find((t) => t.attrs.caption === caption);
  if (!table) throw new Error(`no table with caption "${caption}"`);
  return table.getChildren('tr').map((tr) => tr.getChildElements().map((cell) => textOf(cell)));
}

/** The RFC 2119 keywords that state a requirement (SHOULD, MAY and RECOMMENDED do not). */
const NORMATIVE = /\b(?:MUST NOT|MUST|REQUIRED|SHALL NOT|SHALL)\b/g;

/** The requirement keywords of a text, in order ("MUST NOT" is one keyword, not a MUST). */
export function normativeKeywords(text: string): string[] {
  return [...text.matchAll(NORMATIVE)].map((m) => m[0]);
}

/** One requirement keyword of the XEP: the section that states it, the keyword and its sentence's surroundings. */
export interface Requirement {
  anchor: string;
  keyword: string;
  context: string;
}

/**
 * Every requirement keyword of the XEP's prose (examples and code aside), each with the anchor of
 * the innermost section that holds it; the sections whose anchors are in `skip` (by default the
 * Conformance section, which repeats them) are left out. A paragraph that ends in "MUST:" (or
 * "MUST NOT:") and introduces a list states one requirement per item of the list, and counts so.
 */
export function requirementsOf(root: Element, skip: ReadonlySet<string> = new Set(['conformance'])): Requirement[] {
  const out: Requirement[] = [];
  const walk = (section: Element) => {
    const anchor = section.attrs.anchor ?? '';
    const children = section.getChildElements();
    children.forEach((child, i) => {
      const name = child.getName();
      if (/^section[1-5]$/.test(name)) {
        if (!skip.has(child.attrs.anchor ?? '')) walk(child);
        return;
      }
      if (name === 'example' || name === 'code') return;
      const text = textOf(child);
      const next = children[i + 1];
      const list = name === 'p' && next && (next.getName() === 'ol' || next.getName() === 'ul') ? next : undefined;
      for (const m of text.matchAll(NORMATIVE)) {
        const context = text.slice(Math.max(0, m.index - 80), m.index + m[0].length + 80);
        const leadIn = list && m.index + m[0].length === text.length - 1 && text.endsWith(':');
        const times = leadIn ? list.getChildren('li').length : 1;
        for (let n = 0; n < times; n++) out.push({ anchor, keyword: m[0], context });
      }
    });
  };
  for (const s1 of root.getChildren('section1')) if (!skip.has(s1.attrs.anchor ?? '')) walk(s1);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Markdown

interface RenderState {
  footnotes: string[];
  examples: number;
}

function escapeMarkdown(text: string): string {
  return text.replace(/[\\*_`[\]]/g, (c) => `\\${c}`).replace(/</g, '&lt;');
}

function codeSpan(text: string): string {
  const t = text.replace(/\s+/g, ' ');
  return t.includes('`') ? `\`\` ${t} \`\`` : `\`${t}\``;
}

/** Renders inline content (text, tt, em, strong, link, span, note, br). */
function inline(nodes: Node[], state: RenderState): string {
  let out = '';
  let afterReference = false;
  for (const node of nodes) {
    if (typeof node === 'string') {
      if (node.trim() !== '') afterReference = false;
      out += escapeMarkdown(node.replace(/\s+/g, ' '));
      continue;
    }
    const name = node.getName();
    if (name === 'note') {
      // The XSF's reference entities repeat their link in a footnote; the inline link is enough here.
      if (afterReference) out = out.replace(/ +$/, '');
      else {
        state.footnotes.push(inline(node.children, state).trim());
        out += `[^${state.footnotes.length}]`;
      }
      afterReference = false;
      continue;
    }
    afterReference = false;
    if (name === 'tt') out += codeSpan(textOf(node));
    else if (name === 'em' || name === 'cite' || name === 'dfn') out += `*${inline(node.children, state).trim()}*`;
    else if (name === 'strong') out += `**${inline(node.children, state).trim()}**`;
    else if (name === 'br') out += '<br>';
    else if (name === 'link') {
      const url = node.attrs.url ?? '';
      const label = inline(node.children, state).trim();
      out += label === url ? `<${url}>` : `[${label}](${url})`;
    } else if (name === 'span') {
      const content = inline(node.children, state);
      if (node.attrs.class === 'super') out += `<sup>${content}</sup>`;
      else if (node.attrs.class === 'sub') out += `<sub>${content}</sub>`;
      else out += content;
      afterReference = node.attrs.class === 'ref';
    } else out += inline(node.children, state);
  }
  return out;
}

function paragraph(nodes: Node[], state: RenderState): string {
  return inline(nodes, state).replace(/ +/g, ' ').trim();
}

function fence(text: string, language: string): string {
  const ticks = text.includes('```') ? '````' : '```';
  return `${ticks}${language}\n${text}\n${ticks}`;
}

function codeLanguage(text: string): string {
  const t = text.trim();
  if (t.startsWith('<')) return 'xml';
  try {
    JSON.parse(t);
    return 'json';
  } catch {
    return 'text';
  }
}

const BLOCK = new Set(['p', 'ul', 'ol', 'dl', 'table', 'example', 'code', 'div']);

/** Renders the content of a list item or definition: inline runs as paragraphs, nested blocks as blocks. */
function mixed(el: Element, state: RenderState): string[] {
  const out: string[] = [];
  let run: Node[] = [];
  const flush = () => {
    const text = paragraph(run, state);
    if (text) out.push(text);
    run = [];
  };
  for (const child of el.children) {
    if (typeof child !== 'string' && BLOCK.has(child.getName())) {
      flush();
      out.push(...block(child, state));
    } else run.push(child);
  }
  flush();
  return out;
}

function list(el: Element, state: RenderState): string {
  const ordered = el.getName() === 'ol';
  return el
    .getChildren('li')
    .map((li, i) => {
      const marker = ordered ? `${i + 1}. ` : '- ';
      const indent = ' '.repeat(marker.length);
      const parts = mixed(li, state).map((part) => part.replace(/\n/g, `\n${indent}`));
      return marker + parts.join(`\n\n${indent}`);
    })
    .join('\n');
}

function table(el: Element, state: RenderState): string {
  const rows = el.getChildren('tr').map((tr) => tr.getChildElements().map((cell) => paragraph(cell.children, state).replace(/\|/g, '\\|')));
  const [head, ...body] = rows;
  if (!head) return '';
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...body.map((r) => `| ${r.join(' | ')} |`)];
  const caption = el.attrs.caption ? `**Table: ${escapeMarkdown(el.attrs.caption)}**\n\n` : '';
  return caption + lines.join('\n');
}

/** Renders one block element as one or more Markdown blocks. */
function block(el: Element, state: RenderState): string[] {
  switch (el.getName()) {
    case 'p':
      return [paragraph(el.children, state)];
    case 'ul':
    case 'ol':
      return [list(el, state)];
    case 'dl':
      return [
        el
          .getChildren('di')
          .map((di) => {
            const dt = di.getChild('dt');
            const dd = di.getChild('dd');
            const term = dt ? paragraph(dt.children, state) : '';
            const definition = dd ? mixed(dd, state).join('\n\n  ') : '';
            return `- **${term}**: ${definition}`;
          })
          .join('\n'),
      ];
    case 'table':
      return [table(el, state)];
    case 'example': {
      state.examples += 1;
      const caption = el.attrs.caption ? ` ${escapeMarkdown(el.attrs.caption)}` : '';
      return [`**Example ${state.examples}.**${caption}`, fence(blockText(el), 'xml')];
    }
    case 'code': {
      const text = blockText(el);
      const caption = el.attrs.caption ? [`*${escapeMarkdown(el.attrs.caption)}*`] : [];
      return [...caption, fence(text, codeLanguage(text))];
    }
    case 'div':
      return el.getChildElements().flatMap((child) => block(child, state));
    default:
      throw new Error(`render.ts does not know the block element <${el.getName()}/>`);
  }
}

function section(el: Element, number: string, level: number, state: RenderState): string[] {
  const out = [`<a id="${el.attrs.anchor ?? ''}"></a>\n\n${'#'.repeat(level)} ${number} ${escapeMarkdown(el.attrs.topic ?? '')}`];
  let sub = 0;
  for (const child of el.getChildElements()) {
    if (/^section[2-5]$/.test(child.getName())) {
      sub += 1;
      out.push(...section(child, `${number.replace(/\.$/, '')}.${sub}`, level + 1, state));
    } else out.push(...block(child, state));
  }
  return out;
}

function header(root: Element, state: RenderState): string[] {
  const h = root.getChild('header');
  if (!h) throw new Error('the XEP has no <header/>');
  const field = (name: string) => textOf(h.getChild(name) ?? '');
  const revisions = h.getChildren('revision');
  const latest = revisions[0];
  const authors = h.getChildren('author').map((a) => {
    const name = `${textOf(a.getChild('firstname') ?? '')} ${textOf(a.getChild('surname') ?? '')}`.trim();
    const email = a.getChild('email');
    return email ? `${name} <${textOf(email)}>` : name;
  });
  const facts: Array<[string, string]> = [
    ['Number', field('number')],
    ['Status', field('status')],
    ['Type', field('type')],
    ['Version', latest ? `${textOf(latest.getChild('version') ?? '')} (${textOf(latest.getChild('date') ?? '')})` : ''],
    ['Dependencies', (h.getChild('dependencies')?.getChildren('spec') ?? []).map((s) => textOf(s)).join(', ')],
    ['Short name', field('shortname')],
    ['Authors', authors.join(', ')],
  ];
  const history = revisions.map((r) => {
    const remark = r.getChild('remark');
    const text = remark ? mixed(remark, state).join(' ') : '';
    return `- **${textOf(r.getChild('version') ?? '')}** (${textOf(r.getChild('date') ?? '')}, ${textOf(r.getChild('initials') ?? '')}): ${text}`;
  });
  return [
    '<!-- Generated from kms.xml by `node --import tsx xep/render.ts`. Edit the XML, then run it again. -->',
    `# ${escapeMarkdown(field('title'))}`,
    `> ${escapeMarkdown(field('abstract'))}`,
    ['| | |', '|---|---|', ...facts.map(([k, v]) => `| ${k} | ${escapeMarkdown(v)} |`)].join('\n'),
    "This is a Markdown rendering of [kms.xml](kms.xml), a ProtoXEP in the XSF's format; the XSF's legal notice (`&LEGALNOTICE;`) applies to it.",
    '**Revision history**',
    history.join('\n'),
  ];
}

function contents(root: Element): string {
  const lines: string[] = ['**Contents**', ''];
  root.getChildren('section1').forEach((s1, i) => {
    lines.push(`- [${i + 1}. ${s1.attrs.topic ?? ''}](#${s1.attrs.anchor ?? ''})`);
    s1.getChildren('section2').forEach((s2, j) => {
      lines.push(`  - [${i + 1}.${j + 1} ${s2.attrs.topic ?? ''}](#${s2.attrs.anchor ?? ''})`);
    });
  });
  return lines.join('\n');
}

/** Renders a parsed XEP as GitHub-flavoured Markdown. */
export function renderMarkdown(root: Element): string {
  const state: RenderState = { footnotes: [], examples: 0 };
  const blocks = [...header(root, state), contents(root)];
  for (const [i, s1] of root.getChildren('section1').entries()) blocks.push(...section(s1, `${i + 1}.`, 2, state));
  if (state.footnotes.length > 0) {
    blocks.push(state.footnotes.map((note, i) => `[^${i + 1}]: ${note}`).join('\n'));
  }
  return `${blocks.filter((b) => b !== '').join('\n\n')}\n`;
}

function main(args: string[]): number {
  const markdown = renderMarkdown(loadXep());
  const target = resolve(XEP_DIR, 'kms.md');
  if (args.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(target, 'utf8');
    } catch {
      // a missing file is simply out of date
    }
    if (current !== markdown) {
      console.error('xep/kms.md is out of date: run node --import tsx xep/render.ts');
      return 1;
    }
    return 0;
  }
  writeFileSync(target, markdown);
  console.log(`wrote ${target}`);
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
