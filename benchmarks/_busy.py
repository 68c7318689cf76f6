"""One CPU-bound single-threaded process beside a measurement (the busy machine of issue 12)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def busy_process(busy: bool = True, limit_s: int = 1800) -> Iterator[None]:
    """Run the block beside a pure-Python busy loop (nothing when ``busy`` is false); the loop ends itself after
    ``limit_s`` seconds, whatever happens to this process, and is stopped when the block ends.

    Example:
        >>> with busy_process():
        ...     time_the_work()
    """
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + "
                            f"{limit_s}\nwhile time.time() < end:\n    pass\n"]) if busy else None
    try:
        yield
    finally:
        if hog is not None:
            hog.terminate()
            hog.wait()
