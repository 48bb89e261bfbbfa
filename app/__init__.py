"""The CASN explainability app (Gradio): browse rankings and explain them with Siamese attention.

Modules, one job each, each importing only the ones listed before it:

- :mod:`app.offline` -- environment switches that keep Gradio and the HF hub off the network
  (imported before :mod:`gradio` anywhere in the app).
- :mod:`app.core` -- every name the app takes from ``casn_core`` (public names only), in one list.
- :mod:`app.pair` -- an explained pair as the app holds it: the library's ``PairExplanation`` with the images,
  true match and ranking-score parts (the views read attributes; only its ``to_json`` makes the API's dict).
- :mod:`app.validation`, :mod:`app.lru`, :mod:`app.uploads` (safe reading of uploads: size limit before
  decoding, images under 16 px refused, aspect warnings), :mod:`app.demo`, :mod:`app.domain` (whether the
  checkpoint learned from generated people).
- :mod:`app.settings` -- every setting of a start in one frozen :class:`~app.settings.AppSettings`.
- :mod:`app.state` -- load the checkpoint and a Market-layout dataset; maps in the shared map store on disk.
- :mod:`app.presets` -- which ranking a request asks for: feature, paper, tuned, or any (w, K).
- :mod:`app.reranking` -- attention distances kept per query and per K, so any w re-ranks without them.
- :mod:`app.scoring` -- per-query results and dataset numbers of any ranking (the metrics module's).
- :mod:`app.summary` (the default ranking's summary: cached on disk, computed in the background) and
  :mod:`app.summaries` (any ranking's, on request, within a pair-attention budget).
- :mod:`app.ranking` -- one query's ranking as shown (junk left out, score parts), default or any (w, K).
- :mod:`app.figures` (PIL pictures with colour bars), :mod:`app.plots` (plots drawn at their shown size),
  :mod:`app.markdown` (the page's text and tables), :mod:`app.strip` (a page of the ranked strip).
- :mod:`app.similarity`, :mod:`app.explain` (pair explanations), :mod:`app.verdict` (what ranked a wrong
  match first), :mod:`app.exports` (PNG/JSON on request), :mod:`app.views` (what the page shows).
- :mod:`app.service` -- the request logic, Gradio-free (plain errors, plain data); :mod:`app.search` the
  same for searching a gallery with an image.
- :mod:`app.widgets` -- the UI's shared pieces (style sheet, error mapping to ``gr.Error``, pair panels).
- :mod:`app.controls_ui`, :mod:`app.rankings_ui`, :mod:`app.why_ui`, :mod:`app.upload_ui`,
  :mod:`app.search_ui`, :mod:`app.dataset_ui` -- one module per part of the page; :mod:`app.api` the JSON
  endpoints; :mod:`app.ui` composes them.
- :mod:`app.server` -- argument parsing and the locked-down launch; :mod:`app.cli` -- the ``casn`` console
  command (``casn app`` is ``python app.py``).

Test helpers live in ``tests/app_helpers.py``; the benchmarks run ``python app.py`` as a process.
"""
