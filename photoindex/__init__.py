"""photoindex: a self-hosted photo-library indexer built on Prefect."""

import time

IMPORTED = time.time()
"""When this process first imported photoindex, a few milliseconds after it started: the
command line counts a session's start-up from here, as its user waits from then."""
