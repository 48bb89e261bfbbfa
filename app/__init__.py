"""The CASN explainability app (Gradio): browse rankings and explain them with Siamese attention.

Modules, one job each:

- :mod:`app.offline` -- environment switches that keep Gradio and the HF hub off the network
  (imported before :mod:`gradio` anywhere in the app).
- :mod:`app.core` -- every name the app takes from ``casn_core`` (public names only), in one list.
- :mod:`app.state` -- load the checkpoint and a Market-layout dataset; maps in the shared map store on disk.
- :mod:`app.demo` -- the bundled default: the demo dataset and checkpoint.
- :mod:`app.ranking` -- per-query CASN ranking as shown (junk left out, score parts); every score
  (first true rank, AP, CMC, mAP, mINP) from :func:`casn_core.metrics.evaluate_rank_per_query`.
- :mod:`app.explain` -- pair explanations (cached pairs, uploaded pairs, "why did it fail").
- :mod:`app.exports` -- PNG/JSON export of a pair, written only when the user asks.
- :mod:`app.figures` -- pictures on explicit ``Figure`` objects: thumbnails, overlays, vector plots, CMC.
- :mod:`app.markdown` -- the page's text and tables.
- :mod:`app.uploads` -- safe reading of user uploads (size limit before decoding, clear messages).
- :mod:`app.validation` -- checking client input (indices, choices, pixels); :class:`RequestError`.
- :mod:`app.lru` -- the rankings memo.
- :mod:`app.service` -- the request logic, Gradio-free (plain errors, plain data).
- :mod:`app.ui` -- the ``gr.Blocks`` layout and its API endpoints; maps errors to ``gr.Error``.
- :mod:`app.server` -- argument parsing and the locked-down launch.

Test helpers live in ``tests/app_helpers.py``; the benchmarks run ``python app.py`` as a process.
"""
