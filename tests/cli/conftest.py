import sys
from pathlib import Path

# The assistant's fixtures live beside the engine tests; the CLI tests share them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

# isolated_env (autouse) is imported by test_assist_cli.py itself, so it does not reach the
# other CLI tests of this folder.
from assist_fixtures import random_model_dir, sample_repo  # noqa: E402,F401  (fixtures)
