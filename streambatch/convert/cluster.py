"""Writing a dataset's parts as tasks on a Dask cluster (``convert(..., client=)``,
``streambatch convert --scheduler``).

Each :class:`~.parts.Part` is one task: the worker opens the source from its ``SourceSpec``,
writes the part's files into a folder of its own attempt (``.parts/NNNNN-XXXXXXXX`` in the
conversion's temporary folder) and, when every file is closed, renames them to their names in
the temporary folder.  Those names are fixed by the part, so a task that Dask runs again after a
worker died overwrites its own files and adds none; the dead attempt's folder goes with
``.parts`` once every part is in.  The client takes the parts' results in part order and joins
them as the threads do (:class:`~.parts.Summary`): the files, the manifest and its fingerprint
are the local converter's whatever the workers.  The workers must see the paths the client gives
(one machine, or a shared file system).
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .._progress import progress_bar
from .parts import Abandoned, Part, PartOptions, PartResult, Summary

__all__ = ["run_on_cluster", "run_part", "in_attempt", "Tasks", "open_client", "is_frame", "convert_frame"]

T = TypeVar("T")

STAGING = ".parts"
"""The folder, in the temporary folder, of the parts' attempts."""
_STOP = "STOP"
"""A file in ``STAGING`` that tells the parts still running to stop (the conversion failed)."""
_WAIT_S = 60.0
"""How long a failed conversion waits for its running parts to stop before it removes their folder."""


def in_attempt(folder: str, name: str, work: Callable[[Path, Callable[[], bool]], T]) -> T:
    """Run a task's ``work(attempt, abandon)`` in an attempt folder of its own (``STAGING/NAME-XXXXXXXX``
    in ``folder``, the conversion's temporary folder), then rename the files it wrote there to
    the same paths in ``folder``.  ``abandon()`` is true once the conversion stopped.  Raises what
    ``work`` raises, and :class:`Abandoned` when the conversion stopped (its staging folder holds
    ``STOP`` or is gone)."""
    staging = Path(folder) / STAGING
    stop = staging / _STOP
    if stop.exists():
        raise Abandoned
    attempt = staging / f"{name}-{uuid.uuid4().hex[:8]}"
    try:
        attempt.mkdir()  # not parents: a conversion that is gone is not made again
    except FileNotFoundError:
        raise Abandoned from None
    try:
        result = work(attempt, stop.exists)
        _move_files(attempt, Path(folder))
        return result
    finally:
        shutil.rmtree(attempt, ignore_errors=True)


def run_part(part: Part, opts: PartOptions, folder: str, target: str) -> PartResult:
    """The task writing ``part`` (:func:`in_attempt`).  Raises what :meth:`Part.run` raises."""
    return in_attempt(folder, f"{part.index:05d}",
                      lambda attempt, abandon: part.run(opts, attempt, Path(target), abandon=abandon))


def _move_files(src: Path, dst: Path) -> None:
    """Rename every file under ``src`` to the same relative path under ``dst`` (replacing it)."""
    for root, _, names in os.walk(src):
        rel = Path(root).relative_to(src)
        if names:
            (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in names:
            os.replace(Path(root) / name, dst / rel / name)


def run_on_cluster(client: Any, parts: list[Part], opts: PartOptions, folder: Path, target: Path,
                   progress: bool | None, shuffle: Any = None) -> PartResult:
    """Write every part as a task of the Dask ``client``; return them joined as one part's result.
    With ``shuffle`` (a ``cluster_shuffle.ClusterShuffle``) the rows are pre-shuffled first, in
    two passes of tasks.  ``progress`` draws a bar of the tasks done (``None``: on a terminal).

    Raises the first failing task's error (in part order, as the threads do) with its original
    type; the tasks still running are stopped and waited for first, so that none writes into
    ``folder`` once this returns.  An interrupt does the same."""
    staging = folder / STAGING
    staging.mkdir()
    summary = Summary(opts)
    tasks = len(parts) + (shuffle.tasks if shuffle is not None else 0)
    with Tasks(client, staging, progress, f"convert {Path(opts.source.path).name}", tasks) as run:
        if shuffle is None:
            run([(run_part, (p, opts, str(folder), str(target))) for p in parts], summary.add)
        else:
            shuffle.run(run, summary)
    shutil.rmtree(staging)
    return summary.result()


class Tasks:
    """Runs lists of tasks on a Dask client, one list after another, taking their results in
    order; a bar of the tasks done, drawn as they finish.  A failure or an interrupt stops the
    tasks still running (``_stop``)."""

    def __init__(self, client: Any, staging: Path, progress: bool | None, desc: str, total: int) -> None:
        self.client, self.staging = client, staging
        self.bar = progress_bar(total, desc, progress, unit=" tasks")

    def __enter__(self) -> Tasks:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]], take: Callable[[Any], None]) -> None:
        """Run ``calls`` (function, arguments) as tasks; ``take(result)`` each in their order."""
        from distributed import wait

        futures = [self.client.submit(fn, *args, pure=False) for fn, args in calls]
        pending = list(futures)  # not yet shown on the bar
        try:
            for f in futures:
                while not f.done():
                    try:
                        wait(f, timeout=0.2)
                    except TimeoutError:
                        pending = self._show(pending)
                pending = self._show(pending)
                take(f.result())
                f.release()
        except BaseException:
            _stop(self.client, futures, self.staging)
            raise

    def _show(self, pending: list[Any]) -> list[Any]:
        """Count the tasks of ``pending`` that are done on the bar; return the others."""
        left = [f for f in pending if not f.done()]
        self.bar.update(len(pending) - len(left))
        return left


def _stop(client: Any, futures: list[Any], staging: Path) -> None:
    """Tell the running parts to stop and wait (up to ``_WAIT_S``) until every task has ended."""
    from distributed import wait

    (staging / _STOP).touch()
    try:
        wait(futures, timeout=_WAIT_S)
    except BaseException:  # a timeout, or a second Ctrl-C: stop waiting
        pass
    client.cancel(futures)


def is_frame(src: Any) -> bool:
    """Whether ``src`` is a ``dask.dataframe.DataFrame``."""
    return type(src).__module__.startswith("dask") and hasattr(src, "to_parquet") and hasattr(src, "npartitions")


def convert_frame(frame: Any, dst: Any, client: Any, convert: Callable[..., T], **opts: Any) -> T:
    """``convert(folder, dst, client=client, **opts)`` of a Dask DataFrame: its partitions are
    written first, by tasks of ``client``, as the Parquet files ``part-NNNNNN.parquet`` (without
    the index) of a temporary folder beside ``dst``, removed afterwards.  The dataset is the one
    converting those rows from Parquet gives.  Raises what ``convert`` and Dask raise."""
    from .._target import temp_name

    work = temp_name(Path(dst))
    work.mkdir(parents=True)
    try:
        folder = work / "frame"
        write = frame.to_parquet(str(folder), write_index=False, write_metadata_file=False, compute=False,
                                 name_function=lambda i: f"part-{i:06d}.parquet")
        client.compute(write).result()
        return convert(folder, dst, client=client, **opts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def open_client(scheduler: str) -> Iterator[Any]:
    """A Dask client of ``scheduler``: ``local:N`` starts a cluster of N worker processes on this
    machine (closed afterwards), anything else is a scheduler's address (``tcp://HOST:PORT``).

    Raises:
        ValueError: a ``local:`` that is not a positive count, or Dask is not installed.
        OSError: the scheduler cannot be reached (Dask's own error)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("--scheduler needs Dask: pip install 'streambatch[dask]'") from None
    if not scheduler.startswith("local:"):
        with Client(scheduler) as client:
            yield client
        return
    n = scheduler.removeprefix("local:")
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"--scheduler {scheduler!r}: expected local:N with N workers (N >= 1)")
    with LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client
