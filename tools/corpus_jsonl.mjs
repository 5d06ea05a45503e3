// corpus_jsonl.mjs: cuts plain-text files into {"text": ...} documents for pretraining with
// `peft train` (so the trainer can shuffle documents and hold some out), deterministically.
//   node tools/corpus_jsonl.mjs OUT_TRAIN.jsonl OUT_HELD_OUT.jsonl HELD_OUT_EVERY MAX_CHARS FILE...
// Paragraphs (blank-line separated) are grouped, in file order, into documents of at most
// MAX_CHARS characters (a longer paragraph is its own document, cut at line ends). Every
// HELD_OUT_EVERY-th document (1-based count) goes to OUT_HELD_OUT. Uses node's standard library.
// Not here: cleaning the sources (scripts/make_base_model.sh), tokenization.
import { readFileSync, writeFileSync } from 'node:fs';

const [out_train, out_held, every_s, max_s, ...files] = process.argv.slice(2);
const every = Number(every_s), max_chars = Number(max_s);
if (!out_train || !out_held || !(every >= 2) || !(max_chars >= 64) || !files.length) {
    console.error('usage: node tools/corpus_jsonl.mjs OUT_TRAIN OUT_HELD_OUT HELD_OUT_EVERY MAX_CHARS FILE...');
    process.exit(2);
}

const docs = [];
for (const f of files) {
    const text = readFileSync(f, 'utf8').replace(/\r\n?/g, '\n');
    const paras = text.split(/\n[ \t]*\n+/).map((p) => p.replace(/^\n+|\s+$/g, '')).filter((p) => p.trim().length);
    let cur = '';
    const flush = () => { if (cur.length) docs.push(cur); cur = ''; };
    for (let p of paras) {
        while (p.length > max_chars) {
            // Cut an over-long paragraph at the last line end that fits (or hard, if none).
            let cut = p.lastIndexOf('\n', max_chars);
            if (cut <= 0) cut = max_chars;
            flush();
            docs.push(p.slice(0, cut));
            p = p.slice(cut).replace(/^\n+/, '');
        }
        if (cur.length && cur.length + 2 + p.length > max_chars) flush();
        cur = cur.length ? cur + '\n\n' + p : p;
    }
    flush();  // documents never span two files
}
const train = [], held = [];
docs.forEach((d, i) => ((i + 1) % every === 0 ? held : train).push(JSON.stringify({ text: d })));
writeFileSync(out_train, train.join('\n') + '\n');
writeFileSync(out_held, held.join('\n') + '\n');
const chars = docs.reduce((x, d) => x + d.length, 0);
console.log(JSON.stringify({ documents: docs.length, train: train.length, held_out: held.length, chars }));
