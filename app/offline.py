"""Keep Gradio and the Hugging Face hub off the network. Import this before ``gradio``."""
from __future__ import annotations

import os

for _key, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_key, _value)
# analytics must be off even if the user's shell says otherwise
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
