"""How tests/data/behaviour_pins.json was made, with the code before the first structural refactor checked out elsewhere:

    git worktree add /tmp/headwt 21cc3ae
    PYTHONPATH=/tmp/headwt python tests/data/make_behaviour_pins.py    # writes /tmp/pins/run/pins.json

(the old code is chosen by PYTHONPATH, not by editing sys.path here). Kept for provenance; not a test."""
import json, numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
# checkpoint + data: tests/helpers.py make_pinned_checkpoint_and_data (BN-calibrated random mobilenet_v2)
import importlib.util, shutil
spec = importlib.util.spec_from_file_location("pin_helpers", Path(__file__).resolve().parents[1] / "helpers.py")
helpers = importlib.util.module_from_spec(spec); spec.loader.exec_module(helpers)
out = Path("/tmp/pins/run"); shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
ck, data = helpers.make_pinned_checkpoint_and_data(out)
from casn_core.checkpoint import load_model
from casn_core.engine.evaluate import evaluate_model, explain_files
model, payload = load_model(ck)
from casn_core.engine.extraction import ExtractionConfig
from casn_core.rankings import RankingSpec

res = evaluate_model(model, str(data), ExtractionConfig((128, 64), progress=False),
                     [RankingSpec("casn", 1.0, 10, 0.3)])
q = sorted((data / "query").glob("*.jpg")); g = sorted((data / "bounding_box_test").glob("*.jpg"))
expl, _, _ = explain_files(model, payload, str(q[0]), str(g[0]), 0.3)
from app.state import load_state
from app.ranking import rank_query, summarise_dataset, ranking_dict
st = load_state(ck, data, out / "cache", topk=10, progress=False)
ranks = [ranking_dict(st, rank_query(st, i), limit=5) for i in range(len(st.query))]
summ = summarise_dataset(st)
fd = st.feature_distances.numpy()
s = np.sort(fd, axis=1); gaps = np.diff(s, axis=1).min()
pins = {"eval": res, "explain": {k: expl[k] for k in ("same_probability","feature_distance","attention_distance","rows1","rows2","span1","span2","aligned1","aligned2")},
        "explain_images": [q[0].name, g[0].name],
        "app_rankings": ranks, "app_summary": {"casn": summ.casn, "feature": summ.feature, "num_valid": summ.num_valid,
        "per_query": [[p.first_true_rank, p.ap] for p in summ.per_query]}}
json.dump(pins, open(out / "pins.json", "w"), indent=1, default=float)
att_gap = []
for r in ranks:
    d = sorted(e["score"] for e in r["ranking"] if e["score"] is not None)
    att_gap.append(min(b - a for a, b in zip(d, d[1:])))
print("min gap feature dist", gaps, "min gap casn score top5", min(att_gap), res)
