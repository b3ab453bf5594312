"""tenantml: the platform library (Lambda layer `core`).

Imports go one way: functions/* -> tenantml -> AWS SDK. Nothing in here reads the environment except
`tenantml.settings`, which parses settings once at the edge.
"""

__version__ = "0.1.0"

SHARED_TENANT = "_shared"
