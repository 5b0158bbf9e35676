"""The `semid` command's entry point: the CLI (semid.service.cli) needs the serve extra; a lean install
(`pip install semid`, or `semid[hf]`) gets a one-line error naming it instead of a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from semid.service.cli import main as cli
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] == "semid":
            raise
        sys.stderr.write(f"error: the semid command needs the serve extra: pip install 'semid[serve]' ({err})\n")
        raise SystemExit(1) from None
    cli()
