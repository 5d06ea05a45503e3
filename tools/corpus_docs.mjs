// corpus_docs.mjs: the pretraining corpus's documents, cut the one way that tools/corpus_jsonl.mjs
// (the base model's corpus) and tools/demo_data.mjs (the demo's held-out passages) must agree on.
// Paragraphs (blank-line separated) are grouped, in file order, into documents of at most
// max_chars characters (a longer paragraph is its own document, cut at line ends); documents never
// span two files. Every held_out_every-th document (1-based count over all files) is held out.
import { readFileSync } from 'node:fs';

// [{ text, file }] in corpus order; file is the index into files.
export function corpus_documents(files, max_chars) {
    const docs = [];
    files.forEach((f, file) => {
        const text = readFileSync(f, 'utf8').replace(/\r\n?/g, '\n');
        const paras = text.split(/\n[ \t]*\n+/).map((p) => p.replace(/^\n+|\s+$/g, '')).filter((p) => p.trim().length);
        let cur = '';
        const flush = () => { if (cur.length) docs.push({ text: cur, file }); cur = ''; };
        for (let p of paras) {
            while (p.length > max_chars) {
                // Cut an over-long paragraph at the last line end that fits (or hard, if none).
                let cut = p.lastIndexOf('\n', max_chars);
                if (cut <= 0) cut = max_chars;
                flush();
                docs.push({ text: p.slice(0, cut), file });
                p = p.slice(cut).replace(/^\n+/, '');
            }
            if (cur.length && cur.length + 2 + p.length > max_chars) flush();
            cur = cur.length ? cur + '\n\n' + p : p;
        }
        flush();
    });
    return docs;
}

export const is_held_out = (index, held_out_every) => (index + 1) % held_out_every === 0;
