"""The CASN explainability app (Gradio): browse rankings and explain them with Siamese attention.

Modules, one job each:

- :mod:`app.offline` -- environment switches that keep Gradio and the HF hub off the network
  (imported before :mod:`gradio` anywhere in the app).
- :mod:`app.state` -- load the checkpoint and a Market-layout dataset, extract and cache features.
- :mod:`app.demo` -- the bundled default: the demo dataset and checkpoint.
- :mod:`app.ranking` -- per-query CASN ranking, AP, first true match, dataset rank-1/mAP and CMC.
- :mod:`app.explain` -- pair explanations (cached pairs, uploaded pairs, "why did it fail").
- :mod:`app.figures` -- pictures: thumbnails with match borders, overlays, vector plots, CMC.
- :mod:`app.uploads` -- safe reading of user uploads (size limit before decoding, clear messages).
- :mod:`app.ui` -- the ``gr.Blocks`` layout and its API endpoints.
- :mod:`app.server` -- argument parsing and the locked-down launch.
- :mod:`app.testing` -- a tiny checkpoint, a tiny dataset and an in-process server for tests and benchmarks.
"""
