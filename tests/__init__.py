from pathlib import Path

# The repository's root, wherever a test file sits below tests/.
ROOT = Path(__file__).resolve().parent.parent
