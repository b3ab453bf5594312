#!/usr/bin/env python3
"""CDK entry point (`cdk synth` / `cdk deploy --all` from the repository root; see cdk.json).

Configuration is CDK context, validated by tenantml_cdk.config; docs/architecture.md lists the keys.
"""

from __future__ import annotations

import sys

from tenantml_cdk.application import build_app
from tenantml_cdk.config import ConfigError


def main() -> int:
    try:
        built = build_app()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    built.app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
