"""Local mode: the whole platform on one machine, no Docker, no AWS account (moto + API Gateway emulator)."""
