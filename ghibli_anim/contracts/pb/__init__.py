"""Generated from proto/animation/v1 by `make proto`; do not edit."""
