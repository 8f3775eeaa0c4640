"""Writes the pipeline notebooks 01–06 (00 is edited directly in JupyterLab).

The notebooks are the source a reader opens; this script is how their thin structure was laid down
and can be re-run after editing it (outputs are never stored: `jupyter nbconvert --clear-output`).
"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent.parent / "notebooks"


def nb(cells):
    book = nbf.v4.new_notebook()
    out = []
    for kind, src, *tags in cells:
        c = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = list(tags)
        out.append(c)
    book.cells = out
    book.metadata["kernelspec"] = {"name": "clsr", "display_name": "Python (clsr)", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    return book


SETUP = "from clsr import pipeline as pl\nctx = pl.context()\ndataset = pl.pick_dataset(ctx, dataset)\nprint('dataset:', dataset, '| tiny mode' if ctx.tiny else '')"

NOTEBOOKS = {
    "01_data.ipynb": [
        ("md", "# 1 · Data: from a raw source to one interactions table\n\n"
               "Every source (MovieLens-100K, the synthetic generator, raw Taobao `UserBehavior.csv`, the authors' "
               "released Taobao files, Kuaishou, any CSV) is turned into one table with a row per event: "
               "`user, item, category, ts` (+ extra columns such as the synthetic ground truth). "
               "Source filters follow the released code (`shared/reference/official-clsr.md` §1.2).\n\n"
               "Stage `data@<dataset>` in `dvc.yaml`; output `data/interim/<dataset>/`."),
        ("code", "dataset = \"ml100k\"  # any key of params.yaml `datasets`", "parameters"),
        ("code", SETUP),
        ("code", "df = pl.interactions_stage(ctx, dataset)\ndf.head()"),
        ("md", "## Size and shape"),
        ("code", "import pandas as pd\n"
                 "if len(df):\n"
                 "    summary = pd.Series({\n"
                 "        'events': len(df), 'users': df.user.nunique(), 'items': df.item.nunique(),\n"
                 "        'categories': df.category.nunique(),\n"
                 "        'events per user (median)': df.groupby('user').size().median(),\n"
                 "        'first event (unix)': df.ts.min(), 'last event (unix)': df.ts.max(),\n"
                 "    })\n"
                 "    display(summary.to_frame(dataset))\n"
                 "else:\n"
                 "    print('released files: instances and candidates are read as they are in the protocol stage')"),
        ("md", "## Distributions\n\nLong-tailed users and items, category shares, activity over time."),
        ("code", "from clsr import plots\n"
                 "fig_dir = ctx.reports_dir / 'figures' / 'data' / dataset\n"
                 "fig_dir.mkdir(parents=True, exist_ok=True)\n"
                 "if len(df):\n"
                 "    plots.data_overview(df, f'{dataset}: interactions', fig_dir / 'overview.png')\n"
                 "else:\n"
                 "    (fig_dir / 'README.md').write_text('released files: see the protocol stage figures\\n')"),
        ("md", "## Ground truth (synthetic data only)\n\nThe generator records why each event happened: "
               "`driver` 0 = drawn from the user's long-term category profile, 1 = from the current short-term topic."),
        ("code", "if 'driver' in df.columns:\n"
                 "    display(df.groupby('driver').size().rename('events').to_frame())\n"
                 "    print('share of short-term-driven events:', round(float(df.driver.mean()), 3))"),
    ],
    "02_protocol.ipynb": [
        ("md", "# 2 · Protocol: split, history expansion, vocabularies, fixed candidates\n\n"
               "* **split** — `per_user` (default for ml100k/synthetic: each user's last event is the test target, the one "
               "before the validation target) or the released global time cut `time_span` (Taobao: last day test, day "
               "before valid), or `time_fraction`.\n"
               "* **instances** — every event after a user's first; its history is *all* earlier events of the user, "
               "across split boundaries (as released).\n"
               "* **vocabularies** — from train only; index 0 = padding and every unseen id.\n"
               "* **candidates** — 1 positive + N distinct negatives (valid 4, test 99), popularity-proportional, "
               "sampled once with a seed and stored, so every model is scored on the very same rows.\n\n"
               "Stage `protocol@<dataset>`; output `data/prepared/<dataset>/` and `reports/data/<dataset>/stats.json`."),
        ("code", "dataset = \"ml100k\"", "parameters"),
        ("code", SETUP),
        ("code", "if ctx.tiny and not (ctx.interim_dir / dataset / 'source.json').exists():\n"
                 "    pl.interactions_stage(ctx, dataset)\n"
                 "data = pl.protocol_stage(ctx, dataset)\n"
                 "stats = pl.read_json(ctx.reports_dir / 'data' / dataset / 'stats.json')\n"
                 "import pandas as pd\n"
                 "pd.DataFrame({s: {k: v for k, v in d.items() if not isinstance(v, (dict, list))} for s, d in stats['splits'].items()})"),
        ("md", "Users or items unseen in training all share embedding row 0. With a global time cut on MovieLens most "
               "test users would be unseen — that is why the per-user split is the default here (README)."),
        ("md", "## History lengths\n\nHistories are truncated to the last L events *after* the time features are computed."),
        ("code", "from clsr import plots\n"
                 "fig_dir = ctx.reports_dir / 'figures' / 'protocol' / dataset\n"
                 "fig_dir.mkdir(parents=True, exist_ok=True)\n"
                 "plots.history_lengths(data, fig_dir / 'history_lengths.png');"),
        ("md", "## One user through the protocol\n\nEvery event after the first is a target; the test target's "
               "history window holds the last L events; its 1 + 99 candidates are fixed."),
        ("code", "import numpy as np\n"
                 "lengths = np.diff(data.user_offsets)\n"
                 "user_row = int(np.argsort(lengths)[len(lengths) // 2])  # a typical user\n"
                 "plots.user_timeline(data, user_row, fig_dir / 'user_timeline.png');"),
        ("md", "## One training batch\n\nIn-batch negatives: each instance's 4 negatives are targets of other instances "
               "of the same batch, redrawn every step. Time features: $\\ln\\max(\\Delta t / r, 0.5)$."),
        ("code", "from clsr.data import batches as B\n"
                 "rng = np.random.default_rng(0)\n"
                 "batch = next(B.train_batches(data, 8, 4, int(data.meta['max_len']), float(data.meta['time_unit']), rng))\n"
                 "print('history items', tuple(batch.hist_item.shape), '| candidates', tuple(batch.cand_item.shape))\n"
                 "print('lengths', batch.length.tolist())\n"
                 "print('time_to_now (first row, first 8):', batch.time_to_now[0, :8].numpy().round(3))\n"
                 "print('candidates (positive first):')\n"
                 "print(batch.cand_item[:4].numpy())"),
    ],
    "03_train.ipynb": [
        ("md", "# 3 · Train and evaluate one model\n\n"
               "The released schedule: Adam (lr 1e-3), 500 instances × (1 + 4 in-batch candidates) per step, a softmax over "
               "each instance's 5 logits, early stopping on validation GAUC, then one test evaluation (1 + 99 fixed "
               "candidates) of the best checkpoint. Every train / ablation stage of `dvc.yaml` is this notebook with "
               "other parameters; `overrides` takes `key=value` pairs such as `model.contrastive=bpr,train.epochs=3`."),
        ("code", "dataset = \"ml100k\"\nmodel = \"clsr\"\nseed = 0\ngroup = \"main\"\nvariant = \"clsr_seed0\"\noverrides = \"\"", "parameters"),
        ("code", SETUP),
        ("code", "res = pl.train_stage(ctx, dataset, model, seed, group, variant, overrides)"),
        ("md", "## Training curves"),
        ("code", "import matplotlib.pyplot as plt\n"
                 "h = res.history\n"
                 "fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))\n"
                 "ax[0].plot([r['epoch'] for r in h], [r['loss_total'] for r in h], marker='o', label='total')\n"
                 "ax[0].plot([r['epoch'] for r in h], [r['loss_rec'] for r in h], marker='.', label='recommendation')\n"
                 "ax[0].set(title='training loss', xlabel='epoch'); ax[0].legend()\n"
                 "ax[1].plot([r['epoch'] for r in h], [r['valid_gauc'] for r in h], marker='o')\n"
                 "ax[1].axvline(res.metrics['best_epoch'], color='k', ls='--', lw=1)\n"
                 "ax[1].set(title='validation GAUC (dashed: epoch kept)', xlabel='epoch')\n"
                 "plt.tight_layout(); plt.show()"),
        ("md", "## Test metrics (best checkpoint, 1 + 99 candidates)"),
        ("code", "import pandas as pd\n"
                 "m = res.metrics\n"
                 "pd.DataFrame({'test': m['test'], 'valid (best epoch)': m['valid']}).round(4)"),
        ("code", "print(f\"best epoch {m['best_epoch']} of {m['epochs_run']}, {m['seconds_per_epoch']:.1f} s/epoch, \"\n"
                 "      f\"{m['train_instances_per_s']:.0f} train instances/s, {m['parameters']} parameters, device {m['device']}\")"),
    ],
    "04_ablations.ipynb": [
        ("md", "# 4 · Ablations of CLSR\n\n"
               "Each axis varies one choice of the model on `pipeline.ablation_dataset` (seed 0), everything else at its "
               "default: the contrastive loss (triplet, BPR, none) × the proxy's recent k; the length threshold $l_t$ "
               "above which the contrastive loss applies; its weight β; attention fusion vs a fixed α; the sequence "
               "model of the short-term encoder; the recommendation loss (softmax over 1+4 vs per-row BCE). "
               "Tables in `reports/tables/ablations/`, figures in `reports/figures/ablations/`. Single-seed differences "
               "smaller than the seed spread of the main table are noise."),
        ("code", "", "parameters"),
        ("code", "from IPython.display import Markdown, display\nfrom clsr import pipeline as pl, report\nctx = pl.context()"),
        ("code", "abl = ctx.params['ablations']\n"
                 "tables = ctx.reports_dir / 'tables' / 'ablations'; tables.mkdir(parents=True, exist_ok=True)\n"
                 "figs = ctx.reports_dir / 'figures' / 'ablations'; figs.mkdir(parents=True, exist_ok=True)\n"
                 "root = ctx.reports_dir / 'metrics'\n"
                 "if ctx.tiny and not (root / 'ablation').exists():  # tests: produce two tiny ablation runs\n"
                 "    d = pl.pick_dataset(ctx, '')\n"
                 "    for c in abl['contrastive']:\n"
                 "        pl.train_stage(ctx, d, 'clsr', 0, 'contrastive', f'{c}_k3', f'model.contrastive={c}')\n"
                 "axes = {\n"
                 "    'contrastive': ('Contrastive loss × recent k', [f'{c}_k{k}' for c in abl['contrastive'] for k in abl['k']]),\n"
                 "    'threshold': ('Length threshold l_t', [f'lt{v}' for v in abl['length_threshold']]),\n"
                 "    'weight': ('Contrastive weight β', [f'beta{v}' for v in abl['contrastive_weight']]),\n"
                 "    'fusion': ('Fusion', list(abl['fusion'])),\n"
                 "    'sequence': ('Short-term sequence model', list(abl['sequential_model'])),\n"
                 "    'recloss': ('Recommendation loss', list(abl['rec_loss'])),\n"
                 "}\n"
                 "frames = {}\n"
                 "for axis, (title, order) in axes.items():\n"
                 "    df = report.collect(root, f'ablation/{axis}')\n"
                 "    if df.empty:\n"
                 "        print('no runs for', axis); continue\n"
                 "    frames[axis] = df\n"
                 "    md = report.ablation_table(df, title, order)\n"
                 "    (tables / f'ablation_{axis}.md').write_text(md)\n"
                 "    display(Markdown(md))"),
        ("md", "## Metric vs k, for each contrastive form"),
        ("code", "if 'contrastive' in frames:\n"
                 "    df = frames['contrastive'].copy()\n"
                 "    df[['form', 'k']] = df['variant'].str.extract(r'(\\w+?)_k(\\d+)')\n"
                 "    df['k'] = df['k'].astype(int)\n"
                 "    ks = sorted(df['k'].unique())\n"
                 "    for metric in ('gauc', 'ndcg@2'):\n"
                 "        series = {f: [df[(df.form == f) & (df.k == k)][f'test_{metric}'].mean() for k in ks] for f in df.form.unique()}\n"
                 "        report.line_plot(ks, series, 'recent k of the short-term proxy', f'test {metric}', f'{metric} vs k', figs / f'contrastive_k_{metric.replace(\"@\", \"\")}.png')"),
        ("md", "## Threshold and β curves"),
        ("code", "for axis, prefix, label, logx in (('threshold', 'lt', 'length threshold l_t', False), ('weight', 'beta', 'contrastive weight β', True)):\n"
                 "    if axis in frames:\n"
                 "        df = frames[axis].copy(); df['x'] = df['variant'].str[len(prefix):].astype(float); df = df.sort_values('x')\n"
                 "        report.line_plot(df['x'].tolist(), {m: df[f'test_{m}'].tolist() for m in ('gauc', 'auc')}, label, 'test metric', f'{label}', figs / f'{axis}.png', logx=logx)"),
        ("code", "from IPython.display import Image\nfor p in sorted(figs.glob('*.png')):\n    display(Image(filename=str(p)))"),
    ],
    "05_disentanglement.ipynb": [
        ("md", "# 5 · Disentanglement: are long- and short-term interests really separated?\n\n"
               "The paper's second claim: CLSR separates long- and short-term interests better than models without "
               "self-supervision, shown by counterfactual evaluation. Here for CLSR, CLSR without the contrastive loss "
               "(`clsr_nocon`, trained by this stage) and SLi-Rec (seed 0 of the main runs), each read out three ways: "
               "as trained (learned α), α = 1 (long-term interest only) and α = 0 (short-term only).\n\n"
               "* **Counterfactual sets** (every dataset of `pipeline.counterfactual_datasets`): *recent-only* histories "
               "(last `disentanglement.recent_k` events, time features recomputed, official-clsr.md §5.3) and "
               "*shuffled* histories (fixed seed, timestamps in place).\n"
               "* **Ground truth** (`pipeline.disentanglement_dataset`, synthetic): the generator knows whether each "
               "test target came from the user's long-term profile or the current short-term topic, so we measure "
               "whether α follows the driver, whether each readout is better on its own driver, and whether "
               "u^l / u^s match the true profile / topic.\n\n"
               "Stage `disentanglement`; writes `reports/tables/disentanglement.md`, "
               "`reports/metrics/disentanglement.json` and `reports/figures/disentanglement/`. The definitions and "
               "chance levels of every measure are in `clsr/disentangle.py`. Nothing is tuned toward the claim: "
               "the verdict lines are computed from the numbers."),
        ("code", "", "parameters"),
        ("code", "from IPython.display import Image, Markdown, display\n"
                 "from clsr import disentangle as D, pipeline as pl\n"
                 "ctx = pl.context()\n"
                 "print('settings:', ctx.params['disentanglement'], '| tiny mode' if ctx.tiny else '')"),
        ("md", "## Run the study\n\nCLSR and SLi-Rec come from `runs/main/<dataset>/<model>_seed0`; `clsr_nocon` is "
               "trained into `runs/disentanglement/<dataset>/` with the same train params (resumable). In tiny mode "
               "(tests) missing runs are trained on the tiny dataset for one epoch."),
        ("code", "results = D.run_stage(ctx)"),
        ("md", "## Results"),
        ("code", "Markdown(ctx.table('disentanglement.md').read_text())"),
        ("md", "## Figures\n\n* `alpha_by_driver_<ds>.png`: the positives' α split by the true driver (one panel per model);\n"
               "* `interest_pca_<ds>.png`: a joint 2-D PCA of u^l (circles) and u^s (crosses) for the last few "
               "targets of five users (colour = user);\n"
               "* `interest_match_<ds>.png`: profile ρ and topic MRR of the α = 1 and α = 0 readouts against chance "
               "and popularity;\n"
               "* `counterfactual_gauc.png`: GAUC on the original, recent-only and shuffled test sets."),
        ("code", "figs = ctx.reports_dir / 'figures' / 'disentanglement'\n"
                 "for p in sorted(figs.glob('*.png')):\n"
                 "    print(p.name)\n"
                 "    display(Image(filename=str(p)))"),
        ("md", "## Can the measures fail?\n\nOn the same test targets: a constant α (an entangled model) gives α-AUC "
               "0.5, an α that knows the driver gives 1, and a category scorer that knows the profile or the topic "
               "gives ρ = 1 / topic MRR = 1 (`tests/test_disentangle.py` checks the same with whole fake models)."),
        ("code", "import numpy as np, pandas as pd\n"
                 "ds = ctx.params['pipeline']['disentanglement_dataset']\n"
                 "data = pl.ensure_prepared(ctx, ds)\n"
                 "truth = D.load_truth(data, pd.read_parquet(ctx.prepared_dir / ds / 'user_profiles.parquet'))\n"
                 "checks = {\n"
                 "    'α-AUC, constant α': D.alpha_separation(np.full(len(truth.driver), 0.5), truth.driver, reps=0)['alpha_auc'],\n"
                 "    'α-AUC, α = 1 − driver': D.alpha_separation(1.0 - truth.driver, truth.driver, reps=0)['alpha_auc'],\n"
                 "    'profile ρ, scores = θ': float(np.nanmean(D.spearman_rows(truth.theta, truth.theta))),\n"
                 "    'topic MRR, scores = one-hot topic': float(np.nanmean(D.target_rr(np.eye(len(truth.cats))[np.maximum(truth.topic, 0)], truth.topic))),\n"
                 "}\n"
                 "pd.Series(checks).round(4).to_frame('value')"),
    ],
    "06_report.ipynb": [
        ("md", "# 6 · Report: the main comparison\n\n"
               "Every model trained and scored on the same instances and the same fixed 1 + 99 test candidates, "
               "three seeds each. Built from `reports/metrics/main/**.json` only; writes `reports/tables/main.md`, "
               "`reports/results.json` and `reports/figures/report/`. The paper's claim — CLSR beats every "
               "long-term, short-term and long+short baseline — is a hypothesis this table tests, not a target."),
        ("code", "", "parameters"),
        ("code", "from clsr import pipeline as pl, report\nimport json\nctx = pl.context()\n"
                 "pipe = ctx.params['pipeline']\n"
                 "if ctx.tiny and not (ctx.reports_dir / 'metrics' / 'main').exists():  # tests: tiny runs\n"
                 "    for m in pipe['models']:\n"
                 "        pl.train_stage(ctx, pipe['datasets'][0], m, 0, 'main', f'{m}_seed0')"),
        ("code", "runs = report.collect(ctx.reports_dir / 'metrics', 'main')\n"
                 "datasets = [d for d in pipe['datasets'] if d in set(runs['dataset'])]\n"
                 "md, summ = report.main_table(runs, datasets, pipe['models'])\n"
                 "ctx.table('main.md').write_text(md)\n"
                 "from clsr.data.store import atomic_write_json\n"
                 "atomic_write_json(ctx.reports_dir / 'results.json', report.results_json(summ))\n"
                 "if not ctx.tiny:  # the README shows the same table, between its results markers\n"
                 "    t = ctx.params['train']\n"
                 "    note = (f\"Generated by `make repro` (params.yaml: up to {t['epochs']} epochs, patience {t['patience']}, \"\n"
                 "            f\"seeds {pipe['seeds']}; test = 1 + 99 fixed candidates; mean ± std over seeds, best in bold).\\n\\n\")\n"
                 "    report.update_readme(ctx.root / 'README.md', md, note)\n"
                 "from IPython.display import Markdown\nMarkdown(md)"),
        ("md", "## Does CLSR win?\n\nFor each dataset and metric: the best model, and CLSR's margin over the best baseline "
               "(negative = CLSR loses), against the seed standard deviation."),
        ("code", "verdict = report.verdict(summ, datasets)\nverdict"),
        ("code", "figs = ctx.reports_dir / 'figures' / 'report'; figs.mkdir(parents=True, exist_ok=True)\n"
                 "present = [m for m in pipe['models'] if m in set(runs['model'])]\n"
                 "for metric in ('gauc', 'ndcg@2'):\n"
                 "    report.bar_chart(summ, datasets, present, metric, figs / f'main_{metric.replace(\"@\", \"\")}.png')\n"
                 "for ds in datasets:\n"
                 "    sub = runs[(runs.dataset == ds) & (runs.seed == runs.seed.min())]\n"
                 "    hist = {r.model: pl.read_json(r.file)['history'] for r in sub.itertuples()}\n"
                 "    report.training_curves(hist, figs / f'training_curves_{ds}.png')"),
        ("md", "## Fusion weight α on the test set\n\nα close to 1 means the long-term interest dominates the prediction."),
        ("code", "alpha = report.alpha_distributions(ctx, datasets, figs / 'alpha.png')\nalpha"),
        ("code", "from IPython.display import Image\nfor p in sorted(figs.glob('*.png')):\n    display(Image(filename=str(p)))"),
    ],
}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbf.write(nb(cells), HERE / name)
        print("wrote", HERE / name)
