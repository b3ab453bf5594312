"""Finding the local platform from any working directory: its home (`.tenantml/`, holding the dev keys
and, while `tenantml local` runs, `local.json`) and the environment it gives each function.

The home is the nearest `.tenantml/` from the working directory upwards that holds keys or a state
file, else the one in the tenantml checkout this code runs from. The CLI verbs that talk to AWS
(`models list|register`, `invoke`, `events fire`) use the running platform when no TENANTML_* variables
point them elsewhere, and say in one line how to start one when none runs.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HOME = ".tenantml"
STATE_NAME = "local.json"
KEYS_NAME = "keys"
START_HINT = "start the local platform with `make local` (or `tenantml local`) in the tenantml checkout"


def find_home(start: Path | None = None) -> Path | None:
    """The `.tenantml/` folder of the project being worked on, or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if _is_home(folder / HOME):
            return folder / HOME
    return checkout_home()


def _is_home(home: Path) -> bool:
    return (home / STATE_NAME).is_file() or (home / KEYS_NAME).is_dir()


def checkout_home() -> Path | None:
    """The `.tenantml/` of the tenantml checkout this code runs from, if it has one."""
    from tenantml.local.context import repo_root  # noqa: PLC0415

    home = repo_root() / HOME
    return home if _is_home(home) else None


def read_state(path: Path | None = None) -> dict[str, Any] | None:
    """The local platform's state file (default: the home's), or None if there is none or it is
    unreadable."""
    if path is None:
        home = find_home()
        if home is None:
            return None
        path = home / STATE_NAME
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("functions"), dict) else None


def emulator_answers(endpoint_url: str, timeout_s: float = 1.0) -> bool:
    """Is the local platform's AWS emulator up? (A state file outlives the platform.)"""
    if not endpoint_url.startswith("http://127.0.0.1:") and not endpoint_url.startswith("http://localhost:"):
        return False
    try:
        with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=timeout_s):  # noqa: S310
            return True
    except urllib.error.HTTPError:
        return True                 # it answered (an error status is still an answer)
    except (urllib.error.URLError, OSError):
        return False


def running_state(path: Path | None = None) -> dict[str, Any] | None:
    """The state of a platform that is running now, or None."""
    state = read_state(path)
    if state is None:
        return None
    return state if emulator_answers(str(state.get("moto", {}).get("endpoint_url", ""))) else None


def function_environment(state: dict[str, Any], function: str) -> dict[str, str]:
    """The running platform's process environment plus `function`'s own variables."""
    own = (state["functions"].get(function) or {}).get("env") or {}
    return {str(k): str(v) for k, v in {**(state.get("process_env") or {}), **own}.items()}


class NoPlatform(Exception):
    """Neither TENANTML_* variables nor a running local platform say where the platform is."""


@contextlib.contextmanager
def platform_target(function: str, needs: str = "TENANTML_ARTIFACT_BUCKET") -> Iterator[None]:
    """Run a CLI verb against: the TENANTML_* variables if `needs` is set (a deployed platform), else the
    running local platform (with `function`'s environment), else raise NoPlatform."""
    from tenantml.settings import EnvPatch, current_environ  # noqa: PLC0415

    if current_environ().get(needs):
        yield
        return
    state = running_state()
    if state is None:
        raise NoPlatform(f"nothing to talk to: {START_HINT}, or set {needs} and the other TENANTML_* "
                         "variables of a deployed platform")
    with EnvPatch(function_environment(state, function)):
        yield
