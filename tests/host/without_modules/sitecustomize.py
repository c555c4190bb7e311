"""Makes this Python unable to import the modules named in ADL_WITHOUT_MODULES (comma-separated), as if they
were not installed: a test puts this folder on PYTHONPATH to start the real server without, e.g., opencv.

A None entry in sys.modules is the import system's documented "not importable" mark: `import cv2` raises
ModuleNotFoundError and importlib.util.find_spec("cv2") answers None, as for a package that is absent
(a meta-path finder cannot give that answer: the finders after it would still find the module).
"""

import os
import sys

for name in filter(None, os.environ.get("ADL_WITHOUT_MODULES", "").split(",")):
    sys.modules[name] = None
