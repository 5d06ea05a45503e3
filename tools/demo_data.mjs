// demo_data.mjs: the demo instruction set, and the pretraining corpus's copy of the Jargon File.
//   node tools/demo_data.mjs sources CORPUS_DIR OUT_DIR -> the demo task (scripts/make_demo_data.sh):
//        "Which text is this passage from: Bible, Moby Dick or Jargon File?" -> the text's name,
//        OUT_DIR/{train,held_out}.jsonl, from the corpus files scripts/make_base_model.sh writes
//   node tools/demo_data.mjs corpus  JARGON_TXT OUT_TXT   -> the Jargon File minus the 80 entries the
//        first demo task ("Define the hacker term X.") held out; scripts/make_base_model.sh uses it,
//        so the bundled base model's recipe stays reproducible
//   node tools/demo_data.mjs dataset JARGON_TXT OUT_DIR   -> that first task's JSONL (no longer the demo:
//        its held-out loss fell only ~11% under LoRA, the definitions being unpredictable content)
// Deterministic: entries are ordered by sha256(term); the first HELD_OUT go to held_out.jsonl,
// the next up to MAX_TRAIN to train.jsonl (passages likewise, by sha256 of their document).
// Uses only node's standard library.
// Not here: fetching/installing the text (scripts/make_demo_data.sh), training.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { corpus_documents, is_held_out } from './corpus_docs.mjs';

const HELD_OUT = 80;
const MAX_TRAIN = 1600;
const MAX_OUT_CHARS = 200;   // short answers a tiny model can learn the shape of
const MIN_OUT_CHARS = 25;

// Lexicon entries: "   :term: pronunciation, pos." ... up to the next header or the appendices.
function parse_entries(text) {
    const lines = text.split('\n');
    const end = lines.findIndex((l) => /^\s+Part III\. Appendices\s*$/.test(l));
    const stop = end < 0 ? lines.length : end;
    const entries = [];
    for (let i = 0; i < stop; ++i) {
        const m = /^   :(.+?):(?:\s|$)/.exec(lines[i]);
        if (!m) continue;
        if (entries.length) entries[entries.length - 1].last = i - 1;
        entries.push({ term: m[1], first: i, last: stop - 1 });
    }
    for (const e of entries) {
        // First paragraph after the header (blank-line separated).
        let i = e.first + 1;
        while (i <= e.last && lines[i].trim() === '') ++i;
        const para = [];
        while (i <= e.last && lines[i].trim() !== '') para.push(lines[i].trim()), ++i;
        e.para = para.join(' ');
    }
    return { lines, entries, stop };
}

const ABBREV = /(?:\b(?:e\.g|i\.e|etc|vs|cf|Mr|Mrs|Dr|St|Jr|Inc|Corp|Ltd|Prof|approx|esp|orig|var|syn|abbrev|obs)|\b[A-Z])\.$/i;

// Cleaned first one or two sentences of a definition, or null when unusable.
function definition(para) {
    let s = para;
    s = s.replace(/^(?:\[[^\]]*\]\s*)+/, '');         // usage notes: "[Usenet] ..."
    s = s.replace(/^1\.\s+/, '');                     // "1. first sense"
    if (/^\d+\.\s/.test(s)) return null;
    s = s.replace(/\{([^{}]*)\}/g, '$1');             // cross-reference braces
    s = s.replace(/\s+/g, ' ').trim();
    if (s.startsWith('/')) return null;                // a second sense's pronunciation header
    if (/^(?:See\b|Syn\.|Var\.|Same as\b|Compare\b|Obs\.|Abbrev|Acronym\b|Contraction\b|Common abbreviation\b)/.test(s)) return null;
    if (/[\[\]{}]|https?:|\/\//.test(s)) return null;
    // Sentence ends: ". " / "! " / "? " before an upper-case letter, a digit or a quote, not after an abbreviation.
    const out = [];
    let start = 0;
    for (let i = 0; i < s.length; ++i) {
        const c = s[i];
        if ((c === '.' || c === '!' || c === '?') && (i + 1 === s.length || (s[i + 1] === ' ' && /[A-Z0-9“"(]/.test(s[i + 2] || '')))) {
            const sent = s.slice(start, i + 1).trim();
            if (c === '.' && i + 1 < s.length && ABBREV.test(sent)) continue;
            out.push(sent);
            start = i + 2;
            if (out.length === 2) break;
        }
    }
    if (!out.length) return null;
    let d = out[0];
    if (out.length > 1 && d.length + 1 + out[1].length <= MAX_OUT_CHARS) d += ' ' + out[1];
    if (d.length < MIN_OUT_CHARS || d.length > MAX_OUT_CHARS) return null;
    if (!/[.!?]$/.test(d)) return null;
    // A cut inside a quotation or a parenthesis reads badly: keep only balanced ones.
    const n = (re) => (d.match(re) || []).length;
    if (n(/“/g) !== n(/”/g) || n(/\(/g) !== n(/\)/g) || n(/"/g) % 2) return null;
    return d;
}

function sha(s) { return createHash('sha256').update(s).digest('hex'); }

function split(text) {
    const parsed = parse_entries(text);
    const seen = new Set();
    const usable = [];
    for (const e of parsed.entries) {
        const d = definition(e.para);
        if (!d || seen.has(e.term.toLowerCase())) continue;
        if (!/^[\x20-\x7e]+$/.test(e.term) || e.term.length > 40) continue;
        seen.add(e.term.toLowerCase());
        usable.push({ ...e, def: d, key: sha(e.term) });
    }
    usable.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { parsed, held: usable.slice(0, HELD_OUT), train: usable.slice(HELD_OUT, HELD_OUT + MAX_TRAIN), n_entries: parsed.entries.length, n_usable: usable.length };
}

function sample(e) {
    // Key order instruction, output: the alpaca shape train/data.h reads.
    return JSON.stringify({ instruction: `Define the hacker term "${e.term}".`, output: e.def });
}

// ---- the demo task: which of three pretraining texts is this passage from? --------------
// Input: the cleaned corpus files that scripts/make_base_model.sh writes (step 1, all four, in its
// order), cut into documents and split exactly as the base model's pretraining did
// (tools/corpus_docs.mjs: 500-character documents, every 100th held out). Held-out passages come
// only from the pretraining's held-out documents, so the base model never read them; training
// passages come from documents it did read. The fortune files are in the corpus but not in the
// task: they quote everything (the Bible, hackers, novels), so they are no style of their own.
// Per text, documents ordered by sha256 of their text: the first SRC_HELD held out, the next
// SRC_TRAIN trained on (every text equally, so the prior alone is worth a third); a passage is
// the document's first SRC_MAX_CHARS characters, white space collapsed, cut at a word end.
const CORPUS_FILES = ['moby_dick.txt', 'kjv.txt', 'fortunes.txt', 'jargon.txt'];
const SOURCES = [{ file: 'moby_dick.txt', name: 'Moby Dick' }, { file: 'kjv.txt', name: 'Bible' },
                 { file: 'jargon.txt', name: 'Jargon File' }];
const SRC_HELD = 26;    // Moby Dick has 29 held-out documents of SRC_MIN_CHARS or more
const SRC_TRAIN = 333;
const SRC_MIN_CHARS = 60, SRC_MAX_CHARS = 160;   // 160 characters: about 110 tokens with the question and template
const SRC_QUESTION = 'Which text is this passage from: Bible, Moby Dick or Jargon File?';

function passage(text) {
    const s = text.replace(/\s+/g, ' ').trim();
    if (s.length <= SRC_MAX_CHARS) return s;
    const cut = s.lastIndexOf(' ', SRC_MAX_CHARS);
    return s.slice(0, cut > 0 ? cut : SRC_MAX_CHARS);
}

function sources_split(dir) {
    const docs = corpus_documents(CORPUS_FILES.map((f) => `${dir}/${f}`), 500);
    const held = [], train = [];
    for (const src of SOURCES) {
        const file = CORPUS_FILES.indexOf(src.file);
        const of_src = (held_out) => docs.filter((d, i) => d.file === file && is_held_out(i, 100) === held_out)
            .map((d) => ({ source: src.name, passage: passage(d.text), key: sha(d.text) }))
            .filter((e) => e.passage.length >= SRC_MIN_CHARS)
            .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
        const h = of_src(true), t = of_src(false);
        if (h.length < SRC_HELD || t.length < SRC_TRAIN) throw new Error(`${src.file}: too few documents`);
        held.push(...h.slice(0, SRC_HELD));
        train.push(...t.slice(0, SRC_TRAIN));
    }
    return { held, train };
}

function sources_sample(e) {
    return JSON.stringify({ instruction: `${SRC_QUESTION}\n${e.passage}`, output: e.source });
}

const [mode, src, dst] = process.argv.slice(2);
if (!['sources', 'corpus', 'dataset'].includes(mode) || !src || !dst) {
    console.error('usage: node tools/demo_data.mjs sources CORPUS_DIR OUT_DIR | corpus JARGON_TXT OUT_TXT | dataset JARGON_TXT OUT_DIR');
    process.exit(2);
}
if (mode === 'sources') {
    const k = sources_split(src);
    mkdirSync(dst, { recursive: true });
    // Grouped by source, sha256 order within (the trainer shuffles with its own seed).
    writeFileSync(`${dst}/train.jsonl`, k.train.map(sources_sample).join('\n') + '\n');
    writeFileSync(`${dst}/held_out.jsonl`, k.held.map(sources_sample).join('\n') + '\n');
    const mean = (a) => Math.round(a.reduce((x, e) => x + e.passage.length, 0) / a.length);
    console.log(JSON.stringify({ sources: SOURCES.length, train: k.train.length, held_out: k.held.length,
                                 mean_passage_chars_train: mean(k.train), mean_passage_chars_held_out: mean(k.held) }));
    process.exit(0);
}
const s = split(readFileSync(src, 'utf8'));
if (mode === 'dataset') {
    mkdirSync(dst, { recursive: true });
    // Train lines in term order (the trainer shuffles with its own seed); held-out likewise.
    const by_term = (a, b) => (a.term < b.term ? -1 : a.term > b.term ? 1 : 0);
    const train = [...s.train].sort(by_term), held = [...s.held].sort(by_term);
    writeFileSync(`${dst}/train.jsonl`, train.map(sample).join('\n') + '\n');
    writeFileSync(`${dst}/held_out.jsonl`, held.map(sample).join('\n') + '\n');
    const mean = (a) => Math.round(a.reduce((x, e) => x + e.def.length, 0) / a.length);
    console.log(JSON.stringify({ entries: s.n_entries, usable: s.n_usable, train: train.length, held_out: held.length,
                                 mean_output_chars_train: mean(train), mean_output_chars_held_out: mean(held) }));
} else {  // corpus
    // Drop every line of each held-out entry (header through the line before the next header).
    const drop = new Uint8Array(s.parsed.lines.length);
    for (const e of s.held) for (let i = e.first; i <= e.last; ++i) drop[i] = 1;
    const kept = s.parsed.lines.filter((_, i) => !drop[i]);
    writeFileSync(dst, kept.join('\n'));
    console.error(JSON.stringify({ removed_entries: s.held.length, removed_lines: drop.reduce((x, v) => x + v, 0) }));
}
