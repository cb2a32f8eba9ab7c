import sys
from pathlib import Path

# The assistant's fixtures live beside the engine tests; the CLI tests share them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from assist_fixtures import isolated_env, random_model_dir, sample_repo  # noqa: E402,F401  (fixtures)
