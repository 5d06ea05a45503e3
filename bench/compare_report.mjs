// compare_report.mjs: OUT/results.jsonl + OUT/run.json (bench/compare_methods.sh) ->
// OUT/compare.md (one table per task) and OUT/compare.svg (bars of held-out loss, and of
// accuracy when measured, per method and task). Node's standard library only.
//   node bench/compare_report.mjs OUT
import { readFileSync, writeFileSync } from 'node:fs';

const out = process.argv[2];
if (!out) {
    console.error('usage: node bench/compare_report.mjs OUT');
    process.exit(2);
}
const run = JSON.parse(readFileSync(`${out}/run.json`, 'utf8'));
const rows = readFileSync(`${out}/results.jsonl`, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const tasks = [...new Set(rows.filter((r) => r.task).map((r) => r.task))];
const fx = (v, d) => (typeof v === 'number' && isFinite(v) ? v.toFixed(d) : '–');
const pct = (v) => (typeof v === 'number' ? `${(100 * v).toFixed(1)}%` : '–');
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');
// the held-out loss at the eval nearest a quarter of the run: how fast a method gets going
const early = (r) => {
    if (!r.eval_curve || !r.eval_curve.length) return undefined;
    const q = r.steps / 4;
    return r.eval_curve.reduce((a, e) => (Math.abs(e[0] - q) < Math.abs(a[0] - q) ? e : a))[1];
};

let md = `# Methods side by side\n\n`;
md += `Made by \`bench/compare_methods.sh\` (${run.wall_s === null ? 'cut short before the end: only the methods below finished' : `${run.wall_s} s`}): every method on the same budget, ${run.steps} optimizer steps of ` +
      `${run.batch} packed rows x ${run.seq} tokens, seed 1, ${run.threads} threads, rank ${run.r} on all linear layers ` +
      `(vera: rank 256 shared projections), cosine schedule, no warmup; learning rates ${run.lrs === 'per method' ? 'swept per method (3 values, the "lr sweep" column)' : run.lrs}, ` +
      `the run with the lowest final held-out loss kept. Base model \`${run.model}\`.\n\n`;
md += `Columns: **held-out loss** = mean cross-entropy over the answer tokens of the task's held_out.jsonl at the end; ` +
      `**@1/4** = the same at a quarter of the run (convergence speed); **accuracy** = greedy answer equal to the expected one ` +
      `(\`peft eval --accuracy\`)${run.accuracy ? '' : ' — not measured: this build\'s `peft eval` has no `--accuracy`'}; ` +
      `**forgetting** = change of the loss on held-out pretraining text (\`${run.forget_data}\`, rows of ${run.forget_seq} tokens; ` +
      `never trained on by the base nor here), + = forgot; **trainable** = trainable parameters; **step s** = median seconds per ` +
      `optimizer step; **peak RSS** = the training process's maximum resident memory; **setup s** = seconds from start to the ` +
      `first step's own time (model and data load, adapter init: SVDs, calibration; and the step-0 eval, the same for all), so the init cost is the difference to lora.\n\n`;

for (const t of tasks) {
    const base = rows.find((r) => r.method === 'base' && r.task === t);
    md += `## Task \`${t}\`\n\n`;
    if (base) md += `Base model: held-out loss ${fx(base.eval_loss, 4)}, accuracy ${pct(base.accuracy)}, pretraining-text loss ${fx(base.forget_loss, 4)}.\n\n`;
    md += `| method | best lr (sweep) | held-out loss | @1/4 | accuracy | forgetting | trainable | step s | peak RSS MiB | setup s |\n`;
    md += `| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n`;
    for (const r of rows.filter((x) => x.task === t && x.method !== 'base')) {
        if (r.failed) {
            md += `| ${r.method} | failed: ${esc(r.failed)} | | | | | | | | |\n`;
            continue;
        }
        md += `| ${r.method} | ${r.lr} (${r.lrs.join(', ')}) | ${fx(r.eval_loss, 4)} | ${fx(early(r), 4)} | ${pct(r.accuracy)} | ` +
              `${r.forget_delta >= 0 ? '+' : ''}${fx(r.forget_delta, 4)} | ${r.trainable_params.toLocaleString('en-US')} | ${fx(r.step_s, 3)} | ` +
              `${fx(r.peak_rss_mib, 0)} | ${fx(r.setup_s, 2)} |\n`;
    }
    md += `\n`;
}
const skipped = rows.filter((r) => r.skipped);
if (skipped.length) md += `Skipped (not in this build): ${skipped.map((r) => `${r.method} (${r.skipped})`).join('; ')}.\n\n`;
md += `![held-out loss per method](compare.svg)\n`;
writeFileSync(`${out}/compare.md`, md);

// SVG: per task one panel of horizontal bars (held-out loss; accuracy beside it when measured)
const methods = [...new Set(rows.filter((r) => r.eval_loss !== undefined && r.method !== 'base').map((r) => r.method))];
const bar_h = 12, label_w = 80, panel_w = 200, gap = 30, top = 34;
const panels = [];
for (const t of tasks) {
    panels.push({ task: t, key: 'eval_loss', title: `${t}: held-out loss`, fmt: (v) => v.toFixed(3) });
    if (run.accuracy) panels.push({ task: t, key: 'accuracy', title: `${t}: accuracy`, fmt: (v) => `${(100 * v).toFixed(0)}%` });
}
const W = panels.length * (label_w + panel_w + gap) + 10, H = top + (methods.length + 1) * (bar_h + 3) + 10;
let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="10">\n`;
svg += `<text x="6" y="14" font-size="12">peft.cpp methods side by side (bench/compare_methods.sh, ${run.steps} steps; base = the model before training)</text>\n`;
panels.forEach((p, i) => {
    const x0 = 6 + i * (label_w + panel_w + gap);
    const list = [['base', rows.find((r) => r.method === 'base' && r.task === p.task)], ...methods.map((m) => [m, rows.find((r) => r.method === m && r.task === p.task)])];
    const vals = list.map(([, r]) => (r && typeof r[p.key] === 'number' ? r[p.key] : null));
    const max = p.key === 'accuracy' ? 1 : Math.max(...vals.filter((v) => v !== null), 1e-9);
    svg += `<text x="${x0}" y="${top - 8}" font-weight="bold">${esc(p.title)}</text>\n`;
    list.forEach(([m], j) => {
        const y = top + j * (bar_h + 3), v = vals[j];
        svg += `<text x="${x0 + label_w - 4}" y="${y + bar_h - 2}" text-anchor="end">${esc(m)}</text>`;
        if (v !== null) {
            const w = Math.max(1, (panel_w - 40) * v / max);
            svg += `<rect x="${x0 + label_w}" y="${y}" width="${w.toFixed(1)}" height="${bar_h}" fill="${m === 'base' ? '#999' : '#4878a8'}"/>`;
            svg += `<text x="${(x0 + label_w + w + 3).toFixed(1)}" y="${y + bar_h - 2}">${p.fmt(v)}</text>`;
        }
        svg += `\n`;
    });
});
svg += `</svg>\n`;
writeFileSync(`${out}/compare.svg`, svg);
