"""How a job's process ends, for every entry point that may run Ray in its process (``vmem``,
``python -m indexer``, the job modules' ``__main__``): ``run(main)`` runs ``main(argv)`` and
exits with its status. Standard library only: the entry points import it before anything else.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import sys
from typing import Callable, NoReturn

INTERRUPTED = 128 + signal.SIGINT  # the status a shell reports for a program ended by SIGINT


def exit_code(stop: SystemExit) -> int:
    """The status Python gives ``sys.exit(code)``: None is 0, an int itself, anything else 1."""
    return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """``main(argv)``, then exit with its status (None is 0).

    Where the job ran Ray in this process, the process ends with ``os._exit`` once Python's
    own exit work is done (non-daemon threads joined, every other atexit handler run: Ray's,
    logging's, tempfile's, multiprocessing's), skipping the native libraries' teardown. Ray's
    core worker and gRPC leave native threads running after ``ray.shutdown()``
    (``gcs_client_io_service``, ``worker.io``, gRPC's timer and executor threads, seen in
    /proc/self/task at exit), and the libraries' static destructors race them: ``vmem demo``
    died of SIGSEGV after printing "done", past faulthandler's reach (twice in ~15 runs of the
    test suite's demo, once in CI); a RayJob whose driver crashed so would be reported failed
    after its version was published. The handler is registered before the job imports Ray, so
    it runs after Ray's own (``python -m <job module>`` imports the module first: the handler
    shuts Ray down itself). Output is flushed (Python's and C's stdio) and a failure to flush
    (a closed pipe) still ends the process here; Ctrl-C still ends it by SIGINT.
    """
    status = {"code": 1}  # an uncaught exception: Python prints it and exits with 1

    def finish() -> None:
        if "ray" not in sys.modules:
            return
        try:
            ray = sys.modules["ray"]
            if ray.is_initialized():  # its own atexit handler is skipped if registered before this
                ray.shutdown()
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            ctypes.CDLL(None).fflush(None)  # C stdio too (FAISS's verbose k-means prints there)
        except BaseException:  # noqa: BLE001  a closed pipe must not bring the teardown back
            pass
        finally:
            if status["code"] == INTERRUPTED:  # end as Python does: killed by SIGINT
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            os._exit(status["code"])

    atexit.register(finish)
    try:
        status["code"] = int(main(argv) or 0)
    except SystemExit as stop:  # argparse's --help and usage errors
        status["code"] = exit_code(stop)
        raise
    except KeyboardInterrupt:
        status["code"] = INTERRUPTED
        raise
    sys.exit(status["code"])
