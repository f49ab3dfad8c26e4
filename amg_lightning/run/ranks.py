"""When a DDP rank that Lightning started dies, the others end at once with one line naming it.

Lightning's launcher runs ranks 1..N-1 of a node as child processes of the main one. Its own
observer, on seeing a child end with an error, SIGKILLs every process without a word (exit
137, `run.lock` left behind); a child whose main process died goes on alone until its next
collective fails. Here the main process polls its children and each child its parent, so a
death is seen within POLL_S wherever the survivors are (computing, reading, in a collective):
the survivor kills the remaining children, says which rank died, releases what it holds
(`on_death`) and exits with status 1. Its open shard stays `*.tar.tmp`: resume does it again.

Under torchrun or srun the launcher itself ends the other ranks when one dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies.launchers import subprocess_script

from amg_lightning.utils.signals import STOP_SIGNALS

POLL_S = 0.2
_STOPPED = {128 + signum for signum in STOP_SIGNALS}


class EndWhenARankDies(Callback):
    """Watches the other ranks of a run Lightning launched, from `watch()` to the final barrier.

    `on_death(what)` gets "rank 1 died (killed by SIGKILL)" and releases what this process
    holds; the process then exits with status 1. Once the writer's final barrier has passed
    (`on_predict_end`), ranks end in their own time and nothing is watched any more.
    """

    def __init__(self, on_death: Callable[[str], None]) -> None:
        self.on_death = on_death
        self._watching = False
        self._lightnings_observer: Any = None

    def watch(self, trainer: lightning.Trainer) -> None:
        """Before `trainer.predict`: take the place of Lightning's observer, or watch the parent."""
        launcher = trainer.strategy.launcher
        environment = getattr(launcher, "cluster_environment", None)
        if type(environment) is not LightningEnvironment or launcher.num_processes < 2:
            return  # one process, or ranks started by torchrun or srun
        self._watching = True
        first_rank = environment.node_rank() * launcher.num_processes
        if environment.creates_processes_externally:  # a child: its parent is local rank 0
            parent = os.getppid()
            self._start(lambda: None if os.getppid() == parent else f"rank {first_rank} died")
            return
        if not hasattr(subprocess_script, "_launch_process_observer"):
            return  # a Lightning without it: its launcher handles deaths its own way
        self._lightnings_observer = subprocess_script._launch_process_observer
        subprocess_script._launch_process_observer = lambda children: self._start(
            lambda: _first_death(children, first_rank + 1), children
        )

    def stop(self) -> None:
        """After `trainer.predict`, however it ended."""
        self._watching = False
        if self._lightnings_observer is not None:
            subprocess_script._launch_process_observer = self._lightnings_observer
            self._lightnings_observer = None

    def on_predict_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._watching = False  # every rank has passed the writer's barrier

    def _start(
        self, death: Callable[[], str | None], children: Sequence[subprocess.Popen] = ()
    ) -> None:
        def poll() -> None:
            while self._watching:
                what = death()
                if what is not None and self._watching:
                    self._end(what, children)
                time.sleep(POLL_S)

        threading.Thread(target=poll, name="rank-watch", daemon=True).start()

    def _end(self, what: str, children: Sequence[subprocess.Popen]) -> None:
        for child in children:  # they would wait for the dead rank in their next collective
            if child.poll() is None:
                child.kill()
        self.on_death(what)
        sys.stdout.flush()
        sys.stderr.flush()
        # The main thread may be blocked in a collective for up to 30 minutes. The DataLoader
        # workers die with this process (utils/signals.py `init_worker`).
        os._exit(1)


def _first_death(children: list[subprocess.Popen], first_rank: int) -> str | None:
    """The first child that ended with an error, as "rank R died (how)"; None while none has.

    A child that a stop signal stopped (exit status 128 + the signal) has passed the final
    barrier, as every rank has by then: it did not die.
    """
    for rank, child in enumerate(children, start=first_rank):
        code = child.poll()
        if code and code not in _STOPPED:
            return f"rank {rank} died ({_how(code)})"
    return None


def _how(code: int) -> str:
    if code > 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a signal without a name (a real-time one)
        return f"killed by signal {-code}"
