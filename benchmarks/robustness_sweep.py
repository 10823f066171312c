"""A sweep of bad and unusual inputs through the ``flashu`` command line and the Python API (issue #11).

Every case runs in its own subprocess (``python -m flashu.cli …`` or ``python -c`` for the API) under a timeout and a
memory limit, and its outcome is classified:

* ``ok-error``: exit status 2, stderr is exactly one ``error: …`` line (``warning: …`` lines allowed), no traceback,
  and the line names what the case says it must (a misleading line is not ok); API: a ``flashu.FlashuError``;
* ``ok-success``: exit 0 and the result verified (image files of the right size that are not one flat colour, an
  answer, strict JSON, the warning a case promises…);
* ``traceback``: a ``Traceback`` on stderr or an exit status other than 0, 2, 130 (an API exception that is not a
  ``FlashuError`` counts here too);
* ``hang``: the timeout passed;
* ``silently-wrong``: exit 0 but the verification failed (a bad input accepted, a file missing, a promised warning
  absent, the wrong number of images…);
* ``wrong-error``: a clean exit where the case expected the other outcome (valid input refused), an error line that
  does not name the problem, more than one error line, or an error that came only after the work (slow).

Usage::

    python benchmarks/robustness_sweep.py [--quick] [--json out.json] [--jobs 2] [--only SUBSTRING] [--keep]

``--quick`` skips the cases marked slow (still more than 200). The fixtures (a tiny checkpoint, images, score files,
an understanding set and a finished evaluation) are built once in a work directory; each case gets its own folder.
Nothing touches the network (``HF_HUB_OFFLINE=1``, an empty ``HF_HOME``) or the user's calibration cache.

The sweep is data plus a runner (``benchmarks/robustness/``): ``model.py`` (a case, a result), ``checks.py`` (what a
success must show), ``fixtures.py`` (the fixtures and the mutations cases apply), ``cases.py`` (the cases, by
category: adding one is a line there) and ``runner.py`` (subprocesses, classification, the table). This file is the
entry point.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustness.cases import all_cases  # noqa: E402
from robustness.checks import all_of, answered, image, warns  # noqa: E402
from robustness.model import CATEGORIES, OUTCOMES, Case, Result, Slow  # noqa: E402
from robustness.runner import classify, main, run_case, table  # noqa: E402

__all__ = ["CATEGORIES", "OUTCOMES", "Case", "Result", "Slow", "all_cases", "all_of", "answered", "classify", "image",
           "main", "run_case", "table", "warns"]

if __name__ == "__main__":
    sys.exit(main())
