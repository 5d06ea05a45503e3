// corpus_jsonl.mjs: cuts plain-text files into {"text": ...} documents for pretraining with
// `peft train` (so the trainer can shuffle documents and hold some out), deterministically.
//   node tools/corpus_jsonl.mjs OUT_TRAIN.jsonl OUT_HELD_OUT.jsonl HELD_OUT_EVERY MAX_CHARS FILE...
// Documents and the held-out split as tools/corpus_docs.mjs cuts them: every HELD_OUT_EVERY-th
// document (1-based count) goes to OUT_HELD_OUT. Uses node's standard library.
// Not here: cleaning the sources (scripts/make_base_model.sh), tokenization.
import { writeFileSync } from 'node:fs';
import { corpus_documents, is_held_out } from './corpus_docs.mjs';

const [out_train, out_held, every_s, max_s, ...files] = process.argv.slice(2);
const every = Number(every_s), max_chars = Number(max_s);
if (!out_train || !out_held || !(every >= 2) || !(max_chars >= 64) || !files.length) {
    console.error('usage: node tools/corpus_jsonl.mjs OUT_TRAIN OUT_HELD_OUT HELD_OUT_EVERY MAX_CHARS FILE...');
    process.exit(2);
}

const docs = corpus_documents(files, max_chars);
const train = [], held = [];
docs.forEach((d, i) => (is_held_out(i, every) ? held : train).push(JSON.stringify({ text: d.text })));
writeFileSync(out_train, train.join('\n') + '\n');
writeFileSync(out_held, held.join('\n') + '\n');
const chars = docs.reduce((x, d) => x + d.text.length, 0);
console.log(JSON.stringify({ documents: docs.length, train: train.length, held_out: held.length, chars }));
