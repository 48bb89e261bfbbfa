"""The app's text: Markdown tables and sentences built from rankings, explanations and the summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from app import figures
from app.pair import ExplainedPair
from app.ranking import QueryRanking
from app.scoring import DatasetSummary, QueryStats
from app.state import AppState

INTRO = """# CASN: why does this gallery image rank here?
Consistent Attentive Siamese Network (Zheng et al., CVPR 2019): pick a query, choose the ranking (w, K), click a
result (<span class="legend-dot" style="background:#22a03c"></span>true match
<span class="legend-dot" style="background:#d72626"></span>wrong identity) to see where each image looks."""


def _num(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


PENDING = "*(computing the dataset summary in the background; it appears here when ready)*"


def query_caption(index: int, stats: QueryStats | None) -> str:
    """The picker's caption of a query: its first true rank and AP (only the index while the summary is computed)."""
    if stats is None:
        return f"q{index}"
    if stats.first_true_rank is None:
        return f"q{index} · no match"
    mark = "✓" if stats.first_true_rank == 1 else f"✗{stats.first_true_rank}"
    return f"q{index} {mark} AP {stats.ap:.2f}"


def moved_text(previous: tuple | None, query_index: int, described: str, first_true_rank: int | None) -> str:
    """Where the first true match moved since the ranking shown before (same query, another ranking)."""
    if not previous or previous[0] != query_index or previous[1] == described or first_true_rank is None:
        return ""
    before = previous[2]
    if before is None or before == first_true_rank:
        return f"First true match: still rank **{first_true_rank}** (was {previous[1]})."
    way = "up" if first_true_rank < before else "down"
    return (f"First true match moved **{way}**: rank {before} → **{first_true_rank}** "
            f"({previous[1]} → {described}).")


def query_markdown(state: AppState, ranking: QueryRanking, moved: str = "") -> str:
    q = ranking.query_index
    head = (f"### Query q{q}: `{state.relative(state.query.paths[q])}`\n"
            f"identity **{int(state.query.pids[q])}**, camera **{int(state.query.camids[q])}**; "
            f"{ranking.excluded} same-camera image(s) of this identity left out (Market-1501 protocol)\n\n")
    if ranking.first_true_rank is None:
        body = "No true match of this identity from another camera is in the gallery: no AP for this query."
    else:
        verdict = ('<span style="color:#22a03c">correct at rank 1</span>' if ranking.first_true_rank == 1
                   else '<span style="color:#d72626">wrong identity at rank 1</span>')
        body = (f"| first true match | AP | matches in gallery | rank-1 |\n|---|---|---|---|\n"
                f"| **rank {ranking.first_true_rank}** | **{ranking.ap:.3f}** | {int(ranking.matches.sum())} | "
                f"{verdict} |")
    return head + body + (f"\n\n{moved}" if moved else "")


def ranking_table(state: AppState, ranking: QueryRanking, start: int, stop: int) -> str:
    """The entries ``start`` to ``stop`` (0-based) of a ranking with their distances and score parts."""
    rows = ["| rank | gallery | id | cam | match | d_f | d_a | feature part | attention part | d |",
            "|---:|---|---:|---:|:---:|---:|---:|---:|---:|---:|"]
    for pos in range(max(0, start), min(stop, len(ranking.order))):
        g = int(ranking.order[pos])
        total = ranking.score[pos] if ranking.reranked(pos) else float("nan")
        rows.append(f"| {pos + 1} | g{g} `{Path(state.gallery.paths[g]).name}` | {int(state.gallery.pids[g])} | "
                    f"{int(state.gallery.camids[g])} | {'✓' if ranking.matches[pos] else '✗'} | "
                    f"{_num(ranking.feature_distance[pos])} | {_num(ranking.attention_distance[pos])} | "
                    f"{_num(ranking.feature_part[pos])} | {_num(ranking.attention_part[pos])} | {_num(total)} |")
    return "\n".join(rows)


def summary_markdown(summary: DatasetSummary | None, label: str, others: tuple = ()) -> str:
    """The dataset numbers: the ranking ``label`` names, the feature ranking, and ``others``
    (``(label, DatasetSummary)`` pairs whose CASN row is added, e.g. the app's default ranking)."""
    if summary is None:
        return PENDING
    rows = ["| ranking | rank-1 | rank-5 | rank-10 | mAP | mINP |", "|---|---:|---:|---:|---:|---:|"]

    def row(name: str, r: dict) -> str:
        return (f"| {name} | {_pct(r['rank1'])} | {_pct(r['rank5'])} | {_pct(r['rank10'])} | {_pct(r['mAP'])} | "
                f"{_pct(r['mINP'])} |")

    rows.append(row(f"**{label}**", summary.casn))
    rows += [row(name, other.casn) for name, other in others]
    rows.append(row("feature (d_f only)", summary.feature))
    return (f"**{summary.num_query}** queries ({summary.num_valid} with a true match), **{summary.num_gallery}** "
            f"gallery images. Scored by `casn_core.metrics` exactly as `python -m casn_core eval` scores them.\n\n"
            + "\n".join(rows))


def ranking_choice(state: AppState) -> str:
    """Which ranking the app shows and why: the weight w of ``d = norm(d_f) + w norm(d_a)`` and where it comes from."""
    w = state.attention_weight
    if w != state.info.attention_weight:
        source = "set with --attention-weight"
    else:
        source = state.info.attention_weight_source
    note = " (w = 0: the feature ranking; the Siamese views still explain it)" if w == 0 else ""
    return f"ranking shown: feature distance + w x attention distance on the top {state.topk}, w = {w:g} ({source}){note}"


NO_HEAD_NOTE = ("no trained BCE head (a torchreid checkpoint read with --arch, or a model trained without L_sa): "
                "p(same) (eq. 3), the Siamese attention and d_a carry no learned signal; `casn fit-head` (torchreid) "
                "or `casn train --head-steps` trains the head on frozen features")
"""What the page says of a checkpoint whose BCE head was never trained."""


def model_line(state: AppState, summary: DatasetSummary | None, described: str = "") -> str:
    """One short line: checkpoint, data, the default ranking and its numbers (details: :func:`model_info`)."""
    head = (f"`{state.checkpoint_path.name}` ({state.backbone}) on `{_short(state.data_root.name)}` · "
            f"default ranking {described or f'w = {state.attention_weight:g}, K = {state.topk}'}")
    if not state.info.bce_head_trained:
        head += f" · ⚠ {NO_HEAD_NOTE}"
    if summary is None:
        return head + " · rank-1 / mAP: being computed"
    return head + (f" · rank-1 **{_pct(summary.casn['rank1'])}** / mAP **{_pct(summary.casn['mAP'])}** "
                   f"(feature: {_pct(summary.feature['rank1'])} / {_pct(summary.feature['mAP'])})")


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


def model_info(state: AppState) -> str:
    """The model and settings in full (the header's folded box and the Dataset tab)."""
    cache = "opened from the map store" if state.cache_hit else "extracted at this start into the map store"
    height, width = state.input_size
    rows = [
        ("checkpoint", f"`{state.checkpoint_path.name}`"), ("backbone", state.backbone),
        ("input (width x height)", f"{width} x {height}"), ("alignment threshold t", f"{state.threshold:g}"),
        ("default ranking", f"w = {state.attention_weight:g}, K = {state.topk}"),
        ("where w comes from", state.info.attention_weight_source if state.attention_weight == state.info.attention_weight
         else "set with --attention-weight"),
        ("BCE head (eq. 3)", "trained" if state.info.bce_head_trained else NO_HEAD_NOTE),
        ("data", f"`{_short(state.data_root.name, 40)}`"),
        ("features", f"{cache} (`{state.cache_file.name if state.cache_file else '-'}`, {state.map_dtype} maps "
                     f"on disk, read per request)"),
    ]
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def pair_markdown(pair: ExplainedPair, labels: tuple[str, str] = ("query", "gallery")) -> str:
    """The numbers of an explanation as a small table, with the ranking score split into its parts."""
    e = pair.explanation
    rows = [
        f"| BCE same-person probability (eq. 3) | **{e.same_probability:.3f}** |",
        f"| feature distance d_f (L2-normalised f) | {e.feature_distance:.4f} |",
        f"| attention consistency distance d_a (eq. 5) | {e.attention_distance:.4f} |",
        f"| kept rows (threshold t = {e.threshold:.2f}) | {labels[0]} {e.span1[0]}-{e.span1[1]}, "
        f"{labels[1]} {e.span2[0]}-{e.span2[1]} |",
        f"| cosine similarity s of f (d_f² = 2 − 2s; the maps below sum to it) | {e.similarity:.4f} |",
    ]
    score = pair.ranking_score
    if score is not None:
        if score.rank is None:
            rows.append(f"| ranking | {score.note} |")
        elif score.attention_weight == 0:
            rows.append(f"| ranking (rank {score.rank} of {score.of}) | by d_f alone (w = 0: the feature ranking) |")
        elif score.reranked_with_attention:
            rows.append(
                f"| ranking score d (rank {score.rank} of {score.of}) | **{score.total:.3f}** = "
                f"{score.feature_part:.3f} feature + {score.attention_part:.3f} attention |")
            rows.append(f"| | each part min-max normalised over the top {score.topk} candidates; "
                        f"attention weight w = {score.attention_weight:g} |")
        else:
            rows.append(f"| ranking (rank {score.rank} of {score.of}) | {score.note} |")
    head = ""
    if pair.query is not None and pair.gallery is not None and pair.true_match is not None:
        q, g = pair.query, pair.gallery
        verdict = "true match" if pair.true_match else "wrong identity"
        head = (f"**{labels[0]}** `{q.name}` (id {q.pid}, cam {q.camid}) vs **{labels[1]}** `{g.name}` "
                f"(id {g.pid}, cam {g.camid}): **{verdict}**\n\n")
    return head + "| quantity | value |\n|---|---|\n" + "\n".join(rows)


def why_message(query_index: int, failed: bool, message: str, described: str = "") -> str:
    colour = "#d72626" if failed else "#555"
    under = f" (ranking: {described})" if described else ""
    return f'<span style="color:{colour}">**q{query_index}**{under}: {message}</span>'


def contrastive_markdown(gap: float) -> str:
    return (f"**Why the wrong match is closer** (query regions, exact): the query's similarity map against the "
            f"rank-1 wrong match minus its map against the best true match. Red = the query's features there are "
            f"closer to the wrong identity. The map sums to the similarity gap s(q, wrong) − s(q, true) = "
            f"**{gap:.4f}** (d_f(q, true)² − d_f(q, wrong)² = {2 * gap:.4f}).")


def correspondence_markdown(found, names: tuple[str, str] = ("query", "gallery")) -> str:
    source, target = names if found.direction == "query" else names[::-1]
    return (f"Clicked the **{source}** image at pixel (x={found.x}, y={found.y}): feature cell row {found.cell[0]}, "
            f"column {found.cell[1]} of {found.source_map_size[0]}x{found.source_map_size[1]}. The **{target}** image "
            f"lights up where that location's features match (one row of C; it sums to this cell's share of the "
            f"similarity, {found.location_share:.4f} of s = {found.similarity:.4f}).\n\n"
            + figures.colour_bar_html("0", f"{float(found.values.max()):.4f}", "(0 to the largest cell of this row)"))
