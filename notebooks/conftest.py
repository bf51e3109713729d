"""nbval settings for ``pytest --nbval-lax notebooks/``: the notebooks run headless in smoke
mode (their default), offline, with static figures; executed copies written under ``runs/`` by
the notebooks themselves are not collected as tests."""
import os
from pathlib import Path

from genie.assets import use_checkout_assets

ROOT = Path(__file__).resolve().parents[1]
use_checkout_assets(ROOT)
os.environ.setdefault("GENIE_OFFLINE", "1")
os.environ["GENIE_LIVE"] = "0"  # kernels inherit it: static figures, no widgets

collect_ignore_glob = ["runs/*", "*/.ipynb_checkpoints/*", ".ipynb_checkpoints/*"]
