"""tenantml CDK app: configuration, stacks and constructs (see docs/architecture.md)."""
