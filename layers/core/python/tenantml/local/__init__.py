"""Local mode: the whole platform on one machine, no Docker, no AWS account (moto + an API Gateway emulator)."""
