import os
import sys

# tests import the slow reference twins as `reference.*`
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("FUSECHAT_DISABLE_PROGRESS_BARS", "1")
