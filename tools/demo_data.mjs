// demo_data.mjs: the demo instruction set, and the pretraining corpus's copy of the Jargon File.
//   node tools/demo_data.mjs kjv     KJV_TXT OUT_DIR      -> the demo task (scripts/make_demo_data.sh):
//        "Which book of the Bible is this verse from?" -> book, OUT_DIR/{train,held_out}.jsonl
//   node tools/demo_data.mjs corpus  JARGON_TXT OUT_TXT   -> the Jargon File minus the 80 entries the
//        first demo task ("Define the hacker term X.") held out; scripts/make_base_model.sh uses it,
//        so the bundled base model's recipe stays reproducible
//   node tools/demo_data.mjs dataset JARGON_TXT OUT_DIR   -> that first task's JSONL (no longer the demo:
//        its held-out loss fell only ~11% under LoRA, the definitions being unpredictable content)
// Deterministic: entries are ordered by sha256(term); the first HELD_OUT go to held_out.jsonl,
// the next up to MAX_TRAIN to train.jsonl. Uses only node's standard library.
// Not here: fetching/installing the text (scripts/make_demo_data.sh), training.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';

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

// ---- the demo task: which book of the KJV Bible is this verse from? ----------------------
// Input: `bible -l100000 Gen1:1-Rev22:21` output (chapter headings "Book N", verses "  N text").
// Twenty books of distinct kinds (law, history, poetry, prophets, gospels, letters, apocalypse).
// Per book, verses of KJV_MIN..KJV_MAX characters ordered by sha256("Book c:v"): the first
// KJV_HELD are held out, the next KJV_TRAIN trained on (every book equally, so the prior alone
// is worth nothing and the answer has to come from the verse's style, names and vocabulary).
const KJV_BOOKS = ['Genesis', 'Exodus', 'Leviticus', 'Deuteronomy', 'Joshua', 'Judges', '1 Samuel', '1 Kings',
                   'Job', 'Psalms', 'Proverbs', 'Isaiah', 'Jeremiah', 'Ezekiel',
                   'Matthew', 'Luke', 'John', 'Acts', 'Romans', 'Revelation'];
const KJV_HELD = 4;
const KJV_TRAIN = 64;
const KJV_MIN = 60, KJV_MAX = 200;

function kjv_split(text) {
    const books = new Map();  // book -> [{ref, verse}]
    let book = null, chapter = 0;
    for (const line of text.split('\n')) {
        let m = /^(\S.*?) (\d+)$/.exec(line);
        if (m) { book = m[1]; chapter = +m[2]; if (!books.has(book)) books.set(book, []); continue; }
        m = /^ +(\d+) (.+)$/.exec(line);
        if (!m || !book) continue;
        const verse = m[2].trim();
        if (verse.length < KJV_MIN || verse.length > KJV_MAX) continue;
        books.get(book).push({ book, ref: `${book} ${chapter}:${m[1]}`, verse, key: sha(`${book} ${chapter}:${m[1]}`) });
    }
    const held = [], train = [];
    for (const b of KJV_BOOKS) {
        const vs = books.get(b);
        if (!vs || vs.length < KJV_HELD + KJV_TRAIN) throw new Error(`book ${b}: too few verses`);
        vs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
        held.push(...vs.slice(0, KJV_HELD));
        train.push(...vs.slice(KJV_HELD, KJV_HELD + KJV_TRAIN));
    }
    return { books: KJV_BOOKS.length, held, train };
}

function kjv_sample(e) {
    return JSON.stringify({ instruction: `Which book of the Bible is this verse from?\n${e.verse}`, output: e.book });
}

const [mode, src, dst] = process.argv.slice(2);
if (!mode || !src || !dst) {
    console.error('usage: node tools/demo_data.mjs kjv KJV_TXT OUT_DIR | corpus JARGON_TXT OUT_TXT');
    process.exit(2);
}
const text = readFileSync(src, 'utf8');
if (mode === 'kjv') {
    const k = kjv_split(text);
    mkdirSync(dst, { recursive: true });
    // Held-out and train both in Bible order (the trainer shuffles with its own seed).
    writeFileSync(`${dst}/train.jsonl`, k.train.map(kjv_sample).join('\n') + '\n');
    writeFileSync(`${dst}/held_out.jsonl`, k.held.map(kjv_sample).join('\n') + '\n');
    const mean = (a) => Math.round(a.reduce((x, e) => x + e.verse.length, 0) / a.length);
    console.log(JSON.stringify({ books: k.books, train: k.train.length, held_out: k.held.length,
                                 mean_verse_chars_train: mean(k.train), mean_verse_chars_held_out: mean(k.held) }));
    process.exit(0);
}
const s = split(text);
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
} else if (mode === 'corpus') {
    // Drop every line of each held-out entry (header through the line before the next header).
    const drop = new Uint8Array(s.parsed.lines.length);
    for (const e of s.held) for (let i = e.first; i <= e.last; ++i) drop[i] = 1;
    const kept = s.parsed.lines.filter((_, i) => !drop[i]);
    writeFileSync(dst, kept.join('\n'));
    console.error(JSON.stringify({ removed_entries: s.held.length, removed_lines: drop.reduce((x, v) => x + v, 0) }));
} else {
    console.error(`unknown mode ${mode}`);
    process.exit(2);
}
